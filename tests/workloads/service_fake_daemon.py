"""A stand-in for `datacrumbs run PROBES RUN_ID USER`, for tests about systemd behaviour.

It honours the daemon's contract (ready file written atomically once "attached",
SIGINT/SIGTERM -> flush -> remove ready file -> exit 0) without eBPF, and records
what it received, so unit tests can check argv passing, ready waits and stop
semantics. FAKE_MODE=never-ready never writes the ready file; FAKE_FLUSH_S
sets how long the "flush" takes after the stop signal; FAKE_MODE=exit exits 1
at once (like a daemon refusing its probes file).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from datacrumbs.config import load_config  # noqa: E402


def main() -> int:
    probes, run_id, user = sys.argv[1:4]
    run_dir = load_config().run_dir
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(a[0]))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(a[0]))
    (run_dir / f"fake-{run_id}.argv.json").write_text(json.dumps(
        {"argv": sys.argv[1:], "env_probe_file": os.environ.get("DATACRUMBS_PROBE_FILE")}))
    ready = run_dir / f"datacrumbs-{run_id}.ready"
    if os.environ.get("FAKE_MODE") == "exit":
        print("fake daemon: refusing to start", file=sys.stderr)
        return 1
    if os.environ.get("FAKE_MODE") != "never-ready":
        tmp = ready.with_name(ready.name + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.rename(tmp, ready)
    while not stop:
        time.sleep(0.01)
    time.sleep(float(os.environ.get("FAKE_FLUSH_S", "0")))
    (run_dir / f"fake-{run_id}.flushed").write_text(signal.Signals(stop[0]).name)
    ready.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
