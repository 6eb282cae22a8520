"""The `datacrumbs` entry point: subcommand discovery, the daemon form, one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*argv, env=None):
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_lists_every_subcommand_module():
    modules = {p.stem.replace("_", "-") for p in
               (Path(__file__).parents[1] / "src/datacrumbs/cli").glob("[a-z]*.py")}
    out = run("datacrumbs", "--help").stdout
    assert modules and all(name in out for name in modules)


def test_daemon_form_is_the_run_subcommand(tmp_path):
    """`datacrumbs FILE RUNID USER` (the unit's ExecStart) reaches `run`, which checks the id."""
    res = run("datacrumbs", str(tmp_path / "p.json.gz"), "1;reboot", "root")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "run id '1;reboot'" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_units_command_builds_no_parser(tmp_path):
    """The unit's command (`datacrumbs FILE RUNID USER`) reaches `run` without argparse or
    subcommand discovery (some 25 ms of every traced job's start), with the same one-line
    error; `run --help` still goes through the parser."""
    code = ("import sys\n"
            "from datacrumbs.cli import run_cli\n"
            f"rc = run_cli([{str(tmp_path / 'p.json.gz')!r}, '1;reboot', 'root'])\n"
            "print(rc, sorted(m for m in ('argparse', 'pkgutil') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.stdout.strip() == "1 []", res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "run id '1;reboot'" in res.stderr
    out = run("datacrumbs", "run", "--help")
    assert out.returncode == 0 and "RUN_ID" in out.stdout


def test_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[paths]\nrun_dir = 'relative'\n")
    res = run("datacrumbs", "probes", "list-sets", env={"DATACRUMBS_CONFIG": str(bad)})
    assert res.returncode == 1, res.stdout
    assert res.stderr.startswith("datacrumbs: error: ") and str(bad) in res.stderr
    assert res.stderr.count("\n") == 1


def test_configurator_alias_is_generate_with_sign(site, tmp_path):
    """Site scripts written for the original tool call datacrumbs_probe_configurator."""
    out = run("datacrumbs_probe_configurator", "--help").stdout
    assert "--set" in out and "--sign" in out
    res = run("datacrumbs_probe_configurator", "--set", "posix", "-o", str(tmp_path / "p.json.gz"))
    # No service runs on this test's socket: the alias asked to sign, and says what to do.
    assert res.returncode == 1
    assert "datacrumbs_probe_configurator: error:" in res.stderr
    assert "signing service is not running" in res.stderr and str(site.socket_path) in res.stderr
    assert not (tmp_path / "p.json.gz").exists()


def test_the_daemon_start_imports_no_elf_parser():
    """`datacrumbs run` imports the daemon and the engine, which read ELF symbols with
    numpy (tracer/elfsyms.py): pyelftools' ELF and DWARF modules (some 30 ms of every
    traced job's start) are imported only where a file needs them."""
    code = ("import sys; import datacrumbs.cli.run, datacrumbs.tracer.daemon, "
            "datacrumbs.tracer.engine, datacrumbs.tracer.families, datacrumbs.probes.verify; "
            "print(sorted(m for m in sys.modules if m.startswith('elftools.elf')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_trace_usage_line_names_every_option():
    """`datacrumbs trace`'s usage line is written by hand (argparse's own cannot show the
    `-- CMD` form): every option the parser takes must be in it."""
    from datacrumbs.cli import _subparser, build_parser

    trace = _subparser(build_parser("trace"), "trace")

    def shown(option: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", trace.usage) is not None

    missing = [a.option_strings for a in trace._actions
               if a.option_strings and not any(shown(o) for o in a.option_strings)]
    assert not missing, missing


def test_an_error_naming_a_hostile_path_prints_no_escape_sequence(tmp_path):
    """Error messages name paths a user chose (a trace directory's files, read by an
    admin): their control characters are written as escapes, in one line."""
    d = tmp_path / "t\x1b]0;PWNED\x07\nforged: line"
    d.mkdir()
    bad = d / "trace-x.pfw.gz"
    bad.write_bytes(b"not gzip")
    res = run("datacrumbs", "report", str(bad))
    assert res.returncode == 1, res.stdout
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert res.stderr.count("\n") == 1 and "t\\x1b]0;PWNED\\x07\\nforged: line" in res.stderr


def test_a_report_under_a_broken_site_config_says_so_once(tmp_path):
    """The report needs the site configuration only to find its compiled scanner: a broken
    one is said once (not silently, not once per worker), and the report is still made."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures.traces import TraceBuilder

    b = TraceBuilder(tmp_path / "t.pfw.gz")
    b.op("write", pid=1, size=10, path="/x")
    b.write()
    bad = tmp_path / "c.toml"
    bad.write_text("[paths\n")
    res = run("datacrumbs", "report", "--jobs", "2", str(b.path),
              env={"DATACRUMBS_CONFIG": str(bad)})
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "not valid TOML" in warnings[0]
    assert "POSIX" in res.stdout and "write" in res.stdout
