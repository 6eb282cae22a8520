"""One probe per function: glibc's fopen and fopen64 are one address, so one call is one event.

Documents built locally (check_probes) and by the signing service (resolve) merge
the set's uprobes that reach one function of one library file into the first, with
``aliases``; the engine never attaches two probes to one (file, address) even when a
document lists both. Counts are checked against a C program whose calls we know.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from datacrumbs.probes import SchemaViolation
from datacrumbs.probes.catalog import builtin_sets, select_probes
from datacrumbs.probes.document import build_document, read_document, write_document
from datacrumbs.probes.host_check import check_probes, merge_aliases
from datacrumbs.probes.schema import schema_problem
from datacrumbs.signing.client import SigningRefused, request_signature
from datacrumbs.signing.policy import Caller, PolicyRefused, parse_policy
from datacrumbs.tracer.engine import Engine
from datacrumbs.tracer.scope import Scope
from fixtures.tracing import collect
from test_signing_service import keystore, service, start_service, write_policy  # noqa: F401
from workloads import daemon_readback as rb

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
DATACRUMBS = str(Path(sys.executable).with_name("datacrumbs"))

# fopen once, fopen64 once, each file closed once: two opens, two closes, whatever
# names the probes have. It waits for a byte on stdin (EOF also releases it).
FOPENS_C = r"""
#define _LARGEFILE64_SOURCE
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	char c;
	FILE *a, *b;

	if (argc != 3 || read(0, &c, 1) < 0)
		return 2;
	a = fopen(argv[1], "w");
	b = fopen64(argv[2], "w");
	if (!a || !b)
		return 1;
	fclose(a);
	fclose(b);
	return 0;
}
"""


def _uprobe(pid: str, target: str, library: str = LIBC) -> dict:
    return {"id": pid, "kind": "uprobe", "target": target, "library": library,
            "category": "STDIO", "args": {"path": 0}, "bytes": None}


@pytest.fixture(scope="module")
def fopens_bin(shared_dir) -> Path:
    """FOPENS_C built with gcc; the program really calls fopen64 (not fopen under it)."""
    src = shared_dir / "fopens.c"
    src.write_text(FOPENS_C)
    out = shared_dir / "fopens"
    subprocess.run([shutil.which("gcc"), "-O0", "-o", str(out), str(src)], check=True,
                   capture_output=True, timeout=120)
    out.chmod(0o755)
    imports = subprocess.run(["nm", "-D", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert "fopen64@" in imports and " fopen@" in imports
    return out


# ---- building documents: local and signed -------------------------------------------------


def test_local_check_merges_fopen64_into_fopen():
    """The stdio set names fopen then fopen64: one probe fopen, recording fopen64."""
    merged = []
    kept, dropped = check_probes(select_probes(builtin_sets(), ["stdio"]), merged=merged)
    assert dropped == []
    fopens = [p for p in kept if p["target"] in ("fopen", "fopen64")]
    assert [(p["id"], p["target"], p.get("aliases")) for p in fopens] == \
        [("stdio.fopen", "fopen", ["fopen64"])]
    assert [(a["id"], b["id"]) for a, b in merged] == [("stdio.fopen64", "stdio.fopen")]
    # every other probe is its own function and stays as it was
    assert sum("aliases" in p for p in kept) == 1


def test_the_first_in_set_order_is_kept_and_sets_are_not_changed():
    probes = [_uprobe("s.b", "fopen64", "libc.so.6"), _uprobe("s.a", "fopen", "libc.so.6"),
              _uprobe("s.c", "_IO_fopen", "libc.so.6"), _uprobe("s.w", "fwrite", "libc.so.6")]
    before = copy.deepcopy(probes)
    kept, _ = check_probes(probes)
    assert [(p["id"], p.get("aliases")) for p in kept] == \
        [("s.b", ["fopen", "_IO_fopen"]), ("s.w", None)]
    assert probes == before, "the catalog's own probes must not be changed"


def test_another_path_to_the_same_file_is_the_same_function(tmp_path):
    """A symlinked copy of the name is still libc's inode: merged too."""
    link = tmp_path / "libc.so.6"
    link.symlink_to(LIBC)
    kept, _ = check_probes([_uprobe("s.a", "fopen"), _uprobe("s.b", "fopen64", str(link))])
    assert [(p["id"], p.get("aliases")) for p in kept] == [("s.a", ["fopen64"])]


def test_merge_keeps_probes_it_cannot_place():
    """No address known: nothing to merge on, the probes stay apart."""
    probes = [_uprobe("s.a", "fopen"), _uprobe("s.b", "fopen64")]
    kept, merged = merge_aliases(probes, lambda p: None)
    assert [p["id"] for p in kept] == ["s.a", "s.b"] and merged == []


def test_aliases_are_a_bounded_uprobe_only_document_field():
    doc = build_document([_uprobe("stdio.fopen", "fopen") | {"aliases": ["fopen64"]}],
                         owner_uid=0, owner_user="root", sets=["stdio"])
    assert doc["probes"][0]["aliases"] == ["fopen64"]

    def problem(**change):
        bad = copy.deepcopy(doc)
        bad["probes"][0].update(change)
        return schema_problem(bad)

    assert problem(aliases=[f"f{i}" for i in range(17)]) == \
        "probes/0/aliases: must have at most 16 items"
    assert problem(aliases=["no spaces"]) == \
        "probes/0/aliases/0: does not match the pattern for uprobe targets"
    assert problem(aliases=[]) == "probes/0/aliases: must have at least 1 item"
    syscall = {"id": "posix.write", "kind": "syscall", "target": "write", "category": "POSIX",
               "args": {}, "bytes": None, "aliases": ["pwrite64"]}
    bad = copy.deepcopy(doc)
    bad["probes"][0] = syscall
    assert schema_problem(bad) == "probes/0/kind: must be 'uprobe': only uprobe probes have " \
                                  "'aliases'"
    # probe sets cannot declare aliases: only the document builders merge
    assert "not allowed" in schema_problem(
        {"name": "s", "description": "s", "probes": [doc["probes"][0]]}, "set")
    with pytest.raises(SchemaViolation, match="lists its own target among its aliases"):
        build_document([_uprobe("stdio.fopen", "fopen") | {"aliases": ["fopen"]}],
                       owner_uid=0, owner_user="root", sets=["stdio"])


def test_signed_document_has_one_probe_with_aliases(site, service):
    doc = request_signature(["stdio"], socket_path=site.socket_path).document
    fopens = [p for p in doc["probes"] if {p["target"], *p.get("aliases", ())} & {"fopen",
                                                                                  "fopen64"}]
    assert [(p["id"], p["target"], p["aliases"]) for p in fopens] == \
        [("stdio.fopen", "fopen", ["fopen64"])]
    assert "stdio.fopen64" not in {p["id"] for p in doc["probes"]}


@pytest.mark.parametrize("denied, words", [
    ("fopen64", "target 'fopen64' is on the signing policy's deny list"),
    # not a name of the set: the merged probe is still judged by its address
    ("_IO_fopen", "target 'fopen' (the same function as '_IO_fopen') is on the signing"),
])
def test_policy_refuses_a_denied_alias_of_the_merged_probe(site, service, denied, words):
    write_policy(site, '[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                       f'[deny]\ntargets = ["{denied}"]\n')
    with pytest.raises(SigningRefused) as info:
        request_signature(["stdio"], socket_path=site.socket_path)
    assert words in str(info.value)


def test_policy_judges_every_alias_a_probe_carries():
    """Even without the library's addresses, a denied name among the aliases is refused."""
    policy = parse_policy('[defaults]\nallow_kinds = ["uprobe"]\nallow_sets = ["*"]\n'
                          '[deny]\ntargets = ["fopen64"]\n', source="test", default_max_days=7)
    probe = _uprobe("stdio.fopen", "fopen") | {"aliases": ["fopen64"]}
    with pytest.raises(PolicyRefused, match="the same function as 'fopen64'"):
        policy.check(Caller(0, "root", 0), sets=["stdio"], probes=[probe], validity_days=1,
                     groups=[])
    del probe["aliases"]
    policy.check(Caller(0, "root", 0), sets=["stdio"], probes=[probe], validity_days=1,
                 groups=[])


# ---- the engine: one uprobe per (file, address) ------------------------------------------


@pytest.mark.parametrize("multi", [True, False], ids=["uprobe_multi", "per-probe"])
@pytest.mark.parametrize("second", ["fopen64", "fopen@@GLIBC_2.2.5", "symlink"])
def test_engine_attaches_one_probe_per_function(bpf_object, tracefs, fopens_bin, workloads,
                                                tmp_path, caplog, multi, second):
    """A document listing fopen and fopen64 (or fopen by version, or through another
    path) still gets one uprobe there: 2 calls, 2 events, all on the first probe."""
    library = LIBC
    if second == "symlink":
        (tmp_path / "lib").mkdir()
        library = str(tmp_path / "lib" / "libc.so.6")
        os.symlink(LIBC, library)
    first = _uprobe("stdio.fopen", "fopen")
    alias = _uprobe("stdio.other", "fopen" if second == "symlink" else second, library)
    child = workloads([fopens_bin, tmp_path / "a", tmp_path / "b"])
    with caplog.at_level(logging.WARNING, logger="datacrumbs.engine"):
        with Engine([first, alias], Scope.for_pids([child.pid]), bpf_object=bpf_object,
                    uprobe_multi=multi) as eng:
            report = eng.attach()
            child.go()
            events, paths = collect(eng, [child])
    assert [p["id"] for p in report.attached] == ["stdio.fopen"] and report.refused == []
    assert report.aliased == [(alias, first)]
    assert report.warnings == [
        f"probe stdio.other (uprobe {alias['target']}) not attached: probe stdio.fopen "
        f"(uprobe fopen) reaches the same function of {LIBC}; each call is counted once, "
        "as fopen"]
    assert report.warnings[0] in caplog.text    # what the daemon's log shows
    assert events["probe"].tolist() == [0, 0]
    assert sorted(paths.values()) == [str(tmp_path / "a"), str(tmp_path / "b")]


# ---- end to end: `datacrumbs trace` with a generated and with a signed document ------------


def _trace(probes_file: Path, out: Path, argv) -> subprocess.CompletedProcess:
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    return subprocess.run([DATACRUMBS, "trace", "--probes", str(probes_file), "-o", str(out),
                           "--", *map(str, argv)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env)


def _stdio_calls(out: Path) -> tuple[Counter, list[str]]:
    """Event names counted, and the files of the fopen events, of the one trace in out."""
    traces = list(out.glob("*.pfw.gz"))
    assert len(traces) == 1, traces
    fh = {r["args"]["value"]: r["args"]["name"] for r in rb.records(traces[0])
          if r["name"] == "FH"}
    events = rb.events(traces[0])
    pid = int(traces[0].name.split("-")[2])
    assert {e["pid"] for e in events} == {pid}
    names = Counter(e["name"] for e in events)
    opened = sorted(fh.get(e["args"].get("fhash")) for e in events if e["name"] == "fopen")
    return names, opened


def _check_one_event_per_call(proc, out: Path, tmp_path: Path) -> None:
    assert proc.returncode == 0, proc.stderr
    names, opened = _stdio_calls(out)
    # the program calls fopen once and fopen64 once: two events, named as the probe
    assert names["fopen"] == 2 and names["fopen64"] == 0, names
    assert names["fclose"] == 2, names
    assert opened == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]


def test_trace_with_a_locally_generated_document(site, bpf_object, tmp_path, fopens_bin):
    doc_path = tmp_path / "stdio.json.gz"
    gen = subprocess.run([DATACRUMBS, "probes", "generate", "--set", "stdio", "-o",
                          str(doc_path)], capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    assert "stdio.fopen64 (fopen64) is the same function as stdio.fopen (fopen)" in \
        " ".join(gen.stderr.split())
    doc = read_document(doc_path)
    assert [p.get("aliases") for p in doc["probes"] if p["target"] == "fopen"] == [["fopen64"]]
    show = subprocess.run([DATACRUMBS, "probes", "show", str(doc_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert show.returncode == 0, show.stderr
    row = next(line for line in show.stdout.splitlines() if "stdio.fopen " in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[3:5] == ["fopen", "fopen64"], row      # target, then its aliases
    proc = _trace(doc_path, tmp_path / "out",
                  [fopens_bin, tmp_path / "a.txt", tmp_path / "b.txt"])
    _check_one_event_per_call(proc, tmp_path / "out", tmp_path)


def test_trace_with_a_signed_document(site, service, bpf_object, tmp_path, fopens_bin):
    signed = request_signature(["stdio"], socket_path=site.socket_path).document
    doc_path = write_document(tmp_path / "signed.json.gz", signed)
    proc = _trace(doc_path, tmp_path / "out",
                  [fopens_bin, tmp_path / "a.txt", tmp_path / "b.txt"])
    assert "unsigned" not in proc.stderr
    _check_one_event_per_call(proc, tmp_path / "out", tmp_path)


def test_trace_of_a_document_listing_both_names_still_counts_once(site, bpf_object, tmp_path,
                                                                  fopens_bin):
    """An older or hand-made document with both probes: the engine attaches one, says so."""
    probes = [_uprobe("stdio.fopen", "fopen"), _uprobe("stdio.fopen64", "fopen64"),
              _uprobe("stdio.fclose", "fclose") | {"args": {"stream": 0}}]
    doc_path = write_document(tmp_path / "both.json.gz", build_document(
        probes, owner_uid=0, owner_user="root", sets=["stdio"]))
    proc = _trace(doc_path, tmp_path / "out",
                  [fopens_bin, tmp_path / "a.txt", tmp_path / "b.txt"])
    assert "probe stdio.fopen64 (uprobe fopen64) not attached: probe stdio.fopen" in \
        " ".join(proc.stderr.split())
    _check_one_event_per_call(proc, tmp_path / "out", tmp_path)
    summary = json.loads(next((tmp_path / "out").glob("*.summary.json")).read_text())
    assert [p["id"] for p in summary["probes_attached"]] == ["stdio.fopen", "stdio.fclose"]
