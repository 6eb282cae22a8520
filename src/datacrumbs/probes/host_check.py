"""Which probes can attach on THIS host, and why not for the others.

Checks, by kind:

- syscall: the name must be in the x86_64 syscall table below (the tracer
  filters ``raw_syscalls`` by number) and, when tracefs is readable, the
  ``syscalls/sys_enter_<name>`` tracepoint must exist (a few syscalls have a
  ``new`` prefix there, e.g. ``stat`` -> ``sys_enter_newstat``).
- uprobe: the library soname resolves through ``ldconfig -p`` (or a
  ``--library PATH`` override) to an x86-64 ELF whose dynamic symbol table
  defines the symbol as a function; the probe then records the absolute path.
- tracepoint: ``events/<system>/<name>`` exists (and a ``field:NAME`` bytes
  rule names a field of its format).
- kprobe: the kernel has kprobes (``kprobe_events`` in tracefs, else
  ``CONFIG_KPROBES`` in /proc/config.gz) and the function is traceable
  (``available_filter_functions``, else a text symbol in /proc/kallsyms).
- usdt: the library has a ``.note.stapsdt`` note for ``provider:name``.

tracefs is mounted at /sys/kernel/tracing when missing and we are root.
Unprivileged users cannot read tracefs: their tracepoints stay unchecked
(``HostInfo.tracefs`` is None), and the daemon reports any that fail.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import gzip
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError

from .schema import MAX_ALIASES

TRACEFS = Path("/sys/kernel/tracing")
NO_KPROBES = "kprobes not available: this kernel was built without kprobes (CONFIG_KPROBES not set)"

# x86_64 syscall numbers, from asm/unistd_64.h (Linux 6.1) plus 451..469 (to 6.17),
# so the table works on hosts without kernel headers.
_LOW = """\
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield
mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm
setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown bind
listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork execve exit
wait4 kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync
fdatasync truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink
symlink readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage
sysinfo times ptrace getuid syslog getgid setuid setgid geteuid getegid setpgid getppid getpgrp
setsid setreuid setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid
setfsuid setfsgid getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo
rt_sigsuspend sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority
setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler
sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock mlockall
munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex setrlimit chroot
sync acct settimeofday mount umount2 swapon swapoff reboot sethostname setdomainname iopl
ioperm create_module init_module delete_module get_kernel_syms query_module quotactl nfsservctl
getpmsg putpmsg afs_syscall tuxcall security gettid readahead setxattr lsetxattr fsetxattr
getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr
fremovexattr tkill time futex sched_setaffinity sched_getaffinity set_thread_area io_setup
io_destroy io_getevents io_submit io_cancel get_thread_area lookup_dcookie epoll_create
epoll_ctl_old epoll_wait_old remap_file_pages getdents64 set_tid_address restart_syscall
semtimedop fadvise64 timer_create timer_settime timer_gettime timer_getoverrun timer_delete
clock_settime clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill
utimes vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive
mq_notify mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set ioprio_get
inotify_init inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat
futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6
ppoll unshare set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages
utimensat epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime
accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark prlimit64
name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv
process_vm_writev kcmp finit_module sched_setattr sched_getattr renameat2 seccomp getrandom
memfd_create kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2
pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq
"""  # numbers 0..334
_HIGH = """\
pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree move_mount fsopen
fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd faccessat2
process_madvise epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset
landlock_add_rule landlock_restrict_self memfd_secret process_mrelease futex_waitv
set_mempolicy_home_node cachestat fchmodat2 map_shadow_stack futex_wake futex_wait
futex_requeue statmount listmount lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal
setxattrat getxattrat listxattrat removexattrat open_tree_attr file_getattr file_setattr
"""  # numbers 424..469
SYSCALLS_X86_64: dict[str, int] = {
    **{name: nr for nr, name in enumerate(_LOW.split())},
    **{name: nr for nr, name in enumerate(_HIGH.split(), start=424)},
}
# Syscalls whose tracepoint has another name than the syscall.
_TRACEPOINT_ALIASES = {"stat": "newstat", "lstat": "newlstat", "fstat": "newfstat",
                       "uname": "newuname", "sysinfo": "sysinfo",
                       "sendfile": "sendfile64"}    # SYSCALL_DEFINE4(sendfile64, ...) is nr 40


def syscall_number(name: str) -> int:
    """The x86_64 number of a syscall (KeyError naming it if there is none)."""
    try:
        return SYSCALLS_X86_64[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an x86_64 system call") from None


def syscall_tracepoint(name: str) -> str:
    return f"syscalls:sys_enter_{_TRACEPOINT_ALIASES.get(name, name)}"


@dataclass(frozen=True)
class Dropped:
    probe: dict
    reason: str


@dataclass(frozen=True)
class HostInfo:
    tracefs: Path | None      # readable tracefs, or None (checks done without it)
    kprobes: bool
    kprobes_reason: str | None


def ensure_tracefs(path: Path = TRACEFS) -> Path | None:
    """A readable tracefs, mounting it (idempotently) when we may; None otherwise."""
    try:
        if (path / "events").is_dir():
            return path if os.access(path / "events", os.R_OK | os.X_OK) else None
    except PermissionError:  # tracefs is root-only: an ordinary user cannot even look
        return None
    if os.geteuid() == 0 and path.is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(path)], capture_output=True,
                       timeout=10, check=False)
        if (path / "events").is_dir():
            return path
    return None


def _kernel_config_says(option: str) -> bool | None:
    for candidate in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rt") as f:
                for line in f:
                    if line.startswith(f"{option}="):
                        return line.strip().endswith(("=y", "=m"))
                    if line.startswith(f"# {option} is not set"):
                        return False
            return False
        except OSError:
            continue
    return None


def host_info(tracefs: Path | None = TRACEFS) -> HostInfo:
    readable = ensure_tracefs(tracefs) if tracefs else None
    if readable and (readable / "kprobe_events").exists():
        return HostInfo(readable, True, None)
    config = _kernel_config_says("CONFIG_KPROBES")
    if config is False or (config is None and readable):
        return HostInfo(readable, False, NO_KPROBES)
    return HostInfo(readable, True, None)


# ---------------------------------------------------------------- libraries, ELF


@functools.lru_cache(maxsize=1)
def ldconfig_cache() -> dict[str, str]:
    """soname -> path for this machine's architecture, from ``ldconfig -p`` (argv, no shell)."""
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if not exe:
        return {}
    out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    arch = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(platform.machine(), "")
    found: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        name, sep, path = line.strip().partition(" => ")
        if not sep or "(" not in name:
            continue
        soname, _, flags = name.partition(" (")
        if arch and arch not in flags:
            continue
        found.setdefault(soname, path)
    return found


def canonical_library_path(path: str | os.PathLike) -> str:
    """Resolve the directories but keep the file name: the soname link survives upgrades."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


@dataclass(frozen=True)
class ElfInfo:
    soname: str | None
    functions: frozenset[str]
    usdt: frozenset[str]      # "provider:name"
    machine: str
    # function name -> address: aliases (fopen/fopen64, fwrite/_IO_fwrite) share one,
    # so a policy can judge the code a probe reaches, not the name it was asked by
    addresses: dict = field(default_factory=dict, compare=False, hash=False)
    # names defined at more than one address (symbol versions: realpath@GLIBC_2.2.5 and
    # realpath@@GLIBC_2.3): ``addresses`` holds one of them, so never merge by it
    ambiguous: frozenset = field(default=frozenset(), compare=False, hash=False)


@functools.lru_cache(maxsize=64)
def _elf_info(path: str, inode: int, mtime_ns: int) -> ElfInfo:
    with open(path, "rb") as f:
        return _read_elf(f)


_FD_CACHE: dict[tuple, ElfInfo] = {}


def elf_info_fd(fd: int) -> ElfInfo:
    """ELF facts of an open regular file (cached by device, inode, mtime and size)."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    info = _FD_CACHE.get(key)
    if info is None:
        with os.fdopen(os.dup(fd), "rb") as f:
            info = _read_elf(f)
        if len(_FD_CACHE) >= 256:
            _FD_CACHE.clear()
        _FD_CACHE[key] = info
    return info


def _read_elf(f) -> ElfInfo:
    # imported here: the tracer daemon imports this module and never reads ELF this way
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection, SymbolTableSection

    elf = ELFFile(f)
    functions, usdt, soname, addresses, ambiguous = set(), set(), None, {}, set()
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection) and section.name == ".dynsym":
            for sym in section.iter_symbols():
                if sym["st_shndx"] != "SHN_UNDEF" and \
                        sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC"):
                    functions.add(sym.name)
                    if addresses.get(sym.name, sym["st_value"]) != sym["st_value"]:
                        ambiguous.add(sym.name)
                    addresses[sym.name] = sym["st_value"]
        elif isinstance(section, NoteSection) and section.name == ".note.stapsdt":
            # pyelftools does not decode stapsdt notes: three addresses
            # (pc, base, semaphore), then "provider\0name\0arguments\0".
            address_size = elf.elfclass // 8
            for note in section.iter_notes():
                if note["n_name"] != "stapsdt":
                    continue
                strings = bytes(note["n_descdata"][3 * address_size:]).split(b"\0")
                if len(strings) >= 2:
                    usdt.add(f"{strings[0].decode(errors='replace')}:"
                             f"{strings[1].decode(errors='replace')}")
    dynamic = elf.get_section_by_name(".dynamic")
    if dynamic is not None:
        for tag in dynamic.iter_tags():
            if tag.entry.d_tag == "DT_SONAME":
                soname = tag.soname
    return ElfInfo(soname, frozenset(functions), frozenset(usdt), elf["e_machine"],
                   addresses, frozenset(ambiguous))


def elf_info(path: str) -> ElfInfo:
    st = os.stat(path)
    return _elf_info(path, st.st_ino, st.st_mtime_ns)


def in_family(family: str | None, path: str, soname: str | None = None) -> bool:
    """Whether a library file belongs to a family: its file name or soname matches."""
    if not family:
        return False
    return fnmatch.fnmatchcase(os.path.basename(path), family) or \
        bool(soname and fnmatch.fnmatchcase(soname, family))


class LibraryResolver:
    """soname -> absolute path: user overrides first (by name, then by the probe's
    family: h5py's libhdf5-<hash>.so stands for libhdf5_serial.so.103), then the ld.so
    cache."""

    def __init__(self, overrides=()):
        self.overrides: dict[str, str] = {}
        self.given: list[tuple[str, str | None]] = []     # (path, soname), in order
        for given in overrides:
            path = canonical_library_path(given)
            if not os.path.isfile(path):
                raise FileNotFoundError(2, "library given with --library does not exist", given)
            self.overrides[os.path.basename(path)] = path
            try:
                soname = elf_info(path).soname
            except (ELFError, OSError, ValueError):
                soname = None
            if soname:
                self.overrides[soname] = path
            self.given.append((path, soname))

    def resolve(self, library: str, family: str | None = None) -> str | None:
        name = os.path.basename(library) if library.startswith("/") else library
        if name in self.overrides:
            return self.overrides[name]
        for path, soname in self.given:
            if in_family(family, path, soname):
                return path
        if library.startswith("/"):
            return canonical_library_path(library) if os.path.isfile(library) else None
        path = ldconfig_cache().get(library)
        return canonical_library_path(path) if path else None


# ---------------------------------------------------------------- tracefs


@functools.lru_cache(maxsize=4)
def _traceable_functions(tracefs: str) -> frozenset[str]:
    try:
        with open(os.path.join(tracefs, "available_filter_functions")) as f:
            return frozenset(line.split()[0] for line in f if line.strip())
    except OSError:
        pass
    try:
        with open("/proc/kallsyms") as f:
            return frozenset(parts[2] for parts in (line.split() for line in f)
                             if len(parts) >= 3 and parts[1] in "tT")
    except OSError:
        return frozenset()


def _tracepoint_fields(tracefs: Path, system: str, name: str) -> set[str] | None:
    try:
        text = (tracefs / "events" / system / name / "format").read_text()
    except OSError:
        return None
    fields = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";", 1)[0]
            fields.add(decl.split("[", 1)[0].split()[-1])
    return fields


# ---------------------------------------------------------------- the checks


def check_probe(probe: dict, host: HostInfo, libraries: LibraryResolver) -> tuple[dict | None, str | None]:
    """(probe as it will be signed, None) or (None, reason it cannot attach here)."""
    kind, target = probe["kind"], probe["target"]
    if kind == "syscall":
        if platform.machine() != "x86_64":
            return None, f"syscall numbers are known only for x86_64, not {platform.machine()}"
        if target not in SYSCALLS_X86_64:
            return None, f"{target} is not an x86_64 system call"
        if host.tracefs:
            system, name = syscall_tracepoint(target).split(":")
            if not (host.tracefs / "events" / system / name).is_dir():
                return None, f"this kernel has no tracepoint {system}:{name}"
        return dict(probe), None
    if kind == "tracepoint":
        if host.tracefs:
            system, name = target.split(":")
            fields = _tracepoint_fields(host.tracefs, system, name)
            if fields is None:
                return None, f"this kernel has no tracepoint {target}"
            rule = probe.get("bytes") or ""
            if rule.startswith("field:") and rule[6:] not in fields:
                return None, f"tracepoint {target} has no field {rule[6:]!r}"
            for name in (probe.get("fields") or {}).values():
                if name not in fields:
                    return None, f"tracepoint {target} has no field {name!r}"
        return dict(probe), None
    if kind == "async":
        if host.tracefs:
            needed = (("io_uring:io_uring_submit_req", "io_uring:io_uring_complete")
                      if target.startswith("io_uring_") else
                      ("syscalls:sys_enter_io_submit", "syscalls:sys_enter_io_getevents"))
            for tp in needed:
                if not (host.tracefs / "events" / tp.replace(":", "/")).is_dir():
                    return None, f"this kernel has no tracepoint {tp} (needed for {target})"
        return dict(probe), None
    if kind == "kprobe":
        if not host.kprobes:
            return None, host.kprobes_reason or NO_KPROBES
        functions = _traceable_functions(str(host.tracefs or TRACEFS))
        if functions and target not in functions:
            return None, f"kernel function {target} is not traceable on this kernel"
        return dict(probe), None
    # uprobe, usdt: a user-space library
    path = libraries.resolve(probe["library"], probe.get("family"))
    if path is None:
        return None, (f"library {probe['library']} not found on this host (not in `ldconfig -p`; "
                      "give its path with --library)")
    try:
        info = elf_info(path)
    except (ELFError, OSError, ValueError) as exc:
        return None, f"{path} is not a readable ELF library ({exc})"
    if info.machine != "EM_X86_64" and platform.machine() == "x86_64":
        return None, f"{path} is built for {info.machine}, not x86-64"
    if kind == "uprobe" and target not in info.functions:
        return None, f"{path} does not export function {target} (not in its dynamic symbols)"
    if kind == "usdt" and target not in info.usdt:
        return None, f"{path} has no USDT probe {target}"
    kept = copy.deepcopy(probe)
    kept["library"] = path
    return kept, None


def check_probes(probes, *, libraries=(), host: HostInfo | None = None,
                 merged: list | None = None) -> tuple[list[dict], list[Dropped]]:
    """Split probes into those attachable here (libraries resolved) and dropped ones.

    Uprobes that reach one function of one library file are merged into the first
    (see merge_aliases); ``merged``, when given, receives (merged probe, kept probe).
    """
    host = host or host_info()
    resolver = libraries if isinstance(libraries, LibraryResolver) else LibraryResolver(libraries)
    kept, dropped = [], []
    for probe in probes:
        ok, reason = check_probe(probe, host, resolver)
        if ok is None:
            dropped.append(Dropped(probe, reason))
        else:
            kept.append(ok)
    kept, pairs = merge_aliases(kept, _code_address)
    if merged is not None:
        merged.extend(pairs)
    return kept, dropped


def _code_address(probe: dict):
    """(device, inode, address) of the function a checked uprobe reaches (its name for
    the address when the name has several), or None when the file cannot be read."""
    try:
        st = os.stat(probe["library"])
        info = elf_info(probe["library"])
    except (ELFError, OSError, ValueError):
        return None
    target = probe["target"]
    if target in info.ambiguous or target not in info.addresses:
        return st.st_dev, st.st_ino, target     # address unknown: one name is one function
    return st.st_dev, st.st_ino, info.addresses[target]


def merge_aliases(probes, address_of) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """One probe per function: uprobes that reach the same code become the first of them.

    glibc exports fopen and fopen64 (fseeko/fseeko64, pread/pread64 ...) at one
    address; a uprobe per name fires twice per call and counts it twice. The first
    probe (in set order) keeps its id and definition and lists the others' targets
    in ``aliases``. ``address_of(probe)`` names the code a uprobe reaches (library
    file and address) or is None when it cannot tell: such probes stay as they are.
    Returns (copies of the probes kept, [(merged probe, the kept probe it joined)]).
    """
    kept, merged, owners = [], [], {}
    for probe in probes:
        where = address_of(probe) if probe.get("kind") == "uprobe" else None
        owner = owners.get(where) if where is not None else None
        if owner is not None:
            names = [n for n in (probe["target"], *probe.get("aliases", ()))
                     if n != owner["target"] and n not in owner.get("aliases", ())]
            if len(owner.get("aliases", ())) + len(names) <= MAX_ALIASES:
                if names:
                    owner["aliases"] = [*owner.get("aliases", ()), *names]
                merged.append((probe, owner))
                continue
            where = None    # too many names for one probe: the engine still attaches once
        probe = copy.deepcopy(probe)
        if where is not None:
            owners[where] = probe
        kept.append(probe)
    return kept, merged
