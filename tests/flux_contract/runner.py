"""How ``flux run|submit|batch|alloc`` and job-ingest drive CLI plugins (stand-in, not Flux).

Follows src/bindings/python/flux/cli/base.py and job/Jobspec.py: a first registry supplies the
parser options and gets ``preinit(args)``; the jobspec is built; a second registry (a second
plugin instance, as observed on flux-core v0.88.0) gets ``modify_jobspec(args, jobspec)``; with
``--dry-run`` the jobspec is printed. The CLI never calls ``validate``: ``ingest`` plays the
instance's job-ingest validator, which does.
"""

import argparse
from dataclasses import dataclass, field

from flux.cli.plugin import CLIPluginRegistry
from flux.job import JobspecV1
from flux.job.validator.validator import JobValidator


@dataclass
class Submission:
    rc: int
    jobspec: dict | None
    error: str
    registries: list = field(default_factory=list)


def build_parser(prog, registry):
    parser = argparse.ArgumentParser(prog=f"flux {prog}", exit_on_error=False)
    parser.add_argument("-n", "--ntasks", type=int, default=1)
    parser.add_argument("--setattr", action="append")
    parser.add_argument("--dry-run", action="store_true")
    registry.add_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def submit(prog, argv, environment=None):
    """Run ``flux PROG ARGV`` up to the jobspec it would submit (as with --dry-run)."""
    first = CLIPluginRegistry(prog)
    args = build_parser(prog, first).parse_args(argv)
    registries = [first]
    try:
        first.preinit(args)
        jobspec = JobspecV1.from_command(args.command or ["true"], num_tasks=args.ntasks,
                                         environment=environment or {})
        for keyval in args.setattr or []:
            key, _, val = keyval.partition("=")
            if not key.startswith((".", "user.", "system.")):
                key = "system." + key
            jobspec.setattr(key.lstrip("."), val or 1)
        second = CLIPluginRegistry(prog)
        registries.append(second)
        second.modify_jobspec(args, jobspec)
    except (ValueError, TypeError, OSError) as exc:
        return Submission(1, None, f"flux-{prog}: ERROR: {exc}", registries)
    return Submission(0, jobspec.jobspec, "", registries)


def ingest(jobspec, userid):
    """The instance's job-ingest validator on one job: returns a ValidatorResult."""
    validator = JobValidator()
    try:
        return validator.validate({"jobspec": jobspec, "userid": userid, "flags": 0,
                                   "urgency": 16})
    finally:
        validator.stop()
