"""Kernel layers from tracepoints, on file systems made and loop-mounted in the test.

A job writes (dd conv=fsync), writes without syncing and runs `sync` (so a kworker writes
that file back), drops the page cache and reads its file back, while another process
writes on the same file system. Checked against bpftrace on the same run: the job's
ext4/xfs events sit inside its POSIX calls (same thread, inside their time), their counts
per process equal the kernel's, its block requests on the loop device carry the kernel's
bytes, the kworker's writeback of the job's file is the job's (args.async = 1) and nothing
of the other process is in the trace. The report puts them under POSIX without adding
their bytes to the job's.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from datacrumbs.probes import kernel_sets
from datacrumbs.probes.catalog import builtin_sets
from datacrumbs.probes.document import build_document, write_document
from datacrumbs.probes.schema import schema_problem
from datacrumbs.report.merge import summarize
from datacrumbs.tracer import klayers
from fixtures.tracing import Bpftrace, trace_command

KERNEL_CATS = {"EXT4", "XFS", "IOMAP", "FILEMAP", "WRITEBACK", "JBD2", "BLOCK", "IO_URING"}
MiB = 1 << 20


@contextlib.contextmanager
def loop_fs(tmp_path: Path, fstype: str):
    """A fresh ``fstype`` file system in a sparse file, loop-mounted; (mount, st_dev)."""
    img, mnt = tmp_path / f"{fstype}.img", tmp_path / f"mnt-{fstype}"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate((320 if fstype == "xfs" else 128) * MiB)     # mkfs.xfs wants >= 300 MiB
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}[fstype]
    subprocess.run([*mkfs, str(img)], check=True, capture_output=True, timeout=120)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True, capture_output=True, timeout=60)
        try:
            mnt.chmod(0o777)
            yield mnt, os.stat(mnt).st_dev
        finally:
            for _ in range(50):
                if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)


@contextlib.contextmanager
def other_writer(path: Path):
    """Another process writing and syncing ``path`` until the with-block ends."""
    code = ("import os, sys, time\n"
            "stop = sys.argv[1] + '.stop'\n"
            "while not os.path.exists(stop):\n"
            "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
            "    os.write(fd, b'x' * 4096); os.fsync(fd); os.close(fd)\n"
            "    time.sleep(0.02)\n")
    proc = subprocess.Popen([sys.executable, "-I", "-c", code, str(path)])
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield proc
    finally:
        Path(str(path) + ".stop").touch()
        proc.wait(timeout=30)


def job_script(mnt: Path) -> list[str]:
    return ["sh", "-c", f"""
dd if=/dev/zero of={mnt}/job bs=64k count=64 conv=fsync 2>/dev/null
dd if=/dev/zero of={mnt}/lazy bs=64k count=16 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
dd if={mnt}/job of=/dev/null bs=64k 2>/dev/null
"""]


def exact_events(trace: Path) -> list[dict]:
    """Complete events with ts and dur as exact decimals (a float loses the ns)."""
    with gzip.open(trace, "rt") as f:
        return [r for r in (json.loads(line, parse_float=Decimal) for line in f
                            if line.startswith("{")) if r.get("ph") == "X"]


def process_names(trace: Path) -> dict[int, str]:
    with gzip.open(trace, "rt") as f:
        return {r["pid"]: r["args"]["name"] for r in (json.loads(line) for line in f
                                                       if line.startswith("{"))
                if r.get("ph") == "M" and r.get("name") == "process_name"}


def file_names(trace: Path) -> dict[str, str]:
    with gzip.open(trace, "rt") as f:
        return {r["args"]["value"]: r["args"]["name"] for r in (json.loads(line) for line in f
                                                                if line.startswith("{"))
                if r.get("ph") == "M" and r.get("name") == "FH"}


def kernel_dev(st_dev: int) -> int:
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def inside(ev: dict, calls: list[dict]) -> dict | None:
    """The call of ``calls`` (same thread) whose time holds the instant ``ev``."""
    for c in calls:
        if c["ts"] <= ev["ts"] <= c["ts"] + c["dur"]:
            return c
    return None


def run_job(tmp_path, mnt: Path, st_dev: int, fs_set: str, write_op: str, sync_op: str):
    """The job under trace, the other writer beside it, bpftrace counting."""
    dev = kernel_dev(st_dev)
    fs = fs_set.split("-")[1]
    program = (
        f"tracepoint:{fs}:{write_op} /args->dev == {dev}/ {{ @w[pid] = count(); }} "
        f"tracepoint:{fs}:{sync_op} /args->dev == {dev}/ {{ @s[pid] = count(); }} "
        f"tracepoint:block:block_rq_issue /args->dev == {dev}/ {{ @b[pid] = sum(args->bytes); }} "
        f'tracepoint:block:block_rq_issue /args->dev == {dev} && strncmp(comm, "kworker", 7) == 0/ '
        f"{{ @kw = sum(args->bytes); }}")
    (mnt / "job").touch()       # "lazy" is new: a file truncated and rewritten (ext4's
                                # auto_da_alloc) would be flushed at close by dd itself
    with other_writer(mnt / "other") as other:
        time.sleep(0.2)
        with Bpftrace(program) as bt:
            _proc, trace, summary = trace_command(
                tmp_path, job_script(mnt), sets=("posix", fs_set, "block"), options=("-q",),
                timeout=300)
    return trace, summary, bt.counts, other.pid


def check_job(trace, summary, counts, other_pid, mnt, st_dev, cat, write_op, sync_op):
    assert not summary["probes_refused"], summary["probes_refused"]
    devtext = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    events = exact_events(trace)
    job_pids = {e["pid"] for e in events if e["cat"] == "POSIX"}
    by_tid: dict = {}
    for e in events:
        if e["cat"] == "POSIX":
            by_tid.setdefault((e["pid"], e["tid"]), []).append(e)
    fs_events = [e for e in events if e["cat"] == cat and e["args"].get("dev") == devtext]
    own = [e for e in fs_events if "async" not in e["args"]]
    job_ino = os.stat(mnt / "job").st_ino
    lazy_ino = os.stat(mnt / "lazy").st_ino

    # nested: the write path's events inside the job's write calls, the sync inside fsync
    for name, call in ((write_op, "write"), (sync_op, "fsync")):
        mine = [e for e in own if e["name"] == name]
        assert mine, name
        for e in mine:
            c = inside(e, by_tid.get((e["pid"], e["tid"]), []))
            assert c is not None and c["name"] == call, (name, e, c)
        # as many as the kernel saw, per process (bpftrace filtered by pid and device)
        per_pid = {}
        for e in mine:
            per_pid[e["pid"]] = per_pid.get(e["pid"], 0) + 1
        key = "w" if name == write_op else "s"
        if key == "w":
            per_write = per_pid
        assert per_pid == {p: counts[f"{key}[{p}]"] for p in per_pid}, (name, per_pid, counts)
        assert all(p in job_pids for p in per_pid)
    # 64 + 16 blocks of 64 KiB written through the page cache, 1 fsync
    assert sum(1 for e in own if e["name"] == write_op) == 80
    assert sum(e["args"].get("size", 0) for e in own if e["name"] == write_op) == 80 * 64 * 1024
    assert {e["args"]["ino"] for e in own if e["name"] == write_op} == {job_ino, lazy_ino}
    assert sum(1 for e in own if e["name"] == sync_op) == 1

    # every event the job's own threads caused on this file system is inside a call of
    # theirs (the kernel threads' work, async, has its own tid), but sync(2)'s: the posix
    # set does not trace sync, so the `sync` process's file system work has no call above
    names = process_names(trace)
    outside = [e for e in own if inside(e, by_tid.get((e["pid"], e["tid"]), [])) is None]
    assert outside and all(names.get(e["pid"]) == "sync" for e in outside), outside[:5]

    # kernel threads' work on the job's files: the job's process, args.async = 1
    late = [e for e in fs_events if e["args"].get("async") == 1]
    assert late, "no writeback of the job's files by a kernel thread"
    for e in late:
        assert e["pid"] in job_pids and (e["pid"], e["tid"]) not in by_tid, e
        assert e["args"]["ino"] in (job_ino, lazy_ino), e
    assert lazy_ino in {e["args"]["ino"] for e in late}

    # block requests on the loop device issued in the job's processes: the kernel's bytes
    issued = {}
    for e in events:
        if e["name"] == "block_rq_issue" and e["args"].get("dev") == devtext:
            issued[e["pid"]] = issued.get(e["pid"], 0) + e["args"]["size"]
    assert issued == {p: counts[f"b[{p}]"] for p in issued}, (issued, counts)
    assert set(issued) <= job_pids
    done = sum(e["args"]["count"] for e in events if e["name"] == "block_rq_complete"
               and e["args"].get("dev") == devtext and "async" not in e["args"])
    # requests a kworker issued to write the job's "lazy" file back (sync): the job's, async,
    # with the file's inode, at most what bpftrace saw kworkers issue on the device
    flushed = [e for e in events if e["name"] == "block_rq_complete"
               and e["args"].get("dev") == devtext and e["args"].get("async") == 1]
    # 4 MiB synced, 4 MiB read. On a busy machine writeback may start on "job" before dd's
    # fsync (CI: 0.75 MiB of it), and a kworker then writes that part: async, the job's
    job_flushed = sum(e["args"]["count"] for e in flushed if e["args"]["ino"] == job_ino)
    assert sum(issued.values()) + job_flushed >= 8 * MiB and done + job_flushed >= 8 * MiB
    for e in flushed:
        assert e["pid"] in job_pids and (e["pid"], e["tid"]) not in by_tid, e
        assert e["args"]["ino"] in (job_ino, lazy_ino), e
    lazy_bytes = sum(e["args"]["count"] for e in flushed if e["args"]["ino"] == lazy_ino)
    assert 1 * MiB <= lazy_bytes <= sum(e["args"]["count"] for e in flushed) <= counts["kw"]

    # the other process is not in the trace, nor its file's inode
    other_ino = os.stat(mnt / "other").st_ino
    assert counts.get(f"w[{other_pid}]", 0) > 0, "the other writer did not run beside the job"
    assert all(e["pid"] != other_pid for e in events)
    # ... but the job's drop_caches evicts the other file's pages, in the job's write call
    files = file_names(trace)
    for e in events:
        if e["cat"] in KERNEL_CATS and e["args"].get("ino") == other_ino:
            c = inside(e, by_tid.get((e["pid"], e["tid"]), []))
            assert "async" not in e["args"] and c is not None and c["name"] == "write" \
                and files[c["args"]["fhash"]] == "/proc/sys/vm/drop_caches", e
    print(f"{cat}: {len(own)} events in the job's tasks, {len(late)} async for its files; "
          f"{write_op} per pid {per_write}, bpftrace the same; block bytes issued {issued} "
          f"(bpftrace the same), completed {done}; written back by kworkers for the job: "
          f"{lazy_bytes} of the lazy file (kworkers issued {counts['kw']}); other writer's {write_op}: "
          f"{counts.get(f'w[{other_pid}]', 0)} (none in the trace)")
    return events


def check_report(trace: Path, tmp_path: Path, events: list[dict], cat: str, write_op: str):
    s = summarize([trace], jobs=1)
    layers = {lay["layer"]: lay for lay in s["layers"]}
    kernel = [e for e in events if e["cat"] in KERNEL_CATS]
    assert layers["kernel"]["operations"] == len(kernel)
    assert layers["POSIX"]["operations"] == sum(1 for e in events if e["cat"] == "POSIX")
    # exclusive POSIX time: less the kernel spans (block requests) inside its calls
    by_tid: dict = {}
    for e in events:
        if e["cat"] == "POSIX":
            by_tid.setdefault((e["pid"], e["tid"]), []).append(e)
    held = Decimal(0)
    for e in kernel:
        if e["dur"] > 0:
            for c in by_tid.get((e["pid"], e["tid"]), []):
                if c["ts"] <= e["ts"] and e["ts"] + e["dur"] <= c["ts"] + c["dur"]:
                    held += e["dur"]
                    break
    lay = layers["POSIX"]
    assert abs(Decimal(str(lay["inclusive_us"])) - Decimal(str(lay["exclusive_us"])) - held) < 1
    assert layers["kernel"]["exclusive_us"] == layers["kernel"]["inclusive_us"]
    chains = [[c["op"] for c in ch] for ch in s["layer_breakdown"]]
    assert any(ch[0] == "POSIX/write" and ch[1].split("/")[0] in KERNEL_CATS for ch in chains), chains
    # the HTML page shows the same layers and chains
    from datacrumbs.report.html import render
    page = render(s)
    layers_html = page[page.index('<h2 id="sec-layers">'):page.index('<h2 id="sec-files">')]
    assert "<td>kernel</td>" in layers_html and "<td>POSIX</td>" in layers_html
    assert f"POSIX/write " in layers_html and f"&rarr; {cat}/" in layers_html
    # kernel bytes are never job bytes: the same totals without the kernel events
    stripped = tmp_path / "posix-only.pfw.gz"
    with gzip.open(trace, "rt") as f, gzip.open(stripped, "wt") as out:
        for line in f:
            if not (line.startswith("{") and json.loads(line).get("cat") in KERNEL_CATS):
                out.write(line)
    t = summarize([stripped], jobs=1)["totals"]
    for k in ("bytes", "bytes_read", "bytes_written"):
        assert s["totals"][k] == t[k], k
    writes = sum(e["args"].get("size", 0) for e in events
                 if e["name"] == "write" and str(e.get("pid")) and e["args"].get("ftype") == "reg")
    assert s["totals"]["bytes_written"] <= writes + 2      # no kernel bytes added


pytestmark = pytest.mark.ebpf


def test_ext4_layer_under_posix(site, tmp_path, bpf_object, tracefs):
    with loop_fs(tmp_path, "ext4") as (mnt, st_dev):
        trace, summary, counts, other = run_job(tmp_path, mnt, st_dev, "kernel-ext4",
                                                "ext4_da_write_begin", "ext4_sync_file_enter")
        events = check_job(trace, summary, counts, other, mnt, st_dev, "EXT4",
                           "ext4_da_write_begin", "ext4_sync_file_enter")
        check_report(trace, tmp_path, events, "EXT4", "ext4_da_write_begin")


def test_xfs_layer_under_posix(site, tmp_path, bpf_object, tracefs):
    assert shutil.which("mkfs.xfs"), "xfsprogs is in scripts/deps.sh"
    with loop_fs(tmp_path, "xfs") as (mnt, st_dev):
        trace, summary, counts, other = run_job(tmp_path, mnt, st_dev, "kernel-xfs",
                                                "xfs_file_buffered_write", "xfs_file_fsync")
        events = check_job(trace, summary, counts, other, mnt, st_dev, "XFS",
                           "xfs_file_buffered_write", "xfs_file_fsync")
        check_report(trace, tmp_path, events, "XFS", "xfs_file_buffered_write")


# -- the sets --------------------------------------------------------------------------


def test_shipped_sets_are_this_nodes_tracepoints(tracefs):
    """The built-in kernel-* sets are what the generator makes from this kernel."""
    made = kernel_sets.kernel_sets(tracefs)
    shipped = builtin_sets()
    assert set(made) == {f"kernel-{s}" for s in kernel_sets.SUBSYSTEMS} | {"kernel"}
    for name, data in made.items():
        assert list(shipped[name].probes) == data["probes"], name
        assert schema_problem(data, "set") is None
    targets = {p["target"] for p in made["kernel"]["probes"]}
    on_node = {f"{d.parent.name}:{d.name}" for s in kernel_sets.SUBSYSTEMS
               for d in (tracefs / "events" / s).glob("*") if (d / "format").is_file()}
    assert targets == on_node
    # the block set's request probes are kernel-block's, so the two sets combine
    block = {p["target"]: p for p in shipped["block"].probes}
    kb = {p["target"]: p for p in shipped["kernel-block"].probes}
    assert all(kb[t] == p for t, p in block.items())
    ext4 = {p["id"]: p for p in shipped["kernel-ext4"].probes}
    assert ext4["ext4.ext4_da_write_begin"]["bytes"] == "field:len"
    assert ext4["ext4.ext4_da_write_begin"]["fields"] == {"ino": "ino", "dev": "dev",
                                                          "offset": "pos"}
    assert shipped["kernel-filemap"].probes[0]["fields"]["ino"] == "i_ino"


def test_fields_only_on_tracepoints_and_known_roles():
    p = {"id": "x.y", "kind": "syscall", "target": "read", "category": "POSIX", "args": {},
         "bytes": None, "fields": {"ino": "ino"}}
    assert "only tracepoint probes have 'fields'" in schema_problem(
        {"name": "a", "description": "", "probes": [p]}, "set")
    p.update(kind="tracepoint", target="ext4:ext4_sync_file_enter", fields={"inode": "ino"})
    assert "not one of ino, dev" in schema_problem({"name": "a", "description": "",
                                                     "probes": [p]}, "set")


def test_only_writes_make_an_inode_the_jobs():
    assert klayers.writes_inode("ext4_da_write_begin")
    assert klayers.writes_inode("writeback_dirty_folio")
    assert klayers.writes_inode("xfs_file_buffered_write")
    for name in ("ext4_evict_inode", "ext4_read_folio", "mm_filemap_add_to_page_cache",
                 "writeback_single_inode", "ext4_es_lookup_extent_enter"):
        assert not klayers.writes_inode(name), name


def test_missing_field_is_refused_not_fatal(site, tmp_path, bpf_object, tracefs):
    """A probe naming a field its tracepoint lacks is refused with the reason; the rest run."""
    probes = [
        {"id": "ext4.bad", "kind": "tracepoint", "target": "ext4:ext4_sync_file_enter",
         "category": "EXT4", "args": {}, "bytes": None, "fields": {"ino": "no_such_field"}},
        {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"},
    ]
    path = write_document(tmp_path / "probes.json.gz", build_document(
        probes, owner_uid=0, owner_user="root", sets=["test"]))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([str(Path(sys.executable).with_name("datacrumbs")), "trace", "-q",
                           "-o", str(out), "--probes", str(path), "--", "true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    assert len(summary["probes_refused"]) == 1
    assert "has no field no_such_field" in json.dumps(summary["probes_refused"])


def test_raw_tracepoints_where_the_call_leads_to_the_inode(tracefs):
    """Probes asking only for the inode and device take them from the trace call's own
    arguments (vmlinux BTF) as raw tracepoints; those reading bytes or offsets keep their
    perf record."""
    ext4 = {p["target"]: p for p in builtin_sets()["kernel-ext4"].probes}
    jbd2 = {p["target"]: p for p in builtin_sets()["kernel-jbd2"].probes}
    wb = {p["target"]: p for p in builtin_sets()["kernel-writeback"].probes}
    xfs = {p["target"]: p for p in builtin_sets()["kernel-xfs"].probes}
    assert klayers.raw_way(ext4["ext4:ext4_sync_file_enter"]) == (0, klayers.RAW_HOW["file"])
    assert klayers.raw_way(ext4["ext4:ext4_evict_inode"]) == (0, klayers.RAW_HOW["inode"])
    assert klayers.raw_way(xfs["xfs:xfs_file_fsync"]) == (0, klayers.RAW_HOW["xfs_inode"])
    assert klayers.raw_way(wb["writeback:writeback_single_inode"]) == (0, klayers.RAW_HOW["inode"])
    assert klayers.raw_way(wb["writeback:writeback_dirty_folio"]) is None  # a page index
    assert klayers.raw_way(jbd2["jbd2:jbd2_start_commit"]) == (0, klayers.RAW_DEV["journal_s"])
    assert klayers.raw_way(ext4["ext4:ext4_da_write_begin"]) is None        # bytes, offset


def test_most_kernel_probes_attach_as_raw_tracepoints(bpf_object, tracefs):
    from datacrumbs.tracer.engine import Engine
    from datacrumbs.tracer.scope import Scope

    probes = list(builtin_sets()["kernel-ext4"].probes)
    raw = sum(1 for p in probes if klayers.wants_ktp(p) and klayers.raw_way(p) is not None)
    with Engine(probes, Scope.for_pids([os.getpid()]), bpf_object=bpf_object) as eng:
        assert eng.attach().refused == []
        progs = {p["id"]: p.get("name") for p in json.loads(subprocess.run(
            ["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
            check=True).stdout)}
        links = json.loads(subprocess.run(["bpftool", "link", "list", "-j"],
                                          capture_output=True, text=True, check=True).stdout)
        by_prog: dict = {}
        for link in links:
            name = progs.get(link.get("prog_id"))
            by_prog[(name, link.get("type"))] = by_prog.get((name, link.get("type")), 0) + 1
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert raw >= 80
    assert by_prog.get(("dc_raw_ktp", "raw_tracepoint"), 0) \
        + by_prog.get(("dc_raw_ktp1", "raw_tracepoint"), 0) >= raw
    perf = by_prog.get(("dc_ktp", "perf_event"), 0)
    assert perf == sum(1 for p in probes if klayers.wants_ktp(p)) - raw
    print(f"kernel-ext4: {raw} raw, {perf} perf tracepoints, detached in {took:.1f} s")
