"""ctypes binding of the few libbpf.so.1 calls datacrumbs needs.

PyPI has no maintained libbpf binding for Python 3.11 and BCC needs kernel
headers that nodes lack, so the engine talks to the distribution's libbpf
(Debian ``libbpf1``, >= 1.0 semantics: NULL + errno on failure) directly.
libbpf's own diagnostics go to the ``datacrumbs.libbpf`` logger, never to
stderr, so a daemon's journal shows them only at debug level.
"""

from __future__ import annotations

import collections
import ctypes
import errno as errno_mod
import logging
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_int, c_size_t,
                    c_uint32, c_uint64, c_void_p)

from ..errors import DatacrumbsError

log = logging.getLogger("datacrumbs.libbpf")

LIBBPF_SONAME = "libbpf.so.1"


class LibbpfError(DatacrumbsError):
    """libbpf is missing or one of its calls failed."""


class _UprobeOpts(Structure):
    _fields_ = [("sz", c_size_t), ("ref_ctr_offset", c_size_t), ("bpf_cookie", c_uint64),
                ("retprobe", c_bool), ("func_name", c_char_p)]


class _KprobeOpts(Structure):
    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_uint64), ("offset", c_size_t),
                ("retprobe", c_bool)]


class _TracepointOpts(Structure):
    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_uint64)]


_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
LIBBPF_WARN = 0
_warnings: collections.deque[str] = collections.deque(maxlen=4)
_lib = None
_libc = None
_print_cb = None  # kept referenced for as long as libbpf may call it
_c_print = None     # the loaded libbpf_print.c (use_c_print)
_c_fn = None        # its print function, as libbpf_set_print takes it
PRINT_LIBRARY_NAME = "datacrumbs-libbpf-print.so"


def _on_print(level, fmt, args):
    if level != LIBBPF_WARN and not log.isEnabledFor(logging.DEBUG):
        return 0
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").strip()
    if level == LIBBPF_WARN and text:
        _warnings.append(text)
    # Debug level only, whatever libbpf's level: the engine reports every failure
    # itself, in a sentence for the user; these lines are for diagnosis.
    log.debug("%s", text)
    return 0


def last_warning() -> str:
    """The last libbpf warning line since the previous call ("" if none)."""
    text = _warnings[-1] if _warnings else ""
    _warnings.clear()
    return text


def print_library_path(bpf_object) -> str:
    """Where `datacrumbs build-bpf` puts libbpf_print.c's library: beside the object."""
    return os.path.join(os.path.dirname(os.fspath(bpf_object)), PRINT_LIBRARY_NAME)


def use_c_print(bpf_object) -> bool:
    """Have BpfObject.load() print through libbpf_print.c (beside ``bpf_object``), which
    keeps the warnings without taking the GIL for each of the ~4,000 debug lines of a
    load. False (the Python callback stays) when that library is missing or not safe to
    load; never raises."""
    global _c_print, _c_fn
    if _c_print is not None:
        return True
    path = print_library_path(bpf_object)
    try:
        from ..safelib import unsafe_reason
        if not os.path.isfile(path) or unsafe_reason(path) is not None:
            return False
        handle = ctypes.CDLL(path)
        handle.dc_libbpf_warnings.restype = ctypes.c_uint
        handle.dc_libbpf_warning.restype = c_char_p
        handle.dc_libbpf_warning.argtypes = [ctypes.c_uint]
        fn = ctypes.cast(handle.dc_libbpf_print, _PRINT_FN)
        many = getattr(handle, "dc_raw_tp_open_many", None)   # raw_tracepoint_links
        if many is not None:
            many.restype = c_int
            many.argtypes = [c_int, POINTER(c_char_p), POINTER(c_uint64), c_int,
                             POINTER(c_int)]
    except (OSError, AttributeError) as exc:
        log.debug("libbpf printing stays in Python: %s", exc)
        return False
    _c_print, _c_fn = handle, fn
    return True


_c_loads = 0                        # loads now printing in C (tracer/parload.py: several)
_c_lock = threading.Lock()


def _load_object(obj) -> int:
    """bpf_object__load, its printing in C (use_c_print) unless debug logging wants
    every line; the warnings then go on as the Python callback passes them on. Loads in
    several threads at once keep the C printing until the last one ends."""
    global _c_loads
    if _c_print is None or log.isEnabledFor(logging.DEBUG):
        return lib().bpf_object__load(obj)
    first = _c_print.dc_libbpf_warnings()
    with _c_lock:
        _c_loads += 1
        if _c_loads == 1:
            lib().libbpf_set_print(_c_fn)
    try:
        return lib().bpf_object__load(obj)
    finally:
        with _c_lock:
            _c_loads -= 1
            if _c_loads == 0:
                lib().libbpf_set_print(_print_cb)
        last = _c_print.dc_libbpf_warnings()
        for n in range(max(first, last - 4), last):     # it keeps the last 4
            text = _c_print.dc_libbpf_warning(n).decode(errors="replace").strip()
            if text:
                _warnings.append(text)
                log.debug("%s", text)


def _declare(lib):
    sig = {
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
        "bpf_map__map_flags": (c_uint32, [c_void_p]),
        "bpf_map__set_map_flags": (c_int, [c_void_p, c_uint32]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__value_size": (c_uint32, [c_void_p]),
        "bpf_map__key_size": (c_uint32, [c_void_p]),
        "bpf_map__max_entries": (c_uint32, [c_void_p]),
        "bpf_map__name": (c_char_p, [c_void_p]),
        "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
        "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
        "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_uint32]),
        "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t,
                                                       POINTER(_UprobeOpts)]),
        "bpf_program__attach_kprobe_opts": (c_void_p, [c_void_p, c_char_p, POINTER(_KprobeOpts)]),
        "bpf_program__attach_tracepoint_opts": (c_void_p, [c_void_p, c_char_p, c_char_p,
                                                           POINTER(_TracepointOpts)]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32),
                                         c_void_p]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_lookup_and_delete_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_prog_test_run_opts": (c_int, [c_int, c_void_p]),
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
        "libbpf_major_version": (c_uint32, []),
        "libbpf_minor_version": (c_uint32, []),
    }
    for name, (restype, argtypes) in sig.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibbpfError(f"{LIBBPF_SONAME} has no {name}(): install libbpf 1.0 or newer "
                              "(Debian/Ubuntu package libbpf1)") from None
        fn.restype, fn.argtypes = restype, argtypes


def lib():
    """The loaded libbpf, with prototypes declared and printing routed to logging."""
    global _lib, _libc, _print_cb
    if _lib is None:
        try:
            handle = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
        except OSError as exc:
            raise LibbpfError(f"cannot load {LIBBPF_SONAME} ({exc}): install libbpf "
                              "(Debian/Ubuntu package libbpf1, RHEL libbpf)") from None
        _declare(handle)
        # the C library this process already has (find_library would run ldconfig)
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        _libc.vsnprintf.restype = c_int
        _libc.syscall.restype = ctypes.c_long
        _print_cb = _PRINT_FN(_on_print)
        handle.libbpf_set_print(_print_cb)
        _lib = handle
    return _lib


def version() -> tuple[int, int]:
    return (lib().libbpf_major_version(), lib().libbpf_minor_version())


def _fail(what: str) -> LibbpfError:
    err = ctypes.get_errno()
    return LibbpfError(f"{what}: {os.strerror(err) if err else 'unknown error'}")


def _errno_reason() -> str:
    """errno's text, with libbpf's own explanation when it gave one."""
    err = ctypes.get_errno()
    reason = os.strerror(err) if err else "unknown error"
    detail = last_warning()
    return f"{reason} ({detail})" if detail else reason


class Link:
    """One attachment; destroy() detaches it."""

    def __init__(self, ptr: int):
        self._ptr = ptr

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class AttachFailed(Exception):
    """An attach call failed; str() is the reason (errno text), ``errno`` the number."""

    def __init__(self, reason: str, errno: int = 0):
        super().__init__(reason)
        self.errno = errno


class FdLink:
    """A BPF link made with the bpf() system call directly: closing the fd detaches it."""

    def __init__(self, fd: int):
        self._fd = fd

    def destroy(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# bpf(2) for what libbpf 1.1 has no helper for (uprobe_multi links, kernel >= 6.6)
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_F_NO_PREALLOC = 1
_BPF_ATTR_SIZE = 144            # sizeof(union bpf_attr) on 6.x; the tail is zeros


class _UprobeMultiAttr(Structure):
    """The link_create member of union bpf_attr, uprobe_multi variant."""
    _fields_ = [("prog_fd", c_uint32), ("target_fd", c_uint32), ("attach_type", c_uint32),
                ("flags", c_uint32), ("path", c_uint64), ("offsets", c_uint64),
                ("ref_ctr_offsets", c_uint64), ("cookies", c_uint64), ("cnt", c_uint32),
                ("um_flags", c_uint32), ("pid", c_uint32), ("_tail", ctypes.c_char * 84)]


def uprobe_multi_link(prog_fd: int, path: str, offsets: list[int], cookies: list[int], *,
                      retprobe: bool = False) -> FdLink:
    """One link putting ``prog_fd`` on every file offset of ``path`` (cookie per offset).

    One system call instead of one perf event and link per function, and one
    close() to detach them all. Raises AttachFailed (with errno) when the
    kernel refuses, e.g. EINVAL/EOPNOTSUPP before 6.6."""
    if SYS_BPF is None:
        raise AttachFailed("uprobe_multi links are not wired for this architecture",
                           errno_mod.ENOSYS)
    lib()
    n = len(offsets)
    c_path = ctypes.create_string_buffer(os.fsencode(path))
    c_offsets = (c_uint64 * n)(*offsets)
    c_cookies = (c_uint64 * n)(*cookies)
    attr = _UprobeMultiAttr(prog_fd=prog_fd, attach_type=BPF_TRACE_UPROBE_MULTI,
                            path=ctypes.addressof(c_path), offsets=ctypes.addressof(c_offsets),
                            cookies=ctypes.addressof(c_cookies), cnt=n,
                            um_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0)
    assert ctypes.sizeof(attr) == _BPF_ATTR_SIZE
    ctypes.set_errno(0)
    fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), _BPF_ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachFailed(os.strerror(err) if err else "unknown error", err)
    return FdLink(fd)


BPF_RAW_TRACEPOINT_OPEN = 17


class _RawTracepointAttr(Structure):
    """The raw_tracepoint member of union bpf_attr (cookie: kernel >= 6.10)."""
    _fields_ = [("name", c_uint64), ("prog_fd", c_uint32), ("_pad", c_uint32),
                ("cookie", c_uint64), ("_tail", ctypes.c_char * 120)]


def raw_tracepoint_link(prog_fd: int, name: str, cookie: int) -> FdLink:
    """``prog_fd`` on raw tracepoint ``name`` (no category) with a cookie. Raises
    AttachFailed (with errno) when the kernel refuses, e.g. E2BIG or EINVAL before 6.10
    (no cookie there) or ENOENT for a tracepoint it does not have."""
    if SYS_BPF is None:
        raise AttachFailed("raw tracepoint links are not wired for this architecture",
                           errno_mod.ENOSYS)
    lib()
    c_name = ctypes.create_string_buffer(name.encode())
    attr = _RawTracepointAttr(name=ctypes.addressof(c_name), prog_fd=prog_fd, cookie=cookie)
    assert ctypes.sizeof(attr) == _BPF_ATTR_SIZE
    ctypes.set_errno(0)
    fd = _libc.syscall(SYS_BPF, BPF_RAW_TRACEPOINT_OPEN, ctypes.byref(attr), _BPF_ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachFailed(os.strerror(err) if err else "unknown error", err)
    return FdLink(fd)


def raw_tracepoint_links(prog_fd: int, targets: list[tuple[str, int]]) -> list:
    """``raw_tracepoint_link`` for each (name, cookie) of ``targets``: an FdLink or the
    AttachFailed, in order. In one C call that holds no GIL (dc_raw_tp_open_many, beside
    the print function) when that library is loaded, else one by one."""
    fn = getattr(_c_print, "dc_raw_tp_open_many", None) if _c_print is not None else None
    if fn is None or SYS_BPF is None:
        out = []
        for name, cookie in targets:
            try:
                out.append(raw_tracepoint_link(prog_fd, name, cookie))
            except AttachFailed as exc:
                out.append(exc)
        return out
    n = len(targets)
    names = (c_char_p * n)(*[name.encode() for name, _cookie in targets])
    cookies = (c_uint64 * n)(*[cookie for _name, cookie in targets])
    fds = (c_int * n)()
    fn(prog_fd, names, cookies, n, fds)
    return [FdLink(fd) if fd >= 0 else AttachFailed(os.strerror(-fd), -fd) for fd in fds]


class BpfObject:
    """An opened (then loaded) BPF object file and its maps and programs."""

    def __init__(self, path: os.PathLike | str):
        self.path = str(path)
        ctypes.set_errno(0)
        last_warning()
        self._obj = lib().bpf_object__open_file(os.fsencode(self.path), None)
        if not self._obj:
            raise LibbpfError(f"cannot open BPF object {self.path}: {_errno_reason()}; "
                              "rebuild it with `datacrumbs build-bpf`")
        self._loaded = False

    def _map(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(f"BPF object {self.path} has no map {name!r}; it was built from "
                              "another datacrumbs version: rebuild it with `datacrumbs build-bpf`")
        return ptr

    def program(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(f"BPF object {self.path} has no program {name!r}; rebuild it with "
                              "`datacrumbs build-bpf`")
        return ptr

    def program_fd(self, name: str) -> int:
        return lib().bpf_program__fd(self.program(name))

    def set_autoload(self, prog: str, autoload: bool) -> None:
        """Before load: whether ``prog`` is loaded at all."""
        if lib().bpf_program__set_autoload(self.program(prog), autoload) != 0:
            raise _fail(f"cannot change whether BPF program {prog} is loaded")

    def set_expected_attach_type(self, prog: str, attach_type: int) -> None:
        """Before load: the kernel checks some helpers (the attach cookie) against it."""
        if lib().bpf_program__set_expected_attach_type(self.program(prog), attach_type) != 0:
            raise _fail(f"cannot set the attach type of BPF program {prog}")

    def map_names(self) -> list[str]:
        """Every map of the object, libbpf's internal ones (``<obj>.rodata``, ``.bss``,
        ``.data``, ``.kconfig``: names with a dot) included."""
        names, ptr = [], lib().bpf_object__next_map(self._obj, None)
        while ptr:
            names.append(lib().bpf_map__name(ptr).decode())
            ptr = lib().bpf_object__next_map(self._obj, ptr)
        return names

    def reuse_maps(self, other: "BpfObject") -> None:
        """Before load: each map of this object is ``other``'s map of that name (a loaded
        object of the same file), so programs loaded here later share its maps."""
        ptr = lib().bpf_object__next_map(self._obj, None)
        while ptr:
            name = lib().bpf_map__name(ptr).decode()
            if lib().bpf_map__reuse_fd(ptr, other.map_fd(name)) != 0:
                raise _fail(f"cannot share BPF map {name} with {other.path}")
            ptr = lib().bpf_object__next_map(self._obj, ptr)

    def set_max_entries(self, name: str, n: int) -> None:
        if lib().bpf_map__set_max_entries(self._map(name), n) != 0:
            raise _fail(f"cannot size BPF map {name} to {n}")

    def add_map_flags(self, name: str, flags: int) -> None:
        m = self._map(name)
        if lib().bpf_map__set_map_flags(m, lib().bpf_map__map_flags(m) | flags) != 0:
            raise _fail(f"cannot set flags {flags:#x} on BPF map {name}")

    def load(self) -> None:
        ctypes.set_errno(0)
        last_warning()
        if _load_object(self._obj) != 0:
            raise LibbpfError(f"the kernel refused to load BPF object {self.path}: "
                              f"{_errno_reason()} (run as root on a kernel with BTF; "
                              "details at debug level from the datacrumbs.libbpf logger)")
        self._loaded = True

    def map_fd(self, name: str) -> int:
        return lib().bpf_map__fd(self._map(name))

    def map_value_size(self, name: str) -> int:
        return lib().bpf_map__value_size(self._map(name))

    def map_max_entries(self, name: str) -> int:
        return lib().bpf_map__max_entries(self._map(name))

    # -- attaching: each returns a Link or raises AttachFailed(reason) --

    def attach(self, prog: str) -> Link:
        ctypes.set_errno(0)
        last_warning()
        ptr = lib().bpf_program__attach(self.program(prog))
        if not ptr:
            raise AttachFailed(_errno_reason())
        return Link(ptr)

    def attach_uprobe(self, prog: str, binary: str, offset: int, cookie: int, *,
                      retprobe: bool = False, func_name: str | None = None, pid: int = -1,
                      ref_ctr_offset: int = 0) -> Link:
        """``ref_ctr_offset``: file offset of a USDT semaphore the kernel counts up
        while the uprobe is attached (0: none)."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), bpf_cookie=cookie, retprobe=retprobe,
                           func_name=func_name.encode() if func_name else None,
                           ref_ctr_offset=ref_ctr_offset)
        ctypes.set_errno(0)
        last_warning()
        ptr = lib().bpf_program__attach_uprobe_opts(self.program(prog), pid, os.fsencode(binary),
                                                     offset, ctypes.byref(opts))
        if not ptr:
            raise AttachFailed(_errno_reason())
        return Link(ptr)

    def attach_kprobe(self, prog: str, func: str, cookie: int, *, retprobe: bool = False) -> Link:
        opts = _KprobeOpts(sz=ctypes.sizeof(_KprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
        ctypes.set_errno(0)
        last_warning()
        ptr = lib().bpf_program__attach_kprobe_opts(self.program(prog), func.encode(),
                                                     ctypes.byref(opts))
        if not ptr:
            raise AttachFailed(_errno_reason())
        return Link(ptr)

    def attach_tracepoint(self, prog: str, category: str, name: str, cookie: int) -> Link:
        opts = _TracepointOpts(sz=ctypes.sizeof(_TracepointOpts), bpf_cookie=cookie)
        ctypes.set_errno(0)
        last_warning()
        ptr = lib().bpf_program__attach_tracepoint_opts(self.program(prog), category.encode(),
                                                         name.encode(), ctypes.byref(opts))
        if not ptr:
            raise AttachFailed(_errno_reason())
        return Link(ptr)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


# -- map element access on fds (bytes in, bytes out) --

def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    ctypes.set_errno(0)
    if lib().bpf_map_update_elem(fd, key, value, flags) != 0:
        raise _fail("cannot update BPF map")


def map_update_many(fd: int, items: list[tuple[bytes, bytes]]) -> None:
    """Every (key, value) in one system call where the kernel has batch updates (5.6),
    else one by one: 10,000 probe specs cost 1 call, not 10,000."""
    if not items:
        return
    keys, values = b"".join(k for k, _v in items), b"".join(v for _k, v in items)
    count = c_uint32(len(items))
    ctypes.set_errno(0)
    if lib().bpf_map_update_batch(fd, keys, values, ctypes.byref(count), None) == 0 \
            and count.value == len(items):
        return
    for key, value in items:
        map_update(fd, key, value)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ctypes.create_string_buffer(value_size)
    if lib().bpf_map_lookup_elem(fd, key, buf) != 0:
        return None
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    return lib().bpf_map_delete_elem(fd, key) == 0


def map_lookup_and_delete(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value, removed in the same step (None when absent): of two callers racing
    for one entry, only one gets it."""
    buf = ctypes.create_string_buffer(value_size)
    if lib().bpf_map_lookup_and_delete_elem(fd, key, buf) != 0:
        return None
    return buf.raw


def map_keys(fd: int, key_size: int, limit: int = 1 << 20):
    """Yield every key of a hash map (bounded: maps are bounded too)."""
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    for _ in range(limit):
        if lib().bpf_map_get_next_key(fd, cur, nxt) != 0:
            return
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
        yield nxt.raw


def num_possible_cpus() -> int:
    n = lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise LibbpfError(f"libbpf cannot count the possible CPUs: {os.strerror(-n)}")
    return n


__all__ = ["BpfObject", "Link", "FdLink", "uprobe_multi_link", "raw_tracepoint_link", "LibbpfError", "AttachFailed",
           "lib", "version", "map_update",
           "map_lookup", "map_delete", "map_lookup_and_delete", "map_keys", "num_possible_cpus"]


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.x)."""
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p),
                ("data_size_in", c_uint32), ("data_size_out", c_uint32),
                ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
                ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


BPF_F_TEST_RUN_ON_CPU = 1


def prog_test_run_on_cpu(prog_fd: int, cpu: int) -> int:
    """Run a raw_tp program once on ``cpu`` (in an IPI when it is another CPU's; kernel
    5.10+): its return value. Raises LibbpfError (errno ENXIO: an offline CPU)."""
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpu)
    r = lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if r < 0:
        exc = LibbpfError(f"BPF_PROG_TEST_RUN on CPU {cpu}: {os.strerror(-r)}")
        exc.errno = -r
        raise exc
    return opts.retval
