"""Holds at dlopen(): no call into a newly mapped family library is missed.

Library families (families.py) attach to the libraries a job's processes map,
found by reading their maps every 0.25 s: on its own, a process that calls a
library right after dlopen() returns (or from its constructors) runs ahead of
that. So the dynamic linker's debugger hook is watched too: glibc calls
``_dl_debug_state`` (what ``_r_debug.r_brk`` names for debuggers) with
``r_state`` RT_ADD before it maps a dlopen()'s objects and RT_CONSISTENT once
they are all mapped, before it relocates them, runs their constructors and
returns. At RT_CONSISTENT the BPF program (``dc_dl_hook``) looks at each new
object's file (the kernel's mapping, not the name the process gave) and, when
its name begins like a probed family and the tracer has not judged that file
yet, stops the process with SIGSTOP and tells the tracer at once through the
``holds`` ring. The tracer reads that process's maps, attaches the family's
probes, and sends SIGCONT: 5-20 ms for the test family's library here, 65 ms
for h5py's libhdf5 (its ELF is read to find the probed functions), once per
file: a file already judged (attached, or found not attachable) is never held
again, in any process, and no other dlopen() is stopped.

Why SIGSTOP: a BPF program can only stop the task it runs in by a signal, and
SIGSTOP is the one the task cannot catch, block or ignore. Its side effects are
kept small: only the first mapping of an unjudged family file is held (MPI
ranks dlopen()ing the same libmpi: the first one), the tracer sends SIGCONT
only to a process it stopped itself and that nobody else stopped meanwhile
(``dc_hold_signal`` watches SIGSTOP and SIGCONT sent to a held process), and
through a pidfd, so never to another process reusing the pid. A parent waiting
with WUNTRACED does see the stop and the continue (an interactive shell's job
control; Flux's libsubprocess reports them to the job shell as
FLUX_SUBPROCESS_STOPPED); ``datacrumbs trace`` and Python's subprocess do not
ask. A debugger attached to the process sees a SIGSTOP. Other threads' system
calls are restarted across the stop, except the few Linux ends with EINTR after
a stop (signal(7): epoll_wait, semop, socket timeouts ...).

A job process that starts with another dynamic linker (a container's glibc) is
held once at its exec (``dc_hold_exec``: the file at its AT_BASE is not a hooked
linker) until the hook is on that linker too, before it maps anything.

Nothing is held forever: a watchdog process (this module run with ``-m``)
holds the map of held processes and resumes any held longer than
``HOLD_TIMEOUT_S`` (a tracer stuck or stopped itself), and all of them when the
tracer exits however it exits (even SIGKILL: its end of a pipe closes). The
periodic scan stays as a safety net (a full holds ring, dlmopen() namespaces,
a dynamic linker run as a program, or other than glibc's, processes already
running at start with a linker other than the tracer's).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import struct
import subprocess
import sys
import time

from . import libbpf

log = logging.getLogger("datacrumbs.engine")

HOLD_TIMEOUT_S = 2.0            # the watchdog resumes a process held this long
WATCH_PERIOD_S = 0.1
HOLD_PROGS = ("dc_dl_hook", "dc_hold_signal", "dc_hold_exit", "dc_hold_exec")
NEEDLES, NEEDLE_MAX = 8, 32     # DC_NEEDLES, DC_NEEDLE_MAX
HOLDS_RING_BYTES = 16 << 10
HOLD_KNOWN = 8192               # DC_HOLD_KNOWN

_HELD = struct.Struct("<QII")               # struct dc_held
_MSG = struct.Struct("<QIIQQIII4x32s")      # struct dc_hold_msg
HOLD_DLOPEN, HOLD_INTERP = 0, 1             # enum dc_hold_kind
MAX_INTERPS = 64                            # hold_interps entries
_WORDS = NEEDLE_MAX // 8
_NEEDLES = struct.Struct(f"<I4x{2 * NEEDLES * _WORDS}Q")   # struct dc_needles
_FILE_KEY = struct.Struct("<QQ")            # struct dc_file_key
ARMING, HELD, USER_STOPPED, CONTINUED = 1, 2, 3, 4     # enum dc_hold_state


_BPF_PROG_TYPE_KPROBE = 2
_HELPERS = {"bpf_send_signal": 109, "bpf_find_vma": 180}   # enum bpf_func_id


def kernel_lacks() -> str | None:
    """Why this kernel cannot run the hold programs (a helper they call), or None."""
    import ctypes

    try:
        probe = libbpf.lib().libbpf_probe_bpf_helper
    except (AttributeError, libbpf.LibbpfError):
        return None             # cannot ask: loading will tell
    probe.restype, probe.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    for name, number in _HELPERS.items():
        if probe(_BPF_PROG_TYPE_KPROBE, number, None) == 0:
            return f"the kernel lacks {name}() for uprobe programs (no dlopen holds)"
    return None


def kernel_dev(major: int, minor: int) -> int:
    """A superblock's dev_t as the kernel keeps it (what /proc/<pid>/maps prints)."""
    return (major << 20) | minor


def interpreter(exe: str = "/proc/self/exe") -> str | None:
    """The dynamic linker an executable names (PT_INTERP), or None."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(exe, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    return seg.get_interp_name()
    except Exception:  # noqa: BLE001 - any unreadable file: no interpreter known
        return None
    return None


def debugger_hook(path: str) -> tuple[int, int]:
    """(file offset of ``_dl_debug_state``, address of ``_r_debug`` minus its address)
    in dynamic linker ``path``; ValueError saying why not."""
    try:
        return _debugger_hook(path)
    except (OSError, ValueError):
        raise
    except Exception:  # noqa: BLE001 - a job may name any file its dynamic linker
        raise ValueError(f"{path} is not an ELF dynamic linker") from None


def _debugger_hook(path: str) -> tuple[int, int]:
    from elftools.elf.elffile import ELFFile

    from .families import MAX_LIBRARY_BYTES

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_LIBRARY_BYTES:
            raise ValueError(f"{path} is larger than {MAX_LIBRARY_BYTES} bytes")
        elf = ELFFile(f)
        if elf.elfclass != 64 or (os.uname().machine == "x86_64"
                                  and elf["e_machine"] != "EM_X86_64"):
            raise ValueError(f"{path} is not a 64-bit dynamic linker of this machine (the hook "
                             "reads 64-bit link maps)")
        table = elf.get_section_by_name(".gnu.hash") or elf.get_section_by_name(".hash")
        if table is None or not hasattr(table, "get_symbol"):
            raise ValueError(f"{path} has no dynamic symbol hash table")
        hook, rdebug = table.get_symbol("_dl_debug_state"), table.get_symbol("_r_debug")
        if hook is None or rdebug is None or not hook["st_value"] or not rdebug["st_value"]:
            raise ValueError(f"{path} exports no _dl_debug_state and _r_debug (not glibc's "
                             "dynamic linker)")
        value = hook["st_value"]
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= value < \
                    seg["p_vaddr"] + seg["p_filesz"]:
                return value - seg["p_vaddr"] + seg["p_offset"], rdebug["st_value"] - value
    raise ValueError(f"_dl_debug_state of {path} is in no loaded segment")


def needles(families) -> list[bytes]:
    """What the BPF side compares file names with: each family's literal prefix (cut
    to what it compares; a shorter prefix only holds more often)."""
    from .families import literal_prefix

    out = sorted({os.fsencode(literal_prefix(f))[:NEEDLE_MAX - 1] for f in families})
    return [n for n in out if n]


def pack_needles(found: list[bytes]) -> bytes:
    """struct dc_needles: each prefix as little-endian words and the mask of its bytes."""
    words, masks = [], []
    for k in range(NEEDLES):
        n = found[k] if k < len(found) else b""
        words += struct.unpack(f"<{_WORDS}Q", n.ljust(NEEDLE_MAX, b"\0"))
        masks += struct.unpack(f"<{_WORDS}Q", (b"\xff" * len(n)).ljust(NEEDLE_MAX, b"\0"))
    return _NEEDLES.pack(min(len(found), NEEDLES), *words, *masks)


def release(held_fd: int, pid: int) -> str:
    """Resume ``pid`` if the tracer holds it and nobody else stopped it meanwhile;
    what happened, in words. The pidfd is opened before the entry is taken: the exit
    of a held process removes its entry, so an entry still there names that process."""
    key = struct.pack("<I", pid)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        libbpf.map_delete(held_fd, key)
        return "exited"
    except OSError:
        pidfd = None            # out of descriptors: by pid (a held process keeps its pid)
    try:
        raw = libbpf.map_lookup_and_delete(held_fd, key, _HELD.size)
        if raw is None:
            return "not held"
        state = _HELD.unpack(raw)[2]
        if state == USER_STOPPED:
            return "left stopped (someone else stopped it meanwhile)"
        if state == CONTINUED:
            return "already continued by someone else"
        if pidfd is None:
            os.kill(pid, signal.SIGCONT)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        return "resumed"
    except ProcessLookupError:
        return "exited"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def held_pids(held_fd: int) -> list[tuple[int, int]]:
    """(pid, ts ns CLOCK_MONOTONIC) of every held process."""
    out = []
    for key in list(libbpf.map_keys(held_fd, 4, limit=1 << 16)):
        raw = libbpf.map_lookup(held_fd, key, _HELD.size)
        if raw is not None:
            out.append((struct.unpack("<I", key)[0], _HELD.unpack(raw)[0]))
    return out


class DlopenHold:
    """The holds of one engine: the hook on the dynamic linker, the holds ring, the
    files already judged, the watchdog. ``service()`` handles what the ring says."""

    def __init__(self, engine, ldso: str):
        from .ring import Ring

        self.engine = engine
        obj = engine._obj
        for name, size in (("held", _HELD.size), ("hold_needles", _NEEDLES.size)):
            if obj.map_value_size(name) != size:
                raise ValueError(f"the BPF object's map {name} does not match this datacrumbs "
                                 "(run `datacrumbs build-bpf`)")
        self.held_fd = obj.map_fd("held")
        self._known_fd = obj.map_fd("hold_known")
        self._interps_fd = obj.map_fd("hold_interps")
        self.interps: dict[tuple[int, int], str | None] = {}   # dynamic linker -> hooked path
        self._known: set[tuple[int, int]] = set()
        self._known_full = False
        self.links: list = []
        self.hooks: list = []           # the dynamic linkers' hooks, and dc_hold_exec
        self.watchdog: subprocess.Popen | None = None
        self._watch_w: int | None = None
        self.holds = 0
        found = needles(engine._families)
        if len(found) > NEEDLES:
            log.warning("dlopen holds cover the first %d of %d library families; the others "
                        "are found by the periodic scan only", NEEDLES, len(found))
            found = found[:NEEDLES]
        libbpf.map_update(obj.map_fd("hold_needles"), struct.pack("<I", 0),
                          pack_needles(found))
        self.learn()
        st = os.stat(ldso)
        offset, delta = debugger_hook(ldso)
        try:
            # the watchers first: a hold never happens without them
            self.links.append(obj.attach("dc_hold_exit"))
            self.links.append(obj.attach("dc_hold_signal"))
            self._start_watchdog()
            self.hooks.append(obj.attach_uprobe("dc_dl_hook", ldso, offset,
                                                delta & 0xFFFFFFFFFFFFFFFF))
            self._hooked(kernel_dev(os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino, ldso)
            self.hooks.append(obj.attach("dc_hold_exec"))
        except BaseException:
            self.close()
            raise
        self.ring = Ring(obj.map_fd("holds"), HOLDS_RING_BYTES)
        self.ring_fd = obj.map_fd("holds")
        log.info("dlopen holds on %s: a process mapping a new library of %s waits until its "
                 "probes are attached", ldso, ", ".join(sorted(engine._families)))

    def _start_watchdog(self) -> None:
        r, w = os.pipe()
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self.held_fd), str(r), str(HOLD_TIMEOUT_S)],
                pass_fds=(self.held_fd, r), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        os.set_inheritable(w, False)
        self._watch_w = w

    def _hooked(self, dev: int, ino: int, path: str | None) -> None:
        """Dynamic linker (dev, ino) has the hook (``path``), or cannot (None): a process
        exec'ing with it is not held for it again."""
        self.interps[(dev, ino)] = path
        try:
            libbpf.map_update(self._interps_fd, _FILE_KEY.pack(dev, ino), b"\1")
        except libbpf.LibbpfError:
            log.info("more than %d dynamic linkers: processes starting with another one are "
                     "held at each exec", MAX_INTERPS)

    def hook_interpreter(self, pid: int, dev: int, ino: int) -> str:
        """Put the hook on the dynamic linker (dev, ino) that process ``pid`` has mapped
        (a container's glibc); what happened, in words."""
        if (dev, ino) in self.interps:
            return "already hooked"
        from .families import open_mapped, read_maps, Mapping

        found = None
        for line in read_maps(pid).splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[4] == str(ino).encode():
                try:
                    major, minor = (int(x, 16) for x in parts[3].split(b":"))
                except ValueError:
                    continue
                if kernel_dev(major, minor) == dev:
                    start, _, end = os.fsdecode(parts[0]).partition("-")
                    found = Mapping(pid, start, end, (major, minor, ino),
                                    os.fsdecode(parts[5]), "")
                    break
        if found is None:
            return "its mapping is gone"
        if len(self.interps) >= MAX_INTERPS:
            return f"more than {MAX_INTERPS} dynamic linkers"
        try:
            fd = open_mapped(found)
        except OSError as exc:
            self._hooked(dev, ino, None)
            return f"cannot open it ({exc.strerror or exc})"
        try:
            path = f"/proc/self/fd/{fd}"
            offset, delta = debugger_hook(path)
            self.hooks.append(self.engine._obj.attach_uprobe(
                "dc_dl_hook", path, offset, delta & 0xFFFFFFFFFFFFFFFF))
        except (OSError, ValueError, libbpf.AttachFailed) as exc:
            self._hooked(dev, ino, None)
            return f"no hook on {found.path}: {exc}"
        finally:
            os.close(fd)
        self._hooked(dev, ino, found.path)
        return f"hooked {found.path}"

    def learn(self) -> None:
        """Tell the kernel side which family files are judged (the scanner's)."""
        scanner = self.engine._scanner
        if scanner is None:
            return
        for major, minor, ino in list(scanner.seen):
            self._know(kernel_dev(major, minor), ino)

    def _know(self, dev: int, ino: int) -> None:
        if (dev, ino) in self._known or self._known_full:
            return
        try:
            libbpf.map_update(self._known_fd, _FILE_KEY.pack(dev, ino), b"\1")
        except libbpf.LibbpfError:
            self._known_full = True
            log.info("more than %d library files judged: later mappings of judged files "
                     "are held again (briefly)", HOLD_KNOWN)
            return
        self._known.add((dev, ino))

    def service(self) -> None:
        """Attach for every process the kernel held (or could not hold) since the last
        call, then resume those it holds."""
        if not self.ring.pending():
            return
        msgs = [_MSG.unpack_from(rec) for rec in self.ring.drain_variable()
                if len(rec) >= _MSG.size]
        pids: dict[int, list] = {}
        for m in msgs:
            pids.setdefault(m[1], []).append(m)
        for pid, group in pids.items():
            start = time.monotonic()
            done = []
            for _ts, _pid, _tid, dev, ino, _held, matches, kind, _name in group:
                if kind == HOLD_INTERP:
                    done.append(self.hook_interpreter(pid, dev, ino))
            if len(done) < len(group):
                self.engine._discover_pid(pid, force=True)
                self.learn()
            for _ts, _pid, _tid, dev, ino, _held, matches, kind, _name in group:
                if matches and kind == HOLD_DLOPEN:
                    self._know(dev, ino)    # a file matching a prefix but not its family
            held = any(m[5] for m in group)
            outcome = release(self.held_fd, pid) if held else "not held (could not stop it)"
            self.holds += held
            name = group[-1][8].split(b"\0", 1)[0].decode(errors="replace") or "?"
            if done:
                log.info("process %d started with dynamic linker %s: %s in %.1f ms, %s", pid,
                         name, "; ".join(done), (time.monotonic() - start) * 1000, outcome)
            else:
                log.info("process %d held as it mapped %s (dlopen or start): probes attached "
                         "in %.1f ms, %s", pid, name, (time.monotonic() - start) * 1000, outcome)

    def close(self) -> None:
        """No new holds, every held process resumed, the watchdog gone."""
        from .engine import _destroy_all

        if self.hooks or self.links:
            _destroy_all(self.hooks)    # the hooks first: nothing is held from here on
            self.hooks = []
            for pid, _ts in held_pids(self.held_fd):
                log.info("process %d resumed at the tracer's end: %s", pid,
                         release(self.held_fd, pid))
            _destroy_all(self.links)
            self.links = []
        if self._watch_w is not None:
            os.close(self._watch_w)     # the watchdog sees EOF, finds nothing held, exits
            self._watch_w = None
        if self.watchdog is not None:
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()
            self.watchdog = None
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
            self.ring = None


def start(engine) -> DlopenHold | None:
    """Holds for ``engine``'s families on the system's dynamic linker, or None (logged)
    where they cannot be: the periodic scan alone then finds dlopen()ed libraries."""
    from .engine import pid_namespace

    if pid_namespace() is not None:
        log.info("in a pid namespace: no dlopen holds (the kernel names other pids than "
                 "this /proc); dlopen()ed libraries are found by the periodic scan")
        return None
    ldso = interpreter()
    if ldso is None:
        log.info("no dynamic linker found for dlopen holds; dlopen()ed libraries are found "
                 "by the periodic scan")
        return None
    ldso = os.path.realpath(ldso)
    try:
        return DlopenHold(engine, ldso)
    except (OSError, ValueError, libbpf.LibbpfError, libbpf.AttachFailed) as exc:
        log.warning("no dlopen holds (%s): calls made right after a dlopen() of a library "
                    "of %s may be missed", exc, ", ".join(sorted(engine._families)))
        return None


def watch(held_fd: int, pipe_fd: int, timeout_s: float) -> None:
    """The watchdog: resume processes held longer than ``timeout_s``, and all of them
    once the tracer's end of ``pipe_fd`` closes (it exited, however)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)      # a unit's stop: outlive the tracer
    limit = int(timeout_s * 1e9)
    while True:
        ready, _, _ = select.select([pipe_fd], [], [], WATCH_PERIOD_S)
        if ready and not os.read(pipe_fd, 64):
            break
        now = time.monotonic_ns()
        for pid, ts in held_pids(held_fd):
            if now - ts > limit:
                _say(f"process {pid} held at a dlopen() for more than {timeout_s:g} s: "
                     f"{release(held_fd, pid)} without its probes")
    for pid, _ts in held_pids(held_fd):
        _say(f"process {pid} held at a dlopen() when the tracer exited: "
             f"{release(held_fd, pid)}")


def _say(text: str) -> None:
    """One line to the tracer's stderr (its journal); a closed one stops nothing."""
    try:
        print(f"datacrumbs: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
