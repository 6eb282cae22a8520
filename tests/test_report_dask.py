"""`datacrumbs report --dask` gives exactly the local numbers."""

from __future__ import annotations

import json

from datacrumbs.cli import run_cli
from datacrumbs.report import dask_backend, merge
from datacrumbs.report.merge import summarize
from test_report import SUB_US_NS, make_job, make_sub_us_job
from test_trace_reader import TraceBuilder


def test_dask_and_local_summaries_are_identical(tmp_path, monkeypatch):
    make_job(tmp_path / "job")
    torn = TraceBuilder(tmp_path / "job" / "trace-alice-1234-node3.pfw.gz", host="node3", member_lines=7)
    for i in range(40):
        torn.op("pwrite64", pid=9, ts=i * 3, dur=i + 1, size=512, path="/p")
    torn.write(close=False, torn_bytes=20)
    local = summarize([tmp_path / "job"], jobs=1)
    assert dask_backend.summarize([tmp_path / "job"], jobs=2) == local
    assert dask_backend.summarize([tmp_path / "job"], scheduler="synchronous") == local
    monkeypatch.setattr(merge, "SPLIT_BYTES", 1500)        # member ranges as dask tasks
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    split = dask_backend.summarize([tmp_path / "job"], jobs=2)
    assert split == dask_backend.summarize([tmp_path / "job"], jobs=2, scheduler="threads")
    # Ranges end at the last complete member, so only compressed_bytes of the torn file differ.
    assert {k: v for k, v in split.items() if k != "traces"} == \
        {k: v for k, v in local.items() if k != "traces"}
    by_path = {t["path"]: t for t in split["traces"]}
    for t in local["traces"]:
        assert (by_path[t["path"]]["members"], by_path[t["path"]]["events"],
                by_path[t["path"]]["torn_tail"]) == (t["members"], t["events"], t["torn_tail"])


def test_cli_dask_json_matches_local_json(tmp_path, capsys):
    make_job(tmp_path / "job")
    assert run_cli(["report", "--json", str(tmp_path / "local.json"), "-q", str(tmp_path / "job")]) == 0
    assert run_cli(["report", "--dask", "--json", str(tmp_path / "dask.json"), "-q",
                    str(tmp_path / "job")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "dask.json").read_text()) == \
        json.loads((tmp_path / "local.json").read_text())


def test_dask_sums_sub_microsecond_durations_like_local(tmp_path, monkeypatch):
    """Fractional durations summed as integer ns: dask's task order changes nothing."""
    d = make_sub_us_job(tmp_path / "job")
    local = summarize([d], jobs=1)
    assert local["totals"]["time_us"] == sum(SUB_US_NS.values()) / 1000
    monkeypatch.setattr(merge, "SPLIT_BYTES", 1500)
    monkeypatch.setattr(merge, "WHOLE_WHEN_BALANCED", False)  # cut even so
    split = dask_backend.summarize([d], jobs=2)
    assert {k: v for k, v in split.items() if k != "traces"} == \
        {k: v for k, v in local.items() if k != "traces"}


def test_a_distributed_cluster_gives_the_local_numbers(tmp_path):
    """A real dask.distributed cluster (a scheduler and three worker processes on this
    machine, reached by address as a remote one would be): the same numbers as local."""
    from dask.distributed import LocalCluster

    make_job(tmp_path / "job")
    local = summarize([tmp_path / "job"], jobs=1)
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        on_cluster = dask_backend.summarize_on_cluster([tmp_path / "job"],
                                                      cluster.scheduler_address)
        assert run_cli(["report", "--dask-scheduler", cluster.scheduler_address, "--json",
                        str(tmp_path / "cluster.json"), "-q", str(tmp_path / "job")]) == 0
    assert on_cluster == local
    assert json.loads((tmp_path / "cluster.json").read_text())["totals"] == local["totals"]


def test_an_unreachable_scheduler_is_one_clear_line(tmp_path, capsys):
    make_job(tmp_path / "job")
    rc = run_cli(["report", "--dask-scheduler", "tcp://127.0.0.1:1", str(tmp_path / "job")])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
