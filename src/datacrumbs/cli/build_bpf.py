"""Compile datacrumbs' BPF object for this kernel (run once by the installer).

Generates vmlinux.h from /sys/kernel/btf/vmlinux with bpftool and compiles
the generic CO-RE programs with clang into the site's bpf_object path, and
beside it the daemon's compiled trace line formatter (datacrumbs-lines.so), the
report's trace line scanner (datacrumbs-scan.so) and stream fold (datacrumbs-fold.so)
and libbpf's print function
(datacrumbs-libbpf-print.so).

examples:
  datacrumbs build-bpf
  datacrumbs build-bpf -o /opt/datacrumbs/lib/datacrumbs/datacrumbs.bpf.o
"""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..trace import fastfold, fastscan
from ..trace.fastlines import build_library, library_path
from ..tracer.build import build_bpf_object, build_print_library
from ..tracer.libbpf import print_library_path

HELP = "compile the BPF object for this kernel (installer step)"


def setup_parser(parser) -> None:
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="where to write the object (default: bpf_object from the site config)")


def main(args) -> int:
    out = args.output or load_config().bpf_object
    path = build_bpf_object(out)
    print(f"built {path}")
    print(f"built {build_library(library_path(path))}")
    print(f"built {fastscan.build_library(fastscan.library_path(path))}")
    print(f"built {fastfold.build_library(fastfold.library_path(path))}")
    print(f"built {build_print_library(print_library_path(path))}")
    return 0
