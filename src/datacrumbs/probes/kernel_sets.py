"""Built-in kernel-layer sets, generated from the I/O tracepoints a kernel has.

Kernels without kprobes still have the file system and block layers' tracepoints. This
module turns the tracepoints of ``SUBSYSTEMS`` (tracefs ``events/<system>/*/format``)
into probe sets ``kernel-<system>`` and ``kernel`` (all of them). Each tracepoint
becomes a ``kind: "tracepoint"`` probe whose ``fields`` name the record fields that
say which inode (``ino``, ``i_ino``), which device (``dev``, ``s_dev``) and where
(a byte ``pos``/``offset``/``start_pos``, a page ``index``, a 512-byte ``sector``),
and whose ``bytes`` rule reads the length of a byte range (``field:len`` beside a
byte offset, or a ``bytes`` field). ``kernel-block`` carries the ``block`` set's own
two request probes unchanged, so the two sets combine.

The shipped files were generated on the project's kernel (6.18); the daemon refuses,
with the reason, each tracepoint or field another kernel lacks, and ``probes
generate`` leaves them out when it can read tracefs. A site regenerates them for its
nodes as site sets (``override``)::

    python -m datacrumbs.probes.kernel_sets --site /etc/datacrumbs/probe-sets
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import resources
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
SUBSYSTEMS = {
    "ext4": "ext4 file system",
    "xfs": "XFS file system",
    "iomap": "iomap (the block mapping layer of XFS and others: buffered, direct I/O)",
    "filemap": "page cache (pages added, faulted, read, evicted)",
    "writeback": "writeback of dirty pages and inodes",
    "jbd2": "ext4's journal (handles, commits, checkpoints)",
    "block": "block layer (bios and requests)",
    "io_uring": "io_uring (rings, submissions, completions)",
}
_INO = ("ino", "i_ino")
_DEV = ("dev", "s_dev")
_OFFSET = ("pos", "offset", "start_pos")
_LENGTH = ("len", "length", "count")
_FIELD = re.compile(r"field:([^;]*);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")


def record_fields(text: str) -> dict[str, int]:
    """Integer fields of a tracepoint's format (name -> size), the common_* header left out."""
    out = {}
    for m in _FIELD.finditer(text):
        decl = m.group(1).split()
        if not decl or "[" in decl[-1] or decl[-1].startswith("common_"):
            continue
        off, size = int(m.group(2)), int(m.group(3))
        if size in (1, 2, 4, 8) and off <= 4095 and not decl[0].startswith("__data_loc"):
            out[decl[-1]] = size
    return out


def probe_for(system: str, event: str, fields: dict[str, int]) -> dict:
    """The probe of one tracepoint: which fields locate its work, which one is its bytes."""
    probe = {"id": f"{system}.{event}", "kind": "tracepoint", "target": f"{system}:{event}",
             "category": system.upper(), "args": {}, "bytes": None}
    where = {}
    ino = next((f for f in _INO if f in fields), None)
    dev = next((f for f in _DEV if fields.get(f) == 4), None)     # a kernel dev_t
    if ino:
        where["ino"] = ino
    if dev:
        where["dev"] = dev
    offset = next((f for f in _OFFSET if fields.get(f) == 8), None)
    if "index" in fields:
        where["page"] = "index"
    elif offset:
        where["offset"] = offset
    elif "sector" in fields and fields["sector"] == 8:
        where["sector"] = "sector"
    if fields.get("bytes") in (4, 8):
        probe["bytes"] = "field:bytes"
    elif offset:
        length = next((f for f in _LENGTH if f in fields), None)
        if length:
            probe["bytes"] = f"field:{length}"
    if where:
        probe["fields"] = where
    return probe


def _block_set_probes() -> dict[str, dict]:
    """The ``block`` set's probes by target: kernel-block reuses them as they are."""
    path = resources.files("datacrumbs") / "data" / "probe-sets" / "block.json"
    return {p["target"]: p for p in json.loads(path.read_text())["probes"]}


def kernel_sets(tracefs: Path = TRACEFS) -> dict[str, dict]:
    """``kernel-<system>`` for each subsystem this kernel has, and ``kernel`` of all."""
    block = _block_set_probes()
    sets, everything = {}, []
    for system, what in SUBSYSTEMS.items():
        folder = tracefs / "events" / system
        if not folder.is_dir():
            continue
        probes = []
        for event in sorted(p.name for p in folder.iterdir() if (p / "format").is_file()):
            target = f"{system}:{event}"
            if target in block:
                probes.append(block[target])
                continue
            fields = record_fields((folder / event / "format").read_text())
            probes.append(probe_for(system, event, fields))
        if not probes:
            continue
        name = f"kernel-{system}"
        sets[name] = {"name": name, "description": (
            f"Kernel layer: the {what} tracepoints, for the job's own tasks and for the kernel "
            "threads working on inodes the job touched (args.async = 1); each event carries "
            "its inode, device, offset and bytes where the tracepoint has them."),
            "probes": probes}
        everything.extend(probes)
    if everything:
        sets["kernel"] = {"name": "kernel", "description": (
            "Kernel layer: every file system, page cache, writeback, journal, block and io_uring "
            "tracepoint of the kernel-* sets."), "probes": everything}
    return sets


def write_sets(sets: dict[str, dict], folder: Path, *, override: bool = False) -> list[Path]:
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in sets.items():
        if override:
            data = {"name": data["name"], "description": data["description"], "override": True,
                    "probes": data["probes"]}
        path = folder / f"{name}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        out.append(path)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datacrumbs.probes.kernel_sets",
                                 description="Write the kernel-* probe sets of this node's "
                                 "tracepoints.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--builtin", type=Path, metavar="DIR",
                       help="write built-in set files (the package's data/probe-sets)")
    where.add_argument("--site", type=Path, metavar="DIR",
                       help="write site set files that replace the built-in ones (override)")
    ap.add_argument("--tracefs", type=Path, default=TRACEFS)
    a = ap.parse_args(argv)
    if not (a.tracefs / "events").is_dir():
        print(f"kernel_sets: {a.tracefs}/events is not readable (mount tracefs, run as root)",
              file=sys.stderr)
        return 1
    sets = kernel_sets(a.tracefs)
    for path in write_sets(sets, a.site or a.builtin, override=a.site is not None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
