"""libbpf's printing in C (tracer/bpf/libbpf_print.c): a load without ~4,000 Python
callbacks, each of which took the GIL while the daemon imported and verified meanwhile,
and the same warnings in the engine's error messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from datacrumbs.tracer import libbpf

REFUSED_LOAD = r"""
import json, logging, sys
from datacrumbs.tracer import libbpf
if sys.argv[2] == "debug":
    logging.basicConfig(level=logging.DEBUG, stream=open("/dev/null", "w"))
in_c = libbpf.use_c_print(sys.argv[1])
obj = libbpf.BpfObject(sys.argv[1])
obj.set_max_entries("comms", 0)         # the kernel refuses a hash map of no entries
try:
    obj.load()
    message = None
except libbpf.LibbpfError as exc:
    message = str(exc)
kept_in_c = libbpf._c_print.dc_libbpf_warnings() if libbpf._c_print else 0
print(json.dumps({"in_c": in_c, "message": message, "kept_in_c": kept_in_c}))
"""


def refused_load(bpf_object, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", REFUSED_LOAD, str(bpf_object), mode],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_libbpf_warnings_printed_in_c_still_explain_a_refused_load(bpf_object):
    in_c = refused_load(bpf_object, "info")
    in_python = refused_load(bpf_object, "debug")     # debug logging wants every line
    assert in_c["in_c"] is True
    # the warnings came through the C function, and with debug logging not
    assert in_c["kept_in_c"] > 0 and in_python["kept_in_c"] == 0
    assert "libbpf: failed to load object" in in_c["message"]
    assert in_c["message"] == in_python["message"]


def test_a_print_library_others_may_write_is_not_loaded(bpf_object, tmp_path):
    shutil.copy(libbpf.print_library_path(bpf_object), tmp_path)
    library = tmp_path / libbpf.PRINT_LIBRARY_NAME
    for mode, used in ((0o666, "False"), (0o644, "True")):
        os.chmod(library, mode)
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from datacrumbs.tracer import libbpf; "
             "print(libbpf.use_c_print(sys.argv[1]))", str(tmp_path / "datacrumbs.bpf.o")],
            capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == used, (oct(mode), proc.stderr)
