"""The ``datacrumbs`` command: subcommands are the modules of this package.

Each module ``cli/<name>.py`` defines ``HELP`` (one line), ``setup_parser(parser)``
and ``main(args) -> int``; adding a subcommand is adding a file. ``main`` here
only maps errors to one readable line and an exit code (tracebacks only with
``--debug`` or ``DATACRUMBS_DEBUG=1``).

The daemon form used by ``datacrumbs@.service`` is kept as the seed wrote it:
``datacrumbs <signed-probes.json.gz> <run-id> <user>`` is ``datacrumbs run ...``.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

TYPE_CHECKING = False     # typing's own import costs the tracer's start 5 ms
if TYPE_CHECKING:   # argparse is imported where a parser is built: the unit's command needs none
    import argparse

from .. import __version__
from ..errors import DatacrumbsError

PROG = "datacrumbs"


def _subcommand_names() -> list[str]:
    """The modules of this package (pkgutil.iter_modules' answer, without importing it)."""
    names = []
    for entry in os.scandir(__path__[0]):
        name, ext = os.path.splitext(entry.name)
        if name.isidentifier() and not name.startswith("_") and (
                (ext == ".py" and entry.is_file())
                or (not ext and os.path.isfile(os.path.join(entry.path, "__init__.py")))):
            names.append(name)
    return sorted(names)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command's parser; with ``only``, that subcommand's module alone is
    imported and set up (the others stay bare names): `datacrumbs run`, which a job's
    prolog waits for, does not pay for importing every other subcommand."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Per-job eBPF I/O tracing for HPC clusters run by Flux.",
        epilog=(
            "examples:\n"
            "  datacrumbs trace -- dd if=/dev/zero of=/tmp/x bs=4k count=100\n"
            "  datacrumbs probes generate --set posix --set stdio --sign -o probes.json.gz\n"
            "  datacrumbs report /var/lib/datacrumbs/traces/alice/2026-11-25/\n"
            "  datacrumbs PROBES.json.gz RUN_ID USER    (daemon form, as run by datacrumbs@.service)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in _subcommand_names():
        name = modname.replace("_", "-")
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        module = importlib.import_module(f"{__name__}.{modname}")
        sp = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.setup_parser(sp)
        sp.set_defaults(_main=module.main)
    return parser


def _known_commands() -> set[str]:
    return {name.replace("_", "-") for name in _subcommand_names()}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if known."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in _known_commands() else None
    return None


def _plain_run(argv: list[str]) -> SimpleNamespace | None:
    """The arguments of ``run PROBES RUN_ID USER`` with no option: the unit's command, run
    without argparse or subcommand discovery (25 ms of every traced job's start); ``run``
    checks each value. Anything else goes through the parser."""
    if len(argv) == 4 and argv[0] == "run" and not any(a.startswith("-") for a in argv[1:]):
        return SimpleNamespace(probes=argv[1], run_id=argv[2], user=argv[3], debug=False)
    return None


def _rewrite_daemon_form(argv: list[str]) -> list[str]:
    """``datacrumbs FILE RUNID USER`` (the unit's form) means ``datacrumbs run FILE RUNID USER``."""
    positional = [a for a in argv if not a.startswith("-")]
    if positional and positional[0] not in _known_commands() and len(positional) == 3:
        return ["run", *argv]
    return argv


def single_threaded_blas(env=os.environ) -> None:
    """No OpenBLAS thread pool for numpy (unless the caller asked for one): our commands
    use numpy for element-wise work and bincounts, never BLAS, yet the pool numpy starts
    at import spins a core for about 0.1 s, CPU a tracer's start and every report
    worker competed for on a 2-CPU node. Must run before numpy is imported."""
    env.setdefault("OPENBLAS_NUM_THREADS", "1")


def _shown(value) -> str:
    """An error message's value without control characters (imported only on an error:
    safetext brings rich, which the daemon's start does not need)."""
    from ..safetext import shown

    return shown(value)


def run_cli(argv: list[str] | None, prog: str = PROG, *, adapt=None) -> int:
    """Parse and run one command, turning every failure into one ``prog: error:`` line.
    ``adapt(parser)`` may change the parser first (an alias's name in its help)."""
    single_threaded_blas()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DATACRUMBS_DEBUG") == "1"
    try:
        argv = _rewrite_daemon_form(argv)
        plain = _plain_run(argv) if adapt is None else None
        if plain is not None:
            from . import run
            return int(run.main(plain) or 0)
        parser = build_parser(None if adapt is not None else _command_of(argv))
        if adapt is not None:
            adapt(parser)
        args = parser.parse_args(argv)
        if not getattr(args, "_main", None):
            parser.print_help()
            return 2
        return int(args._main(args) or 0)
    except DatacrumbsError as exc:
        # messages name paths and values a user chose: no escape sequence reaches the terminal
        print(f"{prog}: error: {_shown(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): no message, and none at exit either, when
        # Python flushes stdout into the closed pipe again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {_shown(where)}{_shown(exc.strerror or exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the one place that catches everything
        if debug:
            import traceback
            traceback.print_exc()
        print(f"{prog}: internal error: {type(exc).__name__}: {_shown(exc)} "
              "(rerun with --debug for details and report it)", file=sys.stderr)
        return 70


def main() -> None:
    sys.exit(run_cli(None))


def configurator_main() -> None:
    """``datacrumbs_probe_configurator``: the original tool's name for signed generation.

    Site scripts written for LLNL DataCrumbs call this name; it is
    ``datacrumbs probes generate --sign`` with the same options.
    """
    argv = sys.argv[1:]
    if "--sign" not in argv and "-h" not in argv and "--help" not in argv:
        argv = [*argv, "--sign"]
    sys.exit(run_cli(["probes", "generate", *argv], prog="datacrumbs_probe_configurator",
                     adapt=_as_configurator))


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def _as_configurator(parser: argparse.ArgumentParser) -> None:
    """Its help and usage name it, and say what it is."""
    generate = _subparser(_subparser(parser, "probes"), "generate")
    generate.prog = "datacrumbs_probe_configurator"
    generate.description = (f"{generate.description}\n\nThe original DataCrumbs' name for "
                            "`datacrumbs probes generate --sign`: --sign is implied.")
    generate.epilog = (generate.epilog or "").replace("datacrumbs probes generate",
                                                      "datacrumbs_probe_configurator")
