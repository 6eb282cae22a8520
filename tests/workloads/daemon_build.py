"""Compile the daemon tests' C workloads once per session (cc is on every test machine)."""

from __future__ import annotations

import shlex
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


def hdf5_flags() -> list[str]:
    """Compile and link flags of Debian's serial HDF5 (pkg-config, else its fixed layout)."""
    if shutil.which("pkg-config"):
        proc = subprocess.run(["pkg-config", "--cflags", "--libs", "hdf5-serial"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and "-lhdf5" in proc.stdout:
            return shlex.split(proc.stdout)
    return ["-I/usr/include/hdf5/serial", "-L/usr/lib/x86_64-linux-gnu/hdf5/serial", "-lhdf5"]
