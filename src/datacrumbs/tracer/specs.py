"""A probe's definition checked and packed into the kernel's struct dc_spec.

Every probe of a signed file is checked here before anything of it reaches the kernel:
its kind, target, argument roles and bytes rule, the tracepoint or system call it names
on this host. A probe that cannot be traced is refused with the reason the summary shows
(``Refused``), never fatal to the others.
"""

from __future__ import annotations

import functools
import os
import re
import struct

from . import scalars
from .objload import ASYNC_CLASSES, TRACEFS, async_interface, async_missing
from .paths import OPEN_OPS, RENAME_OPS
from ..probes import host_check

KINDS = ("syscall", "uprobe", "kprobe", "tracepoint", "async", "usdt")
MAX_SYSCALLS = 512
ROLES = ("fd", "count", "offset", "path", "size", "nmemb", "stream", "fd2", "flags")
# Roles naming a library call's object handle (sent as the event's ``handle``), as enum
# dc_handle_kind: the argument itself, a pointer to it read at entry, a pointer the call
# writes it to read at return. A probe has at most one.
HANDLE_ROLES = {"handle": 1, "handle_ptr": 2, "handle_out": 3}
# The MPI datatype argument travels in the event's 32-bit flags word (MPICH's
# MPI_Datatype is an int): a probe has either a flags or a datatype role.
DATATYPE_ROLE = "datatype"
BYTES_NONE, BYTES_RET, BYTES_RET_ARG, BYTES_ARG, BYTES_FIELD = 0, 1, 2, 3, 4
SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$@]{0,254}$")
USDT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}:[A-Za-z_][A-Za-z0-9_]{0,63}$")
TRACEPOINT_RE = re.compile(r"^([a-z0-9_]{1,64}):([a-z0-9_]{1,128})$")
# uprobe targets declared to return C int: the upper half of rax is garbage for them.
INT_RETURNING = frozenset({
    "open", "open64", "openat", "openat64", "creat", "creat64", "close", "fsync", "fdatasync",
    "fclose", "fflush", "fseek", "fseeko", "fseeko64", "ftruncate", "ftruncate64", "truncate",
    "mkdir", "rmdir", "unlink", "rename", "access", "dup", "dup2", "fcntl", "ioctl", "stat",
    "fstat", "lstat", "stat64", "fstat64", "lstat64", "posix_fadvise", "fileno", "feof",
    "ferror", "fputc", "fgetc", "fputs", "putc", "getc", "setvbuf", "msync",
    # HDF5 calls returning herr_t (an int; hid_t-returning ones are 64-bit and stay out)
    "H5Fclose", "H5Fflush", "H5Dread", "H5Dwrite", "H5Dclose", "H5Gclose", "H5Aread",
    "H5Awrite", "H5Aclose", "H5Oclose",
    # every MPI-IO call returns an int error code
    *(f"{prefix}MPI_File_{op}" for prefix in ("", "P") for op in (
        "open", "close", "read", "read_at", "read_all", "read_at_all", "write", "write_at",
        "write_all", "write_at_all", "sync", "set_view", "seek", "set_size", "delete"))})

# (kind, target) of the calls that close the descriptor of their fd or stream role: the
# kernel forgets the descriptor, and a stream's descriptor is read at the call's entry (fclose
# sets it to -1 and frees the FILE before it returns).
CLOSING = frozenset({("syscall", "close"), ("uprobe", "fclose")})
SPEC = struct.Struct("<IBBbBbbbbbbbbHHbbBBbBBB4B")  # struct dc_spec
_INDEX = struct.Struct("<I")    # its first field, the probe's index


class Refused(Exception):
    """A probe cannot be attached; str() is the reason the summary shows."""


def syscall_number(name: str) -> int | None:
    try:
        return host_check.syscall_number(name)
    except KeyError:
        return None


def tracepoint_field(category: str, name: str, fname: str) -> tuple[int, int]:
    """(offset, size) of a tracepoint field, from tracefs' format file."""
    fmt = TRACEFS / "events" / category / name / "format"
    try:
        text = fmt.read_text()
    except OSError:
        raise Refused(f"cannot read {fmt}") from None
    for m in re.finditer(r"field:([^;]*);\s*offset:(\d+);\s*size:(\d+);", text):
        decl = m.group(1).split()
        if decl and decl[-1].split("[")[0] == fname:
            off, size = int(m.group(2)), int(m.group(3))
            if size not in (1, 2, 4, 8) or off > 4095:
                raise Refused(f"tracepoint field {fname} of {category}:{name} is not an integer")
            return off, size
    raise Refused(f"tracepoint {category}:{name} has no field {fname}")


def arg_index(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
        raise Refused(f"{what} must be an argument index 0..5, not {value!r}")
    return value


def handle_role(args: dict, kind: str) -> tuple[int, int]:
    """(argument index, enum dc_handle_kind) of a probe's handle role; (-1, 0) if none."""
    given = [r for r in HANDLE_ROLES if r in args]
    if not given:
        return -1, 0
    if len(given) > 1:
        raise Refused(f"a probe has one handle role, not {' and '.join(given)}")
    role = given[0]
    if role != "handle" and kind in ("syscall", "kprobe"):
        raise Refused(f"argument role {role!r} reads the caller's memory: uprobes only")
    return arg_index(args[role], f"argument role {role!r}"), HANDLE_ROLES[role]


@functools.lru_cache(maxsize=256)
def call_shape(kind: str, args: tuple, _rule_type: type, rule) -> tuple:
    """(roles, handle index, handle kind, bytes kind, bytes arg, bytes field) of a probe's
    ``args`` ((role, type, index) triples) and ``bytes`` rule; raises Refused."""
    args = {role: idx for role, _type, idx in args}
    roles = {r: -1 for r in ROLES}
    for role, idx in args.items():
        if role in roles:
            roles[role] = arg_index(idx, f"argument role {role!r}")
    handle, handle_kind = handle_role(args, kind)
    if DATATYPE_ROLE in args:
        if "flags" in args:
            raise Refused("a probe has a flags or a datatype role, not both (they share "
                           "the event's flags field)")
        roles["flags"] = arg_index(args[DATATYPE_ROLE], "argument role 'datatype'")
    return (tuple(roles.items()), handle, handle_kind, *bytes_rule(rule))


def bytes_rule(rule) -> tuple[int, int, str | None]:
    """(kind, arg index, field name) for a probe's ``bytes`` rule."""
    if rule is None:
        return BYTES_NONE, -1, None
    if rule == "ret":
        return BYTES_RET, -1, None
    if isinstance(rule, str):
        if m := re.fullmatch(r"ret\*arg(\d)", rule):
            return BYTES_RET_ARG, arg_index(int(m.group(1)), "bytes rule argument"), None
        if m := re.fullmatch(r"arg(\d)", rule):
            return BYTES_ARG, arg_index(int(m.group(1)), "bytes rule argument"), None
        if m := re.fullmatch(r"field:([A-Za-z_][A-Za-z0-9_]{0,63})", rule):
            return BYTES_FIELD, -1, m.group(1)
    raise Refused(f"bytes rule {rule!r} is not one of ret, ret*argN, argN, field:NAME or null")


class SpecChecker:
    """Checks probes for one engine; tracefs' list of events is read once."""

    def __init__(self, fast: bool = True):
        self._events: set[str] | None = None
        # uprobes without scalar rules: the spec's bytes after its probe index, by shape
        self._uprobe_templates: dict | None = {} if fast else None

    def tracepoint_exists(self, category: str, name: str) -> bool:
        """Whether tracefs has this event: one read of available_events per engine (1 ms
        for its 2,300 events), where a stat of each event's directory made tracefs build
        it (844 tracepoints of a 10,000-probe file: 43 ms); the stat where it is absent."""
        if self._events is None:
            try:
                with open(f"{TRACEFS}/available_events") as f:
                    self._events = set(f.read().split())
            except OSError:
                self._events = set()
        if f"{category}:{name}" in self._events:
            return True
        return os.path.isdir(f"{TRACEFS}/events/{category}/{name}")

    def spec_or_refusal(self, index: int, probe):
        try:
            return self.spec(index, probe)
        except Refused as exc:
            return exc

    def spec(self, index: int, probe) -> tuple[str, tuple]:
        """Validate one probe dict; return (kind, (packed spec, syscall nr, has path))."""
        if self._uprobe_templates is not None and type(probe) is dict \
                and probe.get("kind") == "uprobe" and "scalars" not in probe \
                and "returns" not in probe:
            fast = self._uprobe_spec(index, probe)
            if fast is not None:
                return fast
        return self._spec(index, probe)

    def _uprobe_spec(self, index: int, probe: dict):
        """The common case of a big file (9,000 library functions): a uprobe whose spec is
        its shape's, but for the index. Packed once per shape by _spec itself, so the
        bytes are the same; None when _spec must look (and perhaps refuse)."""
        target, args, rule = probe.get("target"), probe.get("args") or {}, probe.get("bytes")
        if type(target) is not str or type(args) is not dict or not SYMBOL_RE.match(target):
            return None
        base = target.split("@")[0]
        shape = (tuple(args.items()), tuple(map(type, args.values())), type(rule), rule,
                 base in INT_RETURNING, base in OPEN_OPS, base in RENAME_OPS,
                 ("uprobe", base) in CLOSING)
        try:
            template = self._uprobe_templates.get(shape)
        except TypeError:       # an unhashable value: _spec refuses it, and says why
            return None
        if template is None:
            _kind, (packed, _nr, has_path) = self._spec(0, probe)   # raises Refused
            template = self._uprobe_templates[shape] = (packed[_INDEX.size:], has_path)
        return "uprobe", (_INDEX.pack(index) + template[0], -1, template[1])

    def _spec(self, index: int, probe) -> tuple[str, tuple]:
        if not isinstance(probe, dict):
            raise Refused("probe is not an object")
        kind, target = probe.get("kind"), probe.get("target")
        if kind not in KINDS:
            raise Refused(f"unknown probe kind {kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(target, str) or not target:
            raise Refused("probe has no target")
        args = probe.get("args") or {}
        if not isinstance(args, dict):
            raise Refused("probe args must map roles to argument indexes")
        # probes share a few shapes: 10,000 probes checked in 25 ms, not 50. Each value's
        # type is in the key: True == 1 and 1.0 == 1, but only 1 is an argument index
        key = (kind, tuple((role, type(idx), idx) for role, idx in args.items()),
               type(probe.get("bytes")), probe.get("bytes"))
        try:
            shape = call_shape(*key)
        except TypeError:       # an unhashable value: it is refused, and says why
            shape = call_shape.__wrapped__(*key)
        roles, handle, handle_kind, bkind, barg, fname = shape
        roles = dict(roles)
        field_off = field_size = 0
        nr = -1
        if kind == "syscall":
            nr = syscall_number(target) if SYMBOL_RE.match(target) else None
            if nr is None or not 0 <= nr < MAX_SYSCALLS:
                raise Refused(f"no system call named {target!r} on this host")
        elif kind == "async":
            if target not in ASYNC_CLASSES:
                raise Refused(f"unknown async I/O probe {target!r}; known: "
                               f"{', '.join(ASYNC_CLASSES)}")
            missing = async_missing(async_interface(target))
            if missing:
                raise Refused(missing)
            roles = {r: -1 for r in ROLES}     # the kernel's request, not call arguments
            bkind, barg = BYTES_NONE, -1
        elif kind == "tracepoint":
            m = TRACEPOINT_RE.match(target)
            if not m:
                raise Refused(f"tracepoint {target!r} is not of the form category:name")
            if not self.tracepoint_exists(m.group(1), m.group(2)):
                raise Refused(f"tracepoint {target} does not exist on this kernel")
            roles = {r: -1 for r in ROLES}     # tracepoints have no call arguments
            handle, handle_kind = -1, 0
            if bkind == BYTES_FIELD and target != "block:block_rq_complete":
                field_off, field_size = tracepoint_field(m.group(1), m.group(2), fname)
            elif bkind not in (BYTES_NONE, BYTES_FIELD):
                raise Refused(f"bytes rule {probe.get('bytes')!r} needs call arguments; "
                               "tracepoints take field:NAME")
        elif kind == "usdt":
            if not USDT_RE.match(target):
                raise Refused(f"USDT probe {target!r} is not of the form provider:name")
            roles = {r: -1 for r in ROLES}     # its arguments come from the note's spec
            handle, handle_kind, bkind, barg = -1, 0, BYTES_NONE, -1
        else:
            if not SYMBOL_RE.match(target):
                raise Refused(f"{target!r} is not a function name")
            if bkind == BYTES_FIELD:
                raise Refused("bytes rule field:NAME is only for tracepoints")
        base = target.split("@")[0]     # a versioned symbol's plain name
        ret32 = 1 if kind == "uprobe" and base in INT_RETURNING else 0
        regs = scalars.NONE
        if "scalars" in probe or "returns" in probe:
            try:
                regs, declared_ret32 = scalars.registers(probe, kind, roles, handle_kind)
            except ValueError as exc:
                raise Refused(str(exc)) from None
            ret32 = ret32 or declared_ret32
        packed = SPEC.pack(index, 1, bkind, barg, 1 if kind == "kprobe" else 0,
                            roles["fd"], roles["count"], roles["offset"], roles["path"],
                            roles["size"], roles["nmemb"], roles["stream"], ret32,
                            field_off, field_size, roles["fd2"], roles["flags"],
                            1 if base in OPEN_OPS else 0, 1 if (kind, base) in CLOSING else 0,
                            handle, handle_kind,
                            1 if base in RENAME_OPS else 0, 0, *regs)
        return kind, (packed, nr, roles["path"] >= 0)
