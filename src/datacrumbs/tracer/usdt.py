"""USDT probes in the engine: one uprobe per note site, with the note's semaphore.

A probe of kind ``usdt`` names ``provider:name`` in a file (``library``) and, in a
signed document, its ``sites`` as the signing service read them. Each site is
attached only if the file still has that very note (same provider, name, pc,
semaphore and argument spec): a file replaced since signing is refused, not probed
at whatever its offsets now hold. A probe without sites (a catalog probe checked on
this host) takes every site of its note.

Each site gets a uprobe running ``dc_usdt`` with the site's key as BPF cookie, and
``usdt_specs[key]`` says which probe it is and how to read its first DC_USDT_ARGS
arguments. The uprobe is attached with the semaphore's file offset as its
``ref_ctr_offset``, so the kernel counts the semaphore up in every process mapping
the file (now and later) while it is attached, and code guarded by
``if (PROVIDER_NAME_ENABLED())`` runs.

Events (see datacrumbs.h): ``ret``, ``count``, ``offset`` and ``handle`` carry
arguments 0..3, ``flags`` bit i says argument i was read, bits 8..15 the note's
argument count. ``event_args`` turns them into trace args.
"""

from __future__ import annotations

import logging
import struct

from ..probes import usdt as notes_mod
from . import libbpf
from .libbpf import AttachFailed
from .scalars import sized

log = logging.getLogger("datacrumbs.usdt")

PROGRAM = "dc_usdt"
ARGS = 4                                       # DC_USDT_ARGS
MAX_SITES = 4096                               # DC_USDT_SITES
_ARG = struct.Struct("<qHBBBB2x")              # struct dc_usdt_arg
SPEC = struct.Struct("<II" + "qHBBBB2x" * ARGS)  # struct dc_usdt_spec
# event fields carrying arguments 0..3
EVENT_FIELDS = ("ret", "count", "offset", "handle")


class Refused(Exception):
    """This probe cannot attach here; the message says why."""


def pack_spec(probe: int, args_text: str) -> bytes:
    """usdt_specs value of one site: the probe and its decoded argument specs."""
    args = notes_mod.parse_args(args_text)
    fields = []
    for a in (args + [notes_mod.Arg("")] * ARGS)[:ARGS]:
        fields += [a.value, a.reg, a.kind, a.size, 1 if a.signed else 0, 1 if maybe_pointer(a)
                   else 0]
    return SPEC.pack(probe, min(len(args), notes_mod.MAX_ARGS), *fields)


def maybe_pointer(a: notes_mod.Arg) -> bool:
    """An argument whose text is worth reading: 8 bytes, unsigned, from a register or
    memory (how <sys/sdt.h> passes a pointer; a long is signed, -8@)."""
    return a.kind in (notes_mod.ARG_REG, notes_mod.ARG_MEM) and a.size == 8 and not a.signed


def file_notes(path: str) -> list[notes_mod.Note]:
    try:
        with open(path, "rb") as f:
            return notes_mod.read_notes(f)
    except (OSError, ValueError, notes_mod.UsdtError) as exc:
        raise Refused(f"cannot read the USDT notes of {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pyelftools raises many kinds on a bad file
        raise Refused(f"{path} is not a readable ELF file ({type(exc).__name__})") from None


def sites(probe: dict, path: str) -> list[notes_mod.Note]:
    """The notes this probe attaches at: its signed sites that the file still has, or
    every site of its target when the probe lists none."""
    target = probe.get("target")
    here = [n for n in file_notes(path) if n.target == target]
    if not here:
        raise Refused(f"{path} has no USDT probe {target}")
    wanted = probe.get("sites")
    if not wanted:
        # the converter reads the argument types from the probe's sites
        probe["sites"] = notes_mod.sites_of(here)
        return here[:notes_mod.MAX_SITES]
    by_site = {(n.pc, n.semaphore, n.args): n for n in here}
    found = [by_site[k] for k in ((s.get("pc"), s.get("semaphore"), s.get("args"))
                                  for s in wanted if isinstance(s, dict)) if k in by_site]
    if not found:
        raise Refused(f"{path} no longer has the USDT probe {target} where it was signed "
                      "(the file changed since): sign a new probes file")
    return found


def attach(engine, indexes: list[int], report, library_of) -> None:
    """Attach every site of the usdt probes ``indexes`` of ``engine``; each probe is
    attached (all its sites) or refused with its reason."""
    obj = engine._obj
    specs = obj.map_fd("usdt_specs")
    key = 0
    for i in indexes:
        probe = engine.probes[i]
        links = []
        try:
            path = library_of(probe.get("library"))
            if path is None:
                raise Refused(f"file {probe.get('library')} not found on this host")
            found = sites(probe, path)
            if key + len(found) > MAX_SITES:
                raise Refused(f"more than {MAX_SITES} USDT sites in one trace")
            for note in found:
                libbpf.map_update(specs, struct.pack("<I", key), pack_spec(i, note.args))
                try:
                    links.append(obj.attach_uprobe(PROGRAM, path, note.pc, key,
                                                   ref_ctr_offset=note.semaphore))
                except AttachFailed as exc:
                    raise Refused(f"uprobe at {path}+{note.pc:#x} refused: {exc}") from None
                key += 1
        except (Refused, libbpf.LibbpfError) as exc:
            for link in links:
                link.destroy()
            report.refused.append((probe, str(exc)))
            continue
        engine._links.extend(links)
        report.attached.append(probe)
        log.info("usdt %s: %d site(s) in %s", probe.get("target"), len(found), path)


def event_args(probe: dict, ev, strings: dict | None = None) -> dict:
    """Trace args of one USDT event (an EVENT_DTYPE row): ``provider``, ``argN`` for
    every argument read (an integer of the spec's size and sign; a pointer is
    its address), ``args_read`` how many
    of the note's ``nargs`` arguments were read (the event carries the first four), and
    ``argN_str`` the text a pointer argument points to (``strings``: {N: text} the kernel
    sent for the event; kept only when it is printable text)."""
    flags = int(ev["flags"])
    nargs = (flags >> 8) & 0xFF
    specs = notes_mod.parse_args(_first_args(probe))
    out = {"provider": str(probe.get("target", "")).split(":", 1)[0], "nargs": nargs}
    read = 0
    for n, name in enumerate(EVENT_FIELDS):
        if not flags & (1 << n):
            continue
        read += 1
        size = specs[n].size if n < len(specs) else 8
        signed = specs[n].signed if n < len(specs) else False
        out[f"arg{n}"] = sized(int(ev[name]), size, signed)
        text = (strings or {}).get(n)
        if text is not None and text.isprintable():
            out[f"arg{n}_str"] = text
    out["args_read"] = read
    return out


def _first_args(probe: dict) -> str:
    """The argument spec of the probe's first site: every site of one note has the
    same types (sizes and signs), only the registers differ."""
    sites_ = probe.get("sites")
    if sites_ and isinstance(sites_[0], dict):
        return str(sites_[0].get("args", ""))
    return ""
