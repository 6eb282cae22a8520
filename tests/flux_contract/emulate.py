"""Run the stand-in Flux in a separate interpreter (e.g. Debian's /usr/bin/python3 -I).

    emulate.py submit PROG ARGS...   -> JSON {"rc", "jobspec", "error"}
    emulate.py validate USERID       -> jobspec JSON on stdin; JSON {"errnum", "errmsg"} or {"died"}
    emulate.py import PLUGIN_FILE    -> JSON {"new_modules", "seconds", "classes"}

FLUX_CONTRACT_HIDE=cryptography makes that package unimportable (a Flux Python without it).

Not Flux: see tests/flux_contract/__init__.py.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # -I leaves the script directory off sys.path


class _Hide:
    """Meta-path finder making the modules named in FLUX_CONTRACT_HIDE unimportable."""

    def __init__(self, names):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"No module named {fullname!r} (hidden by the test)")
        return None


if os.environ.get("FLUX_CONTRACT_HIDE"):
    sys.meta_path.insert(0, _Hide(set(os.environ["FLUX_CONTRACT_HIDE"].split(","))))


def main(argv):
    command = argv[0]
    if command == "import":
        import flux.cli.plugin  # noqa: F401 - Flux has it loaded before any plugin
        from flux.importer import import_path

        before = set(sys.modules)
        start = time.perf_counter()
        module = import_path(argv[1])
        seconds = time.perf_counter() - start
        classes = [name for name in dir(module) if not name.startswith("_")
                   and isinstance(getattr(module, name), type)
                   and issubclass(getattr(module, name), flux.cli.plugin.CLIPlugin)
                   and getattr(module, name) is not flux.cli.plugin.CLIPlugin]
        print(json.dumps({"new_modules": sorted(set(sys.modules) - before),
                          "seconds": seconds, "classes": classes}))
        return 0
    from runner import ingest, submit  # noqa: E402 - needs sys.path above

    if command == "submit":
        result = submit(argv[1], argv[2:])
        print(json.dumps({"rc": result.rc, "jobspec": result.jobspec, "error": result.error}))
        return 0
    if command == "validate":
        from flux.job.validator.validator import WorkerDied

        try:
            result = ingest(json.load(sys.stdin), int(argv[1]))
        except WorkerDied as exc:
            print(json.dumps({"died": str(exc)}))
            return 0
        print(json.dumps({"errnum": result.errnum, "errmsg": result.errmsg}))
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
