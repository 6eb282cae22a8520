"""Compile the BPF object once, at install time, for this kernel's BTF.

The daemon never compiles: it only loads the object built here, so nodes
need clang and bpftool only where the installer runs. vmlinux.h is generated
from the running kernel's BTF; CO-RE relocations let the object keep working
across kernel updates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from ..errors import DatacrumbsError

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
SOURCE_NAME = "datacrumbs.bpf.c"
TOOL_PACKAGES = {"clang": "clang (and llvm)", "bpftool": "bpftool"}
BUILD_TIMEOUT = 300
# bpftool lives in sbin, which a user's PATH often lacks
SBIN_PATH = "/usr/sbin:/sbin:/usr/local/sbin"


class BuildError(DatacrumbsError):
    """The BPF object could not be built."""


def source_dir() -> Path:
    """Directory holding datacrumbs.bpf.c and its header inside the installed package."""
    return Path(str(resources.files("datacrumbs.tracer") / "bpf"))


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN_PATH)
    if not path:
        raise BuildError(f"{name} not found: install the Debian/Ubuntu package "
                         f"{TOOL_PACKAGES[name]} (RHEL: {name}) to build the BPF object")
    return path


def _run(argv: list[str], what: str, stdout=None) -> None:
    try:
        proc = subprocess.run(argv, stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took longer than {BUILD_TIMEOUT} s; aborted") from None
    except OSError as exc:
        raise BuildError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        tail = " | ".join(detail[-5:]) if detail else f"exit status {proc.returncode}"
        raise BuildError(f"{what} failed: {tail}")


def build_bpf_object(out: Path, *, btf: Path = BTF_PATH, clang: str | None = None,
                     bpftool: str | None = None) -> Path:
    """Generate vmlinux.h from ``btf`` and compile the object into ``out`` atomically."""
    out = Path(out)
    if not btf.is_file():
        raise BuildError(f"kernel BTF {btf} not found: the kernel needs CONFIG_DEBUG_INFO_BTF=y "
                         "for datacrumbs' CO-RE BPF programs")
    clang = clang or _tool("clang")
    bpftool = bpftool or _tool("bpftool")
    src = source_dir()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create directory {out.parent}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="datacrumbs-bpf-") as tmp:
        vmlinux_h = Path(tmp) / "vmlinux.h"
        with open(vmlinux_h, "wb") as f:
            _run([bpftool, "btf", "dump", "file", str(btf), "format", "c"],
                 f"bpftool btf dump of {btf}", stdout=f)
        compile_into(out, [clang, "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86",
                           "-I", tmp, "-I", str(src), "-c", str(src / SOURCE_NAME)],
                     f"clang compiling {src / SOURCE_NAME}")
    return out


def build_shared_library(source: Path, out: Path, what: str, cc: str | None = None) -> Path:
    """Compile one C file of the package into the shared library ``out``, atomically
    (``cc``, else cc, clang or gcc from PATH); ``what`` names it in errors."""
    cc = cc or shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if not cc:
        raise BuildError(f"no C compiler found (cc, clang or gcc) to build the {what}; "
                         "install clang, which the BPF object needs too")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_into(out, [cc, "-O2", "-shared", "-fPIC", str(source)],
                 f"{Path(cc).name} compiling {source}")
    return out


def build_print_library(out: Path, cc: str | None = None) -> Path:
    """Compile bpf/libbpf_print.c (libbpf's print function without Python) into ``out``."""
    return build_shared_library(source_dir() / "libbpf_print.c", out, "libbpf print function",
                                cc)


def compile_into(out: Path, argv: list[str], what: str) -> None:
    """Run the compiler ``argv`` with ``-o`` a temporary file beside ``out``, then put it
    in place: a failed or interrupted build never leaves a half-written file to load."""
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        _run([*argv, "-o", partial], what)
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
