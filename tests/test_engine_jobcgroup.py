"""Scope by the job's cgroup name (Flux sdexec: shell-<jobid>.service), against the
real kernel: the cgroup is made after the engine attached (the tracer starts in
the prolog), or before (the job started first); descendants count; another
process of the same user outside it never does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope, ScopeError, cgroup2_root, find_cgroup

from fixtures.tracing import MOVER, run_before_move, collect, remove_cgroup_tree, write_sizes

pytestmark = pytest.mark.ebpf

WRITE = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
         "args": {"fd": 0, "count": 2}, "bytes": "ret"}
V1_SYSTEMD = Path("/sys/fs/cgroup/systemd")


@pytest.fixture
def job_parent():
    """A fresh test parent in the cgroup v2 tree (the node's 'flux system instance'),
    with everything below it removed afterwards; yields (parent, unit name)."""
    root = cgroup2_root()
    tag = uuid.uuid4().hex[:10]
    parent = root / f"dctest-jobcg-{tag}"
    parent.mkdir()
    v1 = V1_SYSTEMD / f"dctest-jobcg-{tag}"
    yield parent, f"shell-dct{tag}.service"
    remove_cgroup_tree(parent, root)
    if v1.exists():
        remove_cgroup_tree(v1, V1_SYSTEMD)
    assert not parent.exists(), f"test cgroup {parent} left behind"


def _enter(cg: Path, *workloads) -> None:
    for w in workloads:
        (cg / "cgroup.procs").write_text(str(w.pid))


def test_cgroup_made_after_attach_scopes_exactly_the_job(bpf_object, tracefs, engine_io,
                                                         workloads, job_parent, user1):
    parent, name = job_parent
    n_in, n_out, n_early = 29, 17, 11
    early = workloads([engine_io, "write", "/dev/null", n_early], user=user1)
    inside = workloads([engine_io, "write", "/dev/null", n_in], user=user1)
    outside = workloads([engine_io, "write", "/dev/null", n_out], user=user1)
    with Engine([WRITE], Scope.for_cgroup_name(name), bpf_object=bpf_object) as eng:
        eng.attach()
        assert eng.job_cgroup() is None
        # before the job's cgroup exists nothing is in scope, not even its user
        early.go()
        before, _ = collect(eng, [early])
        cg = parent / name
        cg.mkdir()
        assert eng.job_cgroup() == (cg.stat().st_ino, 2)
        _enter(cg, inside)
        inside.go()
        outside.go()
        events, _ = collect(eng, [inside, outside])
        assert eng.lost() == 0
    assert len(before) == 0
    assert set(events["pid"].tolist()) == {inside.pid}, "another process of the user leaked in"
    assert events["bytes"].tolist() == write_sizes(n_in)


def test_moving_into_the_made_cgroup_renews_the_cached_decision(bpf_object, tracefs, workloads,
                                                                job_parent, tmp_path):
    """systemd forks the shell, which runs a little before it is moved into its unit."""
    import sys
    parent, name = job_parent
    n = 11
    flag = tmp_path / "written-before"
    child = workloads([sys.executable, "-c", MOVER, n, flag])
    with Engine([WRITE], Scope.for_cgroup_name(name), bpf_object=bpf_object) as eng:
        eng.attach()
        cg = parent / name
        cg.mkdir()
        run_before_move(child, flag)
        _enter(cg, child)
        child.go()
        events, _ = collect(eng, [child])
    assert set(events["pid"].tolist()) == {child.pid}
    assert events["count"].tolist() == [5] * n


def test_existing_cgroup_is_found_at_attach(bpf_object, tracefs, engine_io, workloads,
                                            job_parent, user1):
    parent, name = job_parent
    n = 23
    cg = parent / "user.slice" / name
    cg.mkdir(parents=True)
    assert find_cgroup(name) == (cg, 3)
    inside = workloads([engine_io, "write", "/dev/null", n], user=user1)
    outside = workloads([engine_io, "write", "/dev/null", n + 1], user=user1)
    _enter(cg, inside)
    with Engine([WRITE], Scope.for_cgroup_name(name), bpf_object=bpf_object) as eng:
        eng.attach()
        assert eng.job_cgroup() == (cg.stat().st_ino, 3)
        inside.go()
        outside.go()
        events, _ = collect(eng, [inside, outside])
    assert set(events["pid"].tolist()) == {inside.pid}
    assert events["bytes"].tolist() == write_sizes(n)


def test_nested_child_cgroup_is_in_scope(bpf_object, tracefs, engine_io, workloads, job_parent,
                                         user1):
    parent, name = job_parent
    n_child, n_shell = 13, 7
    child = workloads([engine_io, "write", "/dev/null", n_child], user=user1)
    shell = workloads([engine_io, "write", "/dev/null", n_shell], user=user1)
    outside = workloads([engine_io, "write", "/dev/null", 5], user=user1)
    with Engine([WRITE], Scope.for_cgroup_name(name), bpf_object=bpf_object) as eng:
        eng.attach()
        cg = parent / name
        task = cg / "task0" / "rank0"
        task.mkdir(parents=True)     # one mkdir per level: only the job's one matches
        assert eng.job_cgroup() == (cg.stat().st_ino, 2)
        _enter(task, child)
        _enter(cg, shell)
        for w in (child, shell, outside):
            w.go()
        events, _ = collect(eng, [child, shell, outside])
    assert set(events["pid"].tolist()) == {child.pid, shell.pid}
    assert events[events["pid"] == child.pid]["bytes"].tolist() == write_sizes(n_child)
    assert events[events["pid"] == shell.pid]["bytes"].tolist() == write_sizes(n_shell)


def test_same_name_in_a_v1_hierarchy_is_ignored(bpf_object, tracefs, engine_io, workloads,
                                                job_parent, user1):
    """A hybrid host makes a unit's cgroup in name=systemd (v1) too; only v2 counts."""
    parent, name = job_parent
    if not (V1_SYSTEMD / "cgroup.procs").is_file():
        pytest.fail("this host has no name=systemd v1 hierarchy at /sys/fs/cgroup/systemd")
    inside = workloads([engine_io, "write", "/dev/null", 9], user=user1)
    with Engine([WRITE], Scope.for_cgroup_name(name), bpf_object=bpf_object) as eng:
        eng.attach()
        cg = parent / name
        cg.mkdir()
        found = eng.job_cgroup()
        v1 = V1_SYSTEMD / parent.name / name
        v1.mkdir(parents=True)
        assert eng.job_cgroup() == found == (cg.stat().st_ino, 2)
        _enter(cg, inside)
        inside.go()
        events, _ = collect(eng, [inside])
    assert events["bytes"].tolist() == write_sizes(9)


@pytest.mark.parametrize("bad, why", [
    ("a/shell-1.service", "one path component"),
    ("", "one path component"),
    ("..", "one path component"),
    ("shell-1\0.service", "one path component"),
    ("x" * 250 + ".service", "at most 255 bytes"),
    ("shell-1234", "ending in .service or .scope"),
    (".service", "ending in .service or .scope"),
    (b"shell-1.service", "must be a string"),
    (None, "must be a string"),
])
def test_bad_cgroup_names_are_refused(bad, why):
    with pytest.raises(ScopeError, match=why) as info:
        Scope.for_cgroup_name(bad)
    assert "\n" not in str(info.value)


def test_good_cgroup_names():
    for name in ("shell-f2FRsNSzv.service", "job-1.scope", "x" * 247 + ".service"):
        scope = Scope.for_cgroup_name(name)
        assert (scope.kind, scope.cgroup_name, scope.follow) == ("cgroup_name", name, False)
        assert scope.describe() == f"cgroup named {name}"


@pytest.mark.parametrize("made_first", [False, True])
def test_a_name_suffix_finds_flux_sdexec_units_on_every_rank(bpf_object, tracefs, engine_io,
                                                             workloads, job_parent, user1,
                                                             made_first):
    """Flux's sdexec names the job's unit <shell>-<rank>-<f58 jobid>.service; the prolog
    knows only the job id, so the scope is the suffix -<f58 jobid>.service. A unit of
    another job whose id ends the same way but is longer does not match."""
    from datacrumbs.jobid import f58_encode
    parent, _ = job_parent
    jobid = 0x4B2000000 + int(uuid.uuid4().hex[:6], 16)
    suffix = f"-f{f58_encode(jobid)[1:]}.service"
    n = 13
    cg = parent / f"imp-shell-3{suffix}"
    other = parent / f"imp-shell-3-fX{suffix[2:]}"    # another job: "...fX<id>.service"
    inside = workloads([engine_io, "write", "/dev/null", n], user=user1)
    decoy = workloads([engine_io, "write", "/dev/null", n + 2], user=user1)
    if made_first:
        cg.mkdir()
    with Engine([WRITE], Scope.for_cgroup_name(suffix), bpf_object=bpf_object) as eng:
        eng.attach()
        other.mkdir()
        if not made_first:
            cg.mkdir()
        assert eng.job_cgroup() == (cg.stat().st_ino, 2)
        _enter(cg, inside)
        _enter(other, decoy)
        inside.go()
        decoy.go()
        events, _ = collect(eng, [inside, decoy])
    assert set(events["pid"].tolist()) == {inside.pid}
    assert events["bytes"].tolist() == write_sizes(n)
