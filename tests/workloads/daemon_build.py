"""Compile the daemon tests' C workloads once per session (cc is on every test machine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(name: str, outdir: Path) -> Path:
    """cc -O2 tests/workloads/daemon_<name>.c -> outdir/daemon_<name> (world-executable)."""
    src = HERE / f"daemon_{name}.c"
    out = Path(outdir) / f"daemon_{name}"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "no C compiler (cc, gcc or clang) on PATH"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    out.chmod(0o755)
    return out
