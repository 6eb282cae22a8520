"""report/heap.py: freed column arrays are reused without faulting their pages in again.

Measured in fresh interpreters (the setting is per process, and pytest's own must stay as
it is): the minor page faults of ten blocks of eight 16 MiB columns, each made, filled and freed.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from datacrumbs.report.heap import keep_freed_memory
    assert keep_freed_memory()
def block():                                    # a block's columns: 8 x 16 MiB at once
    cols = [np.ones(2 << 20) for _ in range(8)]
    del cols
block()                                         # the first block faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, timeout=60)
    return int(out.stdout)


def test_freed_arrays_are_reused_without_page_faults():
    block = 8 * (16 << 20) // 4096              # pages of one block's columns
    default, kept = _faults("default"), _faults("keep")
    assert default >= block // 2, default      # glibc's default gives much of it back
    assert kept < block // 16, kept
