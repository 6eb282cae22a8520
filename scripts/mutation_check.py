#!/usr/bin/env python3
"""Break each trust decision on purpose and check that at least one test notices.

For every entry of MUTATIONS below: copy the repository's src/, tests/ and pyproject.toml to a
fresh temporary directory, make one small textual replacement in one source file of that copy,
and run the entry's tests against the copy with the repository's own interpreter:

    cd <copy>; PYTHONPATH=<copy>/src <repo>/.venv/bin/python -m pytest \
        -p no:cacheprovider -x -q TESTS

The mutation is "caught by N failing tests" when pytest reports failures, "NOT CAUGHT" when the
tests still pass. The repository's files are never written: everything happens in the copy.

Before the mutations, each distinct set of tests runs once against an unmodified copy (the
baseline). Tests that already fail there (someone's work in progress) cannot judge anything:
they are deselected from that set's mutation runs and listed in the summary. A test set that
cannot run at all (collection error) makes its mutations "baseline broken".

The source changes under this script while people work, so a mutation whose text is no longer
in its file is reported as a "stale mutation" (and one whose text appears more than once as
"ambiguous"); both fail the run: update the entry.

Exit status: 0 when every mutation was caught; 1 when any was not caught, stale, ambiguous,
broken (pytest could not collect or run) or its baseline was broken; 2 for a usage error.

Adding a mutation is one entry in MUTATIONS (name, file, text, replacement, tests):

    M("plugin: digest not compared", PLUGIN,
      "if _digest(data) != digest:", "if False:", [T_PLUGIN]),

Usage:
    .venv/bin/python scripts/mutation_check.py            # all mutations
    .venv/bin/python scripts/mutation_check.py --list     # what would run
    .venv/bin/python scripts/mutation_check.py -k jobid   # names containing "jobid"
    .venv/bin/python scripts/mutation_check.py --full     # count every failing test (no -x)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class M:
    """One mutation: in ``path`` (relative to the repository) replace ``old`` by ``new``."""

    name: str
    path: str
    old: str
    new: str
    tests: list[str]  # pytest paths or node ids, relative to the repository
    bpf: bool = False  # rebuild the copy's BPF object (build/bpf) after the replacement


# ------------------------------------------------------------------------------ what to break

VERIFY = "src/datacrumbs/probes/verify.py"
JOBID = "src/datacrumbs/jobid.py"
ENVFILE = "src/datacrumbs/flux/envfile.py"
PLUGIN = "src/datacrumbs/data/flux/datacrumbs.py"

T_VERIFY = "tests/test_verify_tamper.py"
T_JOBID = "tests/test_jobid.py"
T_JOBINFO = "tests/test_jobinfo.py"
T_ENVFILE = "tests/test_envfile.py"
T_UNITS_ARGV = "tests/test_units.py::test_probe_path_reaches_daemon_as_one_argument"
T_PLUGIN = "tests/test_flux_plugin.py"

SERVICE = "src/datacrumbs/signing/service.py"
POLICY = "src/datacrumbs/signing/policy.py"
PROTOCOL = "src/datacrumbs/signing/protocol.py"
RESOLVE = "src/datacrumbs/signing/resolve.py"
BPF = "src/datacrumbs/tracer/bpf/datacrumbs.bpf.c"
DAEMON = "src/datacrumbs/tracer/daemon.py"
ASUSER = "src/datacrumbs/flux/asuser.py"

T_SIGN = "tests/test_signing_service.py"
T_SIGN_HARD = "tests/test_signing_hardening.py"
T_CREDS = "tests/test_engine_creds.py"
T_PROLOG_HARD = "tests/test_prolog_hardening.py"

MUTATIONS = [
    # probes/verify.py: THE trust decision of the root daemon (signature, validity, owner)
    M("verify: signature not checked", VERIFY,
      "key.verify(signature, canonical_bytes(doc))", "None", [T_VERIFY]),
    M("verify: unsigned file not refused", VERIFY,
      'if "signature" not in doc or "key_id" not in doc:', "if False:", [T_VERIFY]),
    M("verify: unknown signing key not refused", VERIFY,
      "if key is None:", "if False:", [T_VERIFY]),
    M("verify: expired file accepted", VERIFY,
      'if now >= doc["expires_at"]:', "if False:", [T_VERIFY]),
    M("verify: expiry off by one second", VERIFY,
      'if now >= doc["expires_at"]:', 'if now > doc["expires_at"]:', [T_VERIFY]),
    M("verify: not-yet-valid file accepted", VERIFY,
      'if doc["issued_at"] > now + CLOCK_SKEW_SECONDS:', "if False:", [T_VERIFY]),
    M("verify: owner not checked", VERIFY,
      'if owner["uid"] != user.uid or owner["user"] != user.name:', "if False:", [T_VERIFY]),
    M("verify: owner uid not checked (name only)", VERIFY,
      'if owner["uid"] != user.uid or owner["user"] != user.name:',
      'if owner["user"] != user.name:', [T_VERIFY]),
    M("verify: owner name not checked (uid only)", VERIFY,
      'if owner["uid"] != user.uid or owner["user"] != user.name:',
      'if owner["uid"] != user.uid:', [T_VERIFY]),
    # jobid.py: a wrong id names the wrong unit, env file, trace and sdexec cgroup
    M("jobid: F58 alphabet with x and y swapped", JOBID,
      '"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"',
      '"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwyxz"', [T_JOBID, T_JOBINFO]),
    M("jobid: F58 alphabet with S and T swapped (in no published example)", JOBID,
      '"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"',
      '"123456789ABCDEFGHJKLMNPQRTSUVWXYZabcdefghijkmnopqrstuvwxyz"', [T_JOBID, T_JOBINFO]),
    M("jobid: non-F58 character not refused", JOBID,
      "if char not in _F58_INDEX:", "if False:", [T_JOBID, T_JOBINFO]),
    M("jobid: ids above 2**64-1 accepted", JOBID,
      "if value > _MAX_JOBID:", "if False:", [T_JOBID, T_JOBINFO]),
    M("jobid: non-ASCII digits accepted as decimal", JOBID,
      'r"[0-9]{1,20}"', r'r"\d{1,20}"', [T_JOBID, T_JOBINFO]),
    M("jobid: dothex groups misplaced", JOBID,
      "value = (value << 16) | int(group, 16)", "value = (value << 4) | int(group, 16)",
      [T_JOBID, T_JOBINFO]),
    M("jobid: run id not required to be decimal", JOBID,
      "if not isinstance(text, str) or not _DECIMAL.fullmatch(text) or int(text) > _MAX_JOBID:",
      "if not isinstance(text, str):", [T_JOBID, T_ENVFILE]),
    # flux/envfile.py: values root hands to systemd (no shell, one argument each)
    M("envfile: $ not escaped", ENVFILE,
      "_ESCAPED = '\\\\\"$`'", "_ESCAPED = '\\\\\"`'", [T_ENVFILE, T_UNITS_ARGV]),
    M("envfile: backquote not escaped", ENVFILE,
      "_ESCAPED = '\\\\\"$`'", "_ESCAPED = '\\\\\"$'", [T_ENVFILE, T_UNITS_ARGV]),
    M("envfile: double quote not escaped", ENVFILE,
      "_ESCAPED = '\\\\\"$`'", "_ESCAPED = '\\\\$`'", [T_ENVFILE, T_UNITS_ARGV]),
    M("envfile: backslash not escaped", ENVFILE,
      "_ESCAPED = '\\\\\"$`'", "_ESCAPED = '\"$`'", [T_ENVFILE, T_UNITS_ARGV]),
    M("envfile: newline/CR/NUL not refused", ENVFILE,
      "        if char in value:", "        if False:", [T_ENVFILE]),
    M("envfile: control characters not refused", ENVFILE,
      "if not value.isprintable():", "if False:", [T_ENVFILE]),
    M("envfile: relative paths accepted", ENVFILE,
      'if key in PATH_KEYS and not value.startswith("/"):', "if False:", [T_ENVFILE]),
    M("envfile: unknown keys accepted", ENVFILE,
      "if key not in KEYS:", "if False:", [T_ENVFILE]),
    M("envfile: file name from an unchecked job id", ENVFILE,
      'f"datacrumbs-{validate_run_id(jobid)}.env"', 'f"datacrumbs-{jobid}.env"', [T_ENVFILE]),
    # data/flux/datacrumbs.py: the Flux CLI plugin, in `flux run` and in the job-ingest validator
    M("plugin: owner not checked", PLUGIN,
      'if owner["uid"] != uid:', "if False:", [T_PLUGIN]),
    M("plugin: validator does not fail closed without the submitter's uid", PLUGIN,
      "if uid is None:", "if False:", [T_PLUGIN]),
    M("plugin: validator userid not validated", PLUGIN,
      "if _is_int(uid, 0, 2**32 - 1):", "if uid is not None:", [T_PLUGIN]),
    M("plugin: digest not compared", PLUGIN,
      "if _digest(data) != digest:", "if False:", [T_PLUGIN]),
    M("plugin: signature not checked", PLUGIN,
      "key_class.from_public_bytes(raw_key).verify(signature, canonical_bytes(doc))", "None",
      [T_PLUGIN]),
    M("plugin: validator runs without cryptography", PLUGIN,
      "if crypto is None:", "if False:", [T_PLUGIN]),
    M("plugin: public key file not matched to its key id", PLUGIN,
      "if len(raw) != 32 or hashlib.sha256(raw).hexdigest()[:16] != key_id:",
      "if len(raw) != 32:", [T_PLUGIN]),
    M("plugin: expired file accepted", PLUGIN,
      'if doc["expires_at"] <= now:', "if False:", [T_PLUGIN]),
    M("plugin: not-yet-valid file accepted", PLUGIN,
      'if doc["issued_at"] > now + CLOCK_SKEW_SECONDS:', "if False:", [T_PLUGIN]),
    M("plugin: symbolic links followed", PLUGIN,
      "flags |= os.O_NOFOLLOW", "pass", [T_PLUGIN]),

    # signing service: the owner is the kernel's caller, the catalog defines the probes
    M("signing: owner taken from the request, not SO_PEERCRED", SERVICE,
      "owner_uid=caller.uid, owner_user=caller.user", "owner_uid=0, owner_user='root'",
      [T_SIGN]),
    M("signing: probe definitions accepted from the request", PROTOCOL,
      '"required": ["sets", "validity_days"],\n                "additionalProperties": False,',
      '"required": ["sets", "validity_days"],\n                "additionalProperties": True,',
      [T_SIGN_HARD]),
    M("signing: library paths without their descriptors accepted", SERVICE,
      "if len(paths) != len(fds):", "if False:", [T_SIGN_HARD]),
    M("signing: a library descriptor of a special file accepted", RESOLVE,
      "if not stat.S_ISREG(st.st_mode):", "if False:", [T_SIGN_HARD]),
    M("policy: function aliases not judged by address", POLICY,
      'alias = _denied_alias(lib, name, deny.get("targets", ())) if lib else None',
      "alias = None", [T_SIGN_HARD]),
    M("policy: system calls not judged by canonical name", POLICY,
      'deny_targets = [canonical_syscall(t) for t in deny.get("targets", ())]',
      'deny_targets = list(deny.get("targets", ()))', [T_SIGN_HARD]),
    M("policy: libraries not judged by device and inode", POLICY,
      "(lib is not None and (lib.dev, lib.ino) in denied_files)", "False", [T_SIGN_HARD]),
    M("policy: deny.kinds ignored", POLICY,
      '- set(deny.get("kinds", ()))', "", ["tests/test_policy.py"]),

    # tracer scope: never trace what the job user could not ptrace (needs a BPF rebuild)
    M("scope: credentials not checked", BPF,
      "if (!c->check_creds)\n\t\treturn true;\n\tif (!cred_is_users",
      "if (1)\n\t\treturn true;\n\tif (!cred_is_users", [T_CREDS], bpf=True),
    M("scope: capabilities not checked", BPF,
      "return !(cr->cap_effective.val | cr->cap_permitted.val);", "return true;",
      [T_CREDS], bpf=True),
    M("scope: dumpable not checked", BPF,
      "return d == DC_SUID_DUMP_USER || d == DC_NO_MM;", "return true;", [T_CREDS], bpf=True),
    M("daemon: job uid not given to the engine (no credential check)", DAEMON,
      "job_uid=account.uid", "job_uid=None", [T_CREDS], bpf=True),

    # prolog: reads as the user
    M("prolog: probes file read with root's uid", ASUSER,
      "        os.setresuid(uid, uid, uid)\n", "", [T_PROLOG_HARD]),
]


# ------------------------------------------------------------------------------ machinery

COPIED = ("src", "tests", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
SUMMARY = re.compile(r"(\d+) (failed|errors?)\b")


@dataclass
class Outcome:
    ok: bool
    text: str


def build_bpf(python: str, copy: Path) -> str | None:
    """Compile the copy's BPF object where its tests look for it; None on success."""
    proc = subprocess.run([python, "-c", "import sys; from datacrumbs.cli import main; "
                           "sys.argv[0] = 'datacrumbs'; main()", "build-bpf",
                           "-o", str(copy / "build/bpf/datacrumbs.bpf.o")], cwd=copy,
                          env=environment(copy), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return "build-bpf failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def make_copy(repo: Path) -> Path:
    """A fresh copy of what the tests need, traversable by the test users (dctest1...)."""
    root = Path(tempfile.mkdtemp(prefix="dc-mutation-"))
    root.chmod(0o755)
    for name in COPIED:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=IGNORED, symlinks=True)
        else:
            shutil.copy2(source, root / name)
    return root


def apply(copy: Path, mutation: M) -> str | None:
    """Make the replacement in the copy; None when done, else why it could not be made."""
    target = copy / mutation.path
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"stale mutation: {mutation.path} no longer exists"
    count = text.count(mutation.old)
    if count == 0:
        return f"stale mutation: {mutation.old!r} is no longer in {mutation.path}"
    if count > 1:
        return f"ambiguous mutation: {mutation.old!r} is in {mutation.path} {count} times"
    target.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    return None


def environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imports_from_copy(python: str, copy: Path) -> str | None:
    """None if `import datacrumbs` resolves inside the copy, else what it resolved to."""
    proc = subprocess.run([python, "-c", "import datacrumbs; print(datacrumbs.__file__)"],
                          cwd=copy, env=environment(copy), capture_output=True, text=True,
                          timeout=60)
    where = proc.stdout.strip()
    if proc.returncode != 0 or not where.startswith(str(copy / "src") + os.sep):
        return where or (proc.stderr.strip().splitlines() or ["nothing printed"])[-1]
    return None


@dataclass
class Baseline:
    usable: bool
    failing: list[str]  # node ids failing without any mutation: deselected
    text: str


def run_tests(python: str, copy: Path, tests: list[str], full: bool, timeout: float,
              deselect: list[str] = ()) -> tuple[int, int, list[str], str]:
    """(pytest exit code, failing tests, their node ids, last output line)."""
    argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
            *([] if full else ["-x"]), *(f"--deselect={node}" for node in deselect), *tests]
    try:
        proc = subprocess.run(argv, cwd=copy, env=environment(copy), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, 0, [], f"timed out after {timeout:.0f} s"
    lines = proc.stdout.strip().splitlines()
    errors = proc.stderr.strip().splitlines()
    last = lines[-1].strip("= ") if lines else (errors or ["no output"])[-1][-200:]
    failing = sum(int(n) for n, _ in SUMMARY.findall(last))
    nodes = [line.split(" ", 1)[1].split(" - ", 1)[0] for line in lines
             if line.startswith(("FAILED ", "ERROR "))]
    return proc.returncode, failing, nodes, last


def judge(rc: int, failing: int, nodes: list[str], last: str) -> Outcome:
    if rc == 1 and failing:
        first = f" ({nodes[0]}{', ...' if len(nodes) > 1 else ''})" if nodes else ""
        return Outcome(True, f"caught by {failing} failing test{'s' * (failing != 1)}{first}")
    if rc == 0:
        return Outcome(False, f"NOT CAUGHT ({last})")
    return Outcome(False, f"broken: pytest exit {rc} ({last})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", default="",
                        help="run only mutations whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--full", action="store_true",
                        help="run every test of a mutation (no -x) to count all failures")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running each test set on an unmodified copy first")
    parser.add_argument("--repo", type=Path, default=REPO, help="repository (default: %(default)s)")
    parser.add_argument("--python", default=None,
                        help="interpreter with pytest (default: <repo>/.venv/bin/python)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)

    repo = args.repo.resolve()
    python = args.python or str(repo / ".venv/bin/python")
    chosen = [m for m in MUTATIONS if args.select in m.name]
    if not chosen:
        parser.error(f"no mutation name contains {args.select!r}")
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.path}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0
    if not Path(python).exists():
        parser.error(f"{python} does not exist; create the venv or pass --python")

    copies: list[Path] = []
    baseline: dict[tuple[str, ...], Baseline] = {}
    started = time.monotonic()
    try:
        if not args.no_baseline:
            copy = make_copy(repo)
            copies.append(copy)
            wrong = imports_from_copy(python, copy)
            if wrong is not None:
                print(f"mutation_check: `import datacrumbs` does not come from the copy "
                      f"({wrong}); the results would be meaningless", file=sys.stderr)
                return 1
            if any(m.bpf for m in chosen):
                problem = build_bpf(python, copy)
                if problem is not None:
                    print(f"mutation_check: the unmodified copy's {problem}", file=sys.stderr)
                    return 1
            for tests in dict.fromkeys(tuple(m.tests) for m in chosen):
                rc, failing, nodes, last = run_tests(python, copy, list(tests), True,
                                                     args.timeout)
                if rc == 0:
                    baseline[tests] = Baseline(True, [], f"passes ({last})")
                elif rc == 1 and nodes:
                    baseline[tests] = Baseline(True, nodes, f"FAILS ({last}); deselected: "
                                               + ", ".join(nodes))
                else:
                    baseline[tests] = Baseline(False, [], f"BROKEN (pytest exit {rc}: {last})")
                print(f"baseline {' '.join(tests)}: {baseline[tests].text}", flush=True)
        width = max(len(m.name) for m in chosen)
        results: list[tuple[M, Outcome]] = []
        for number, m in enumerate(chosen, 1):
            base = baseline.get(tuple(m.tests), Baseline(True, [], ""))
            if not base.usable:
                outcome = Outcome(False, "baseline broken, cannot judge")
            else:
                copy = make_copy(repo)
                copies.append(copy)
                problem = apply(copy, m)
                if problem is None and m.bpf:
                    problem = build_bpf(python, copy)
                    problem = problem and f"broken: {problem}"
                if problem is not None:
                    outcome = Outcome(False, problem)
                else:
                    outcome = judge(*run_tests(python, copy, m.tests, args.full, args.timeout,
                                               base.failing))
                if not args.keep:
                    shutil.rmtree(copy, ignore_errors=True)
            results.append((m, outcome))
            print(f"[{number:2d}/{len(chosen)}] {m.name:<{width}}  {outcome.text}", flush=True)
    finally:
        if not args.keep:
            for copy in copies:
                shutil.rmtree(copy, ignore_errors=True)
        elif copies:
            print(f"copies kept: {' '.join(map(str, copies))}")

    missed = [(m, o) for m, o in results if not o.ok]
    print(f"\n{len(results)} mutations, {len(results) - len(missed)} caught, {len(missed)} not "
          f"(in {time.monotonic() - started:.0f} s)")
    for m, outcome in missed:
        print(f"  {m.name}: {outcome.text}")
    excluded = sorted({node for b in baseline.values() for node in b.failing})
    if excluded:
        print(f"WARNING: {len(excluded)} test(s) failing without any mutation were deselected: "
              + ", ".join(excluded))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
