"""Scalar arguments of functions the catalog does not know, in and out of the event.

The signing service signs, for such a function, which registers hold its first four
integer-class arguments (``scalars``: position, name, register, size, sign; read from
the library's debug info by signing/signatures.py). The kernel copies those registers
into event fields the function has no other use for, so the hot path and the event
keep their size; the daemon moves them into the trace row's args, named
``arg<position>_<name>``, sized and signed as declared, and clears the fields so no
reader takes them for a descriptor, a byte count or an offset.
"""

from __future__ import annotations

import re

import numpy as np

from ..probes.schema import MAX_ARG_INDEX, MAX_SCALARS, SCALAR_NAME_PATTERN

#: struct dc_spec.scalar (registers plus one): no register recorded
NONE = (0,) * MAX_SCALARS
#: where argument slot k travels in struct dc_event (slot 3: fd is its low half, fd2 its high)
SLOT_FIELDS = ("count", "offset", "handle", "fd")

_NAME_OK = re.compile(SCALAR_NAME_PATTERN).match


def registers(probe: dict, kind: str, roles: dict, handle_kind: int) -> tuple[tuple, bool]:
    """(dc_spec.scalar, ret32) of a probe with ``scalars``/``returns``; ValueError says
    why the probe is refused. Only uprobes without argument roles have them: the fields
    they travel in belong to the roles otherwise."""
    if kind != "uprobe":
        raise ValueError("only uprobes record scalar arguments")
    items = probe.get("scalars", [])
    if not isinstance(items, list) or len(items) > MAX_SCALARS:
        raise ValueError(f"scalars must be a list of at most {MAX_SCALARS} arguments")
    if items and (any(v >= 0 for v in roles.values()) or handle_kind or probe.get("bytes")):
        raise ValueError("a probe has argument roles or scalar arguments, not both")
    regs = []
    for item in items:
        reg = item.get("reg") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        if type(reg) is not int or not 0 <= reg <= MAX_ARG_INDEX or size not in (1, 2, 4, 8) \
                or not isinstance(name, str) or not _NAME_OK(name):
            raise ValueError("a scalar argument needs a register 0-5, a size of 1, 2, 4 or "
                             "8 bytes and a C identifier as its name")
        regs.append(reg + 1)
    returns = probe.get("returns")
    if returns is not None and (not isinstance(returns, dict)
                                or returns.get("size") not in (1, 2, 4, 8)):
        raise ValueError("returns must be null or give the result's size (1, 2, 4 or 8)")
    # a C int comes back in eax: the kernel sign-extends it, as for the catalog's ints
    ret32 = bool(returns and returns["size"] == 4 and returns.get("signed"))
    return tuple(regs + [0] * (MAX_SCALARS - len(regs))), ret32


def sized(raw: int, size: int, signed: bool) -> int:
    """The low ``size`` bytes of a register value, sign-extended when ``signed`` (a
    traced function's argument as declared; a USDT argument as its note says)."""
    raw &= (1 << (8 * size)) - 1
    if signed and raw >> (8 * size - 1):
        raw -= 1 << (8 * size)
    return raw


def _values(raw: np.ndarray, size: int, signed: bool) -> np.ndarray:
    """``sized`` of a uint64 column: int64 when signed or narrower than 8 bytes, else
    uint64 (an unsigned 64-bit argument past 2**63 stays positive)."""
    if size == 8:
        return raw.view(np.int64) if signed else raw
    v = (raw & np.uint64((1 << (8 * size)) - 1)).astype(np.int64)
    if signed:
        sign = np.int64(1 << (8 * size - 1))
        v = (v ^ sign) - sign
    return v


def _slot(ev: np.ndarray, slot: int) -> np.ndarray:
    """Argument slot ``slot`` of records ``ev`` as uint64 (see SLOT_FIELDS)."""
    field = SLOT_FIELDS[slot]
    if field != "fd":
        return ev[field].astype(np.uint64)
    return ev["fd"].astype(np.uint32).astype(np.uint64) | \
        (ev["fd2"].astype(np.uint32).astype(np.uint64) << np.uint64(32))


class ScalarRows:
    """The daemon's side: which probes carry scalars or a declared result, and their
    rows' args and return values."""

    def __init__(self, probes: list[dict]):
        self.probes = probes
        self.mask = np.array([bool(p.get("scalars")) or "returns" in p for p in probes]
                             or [False])
        self.active = bool(self.mask.any())

    def rows(self, ev: np.ndarray, ops: np.ndarray) -> list | None:
        """Each row's scalar args (None for other rows), the borrowed columns cleared and
        the result as declared (the converter makes every negative one -1, the libc
        convention: a function of unknown convention keeps its value); None when no row
        of the batch has any. The ret column is int64: an unsigned 64-bit result past
        2**63 reads negative. Column by column, per probe: a hot function's events cost
        the daemon about as much as any other's."""
        probe = ev["probe"]
        rows = np.flatnonzero(self.mask[probe])
        if not len(rows):
            return None
        out: list = [None] * len(ops)
        sub = probe[rows]
        for p in np.unique(sub).tolist():
            r = rows[sub == p]
            spec = self.probes[p]
            returns = spec.get("returns")
            ops["ret"][r] = 0 if returns is None else _values(
                ev["ret"][r].astype(np.uint64), returns["size"],
                returns["signed"] or returns["size"] == 8)
            ops["errno"][r] = 0
            items = spec.get("scalars") or ()
            if not items:
                continue
            part = ev[r]
            names = [f"arg{item['pos']}_{item['name']}" for item in items]
            cols = [_values(_slot(part, k), item["size"], item["signed"]).tolist()
                    for k, item in enumerate(items)]
            for i, vals in zip(r.tolist(), zip(*cols)):
                out[i] = dict(zip(names, vals))
            for key in ("fd", "count", "offset", "size", "fd2"):
                ops[key][r] = -1
        return out
