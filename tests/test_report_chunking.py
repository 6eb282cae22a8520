"""The report's access patterns do not depend on where it cuts a trace (issue #11, per-file
truth).

The report reads a trace in chunks (and a big one in units spread over worker
processes). A read or write without an offset is placed at the stream's position, which a
chunk that began without an open or a seek knows only relative to its own start. Such
accesses must be classed (consecutive, sequential, random) only once the base is known:
compared with an absolute offset as if they shared one, `lseek(fd, 0, SEEK_CUR)` (what
stdio's ftell does) turned consecutive reads into sequential or random ones, and the counts
changed with the chunk size. Here a real program's trace is summarised whole and cut into
chunks of about 40 and 300 events; each must give the counts the program's own sequence
implies.
"""

from __future__ import annotations

import sys

import pytest

from datacrumbs.report import columnar as columnar_mod
from datacrumbs.report import merge, model
from datacrumbs.trace import reader

from fixtures.traces import split_summary
from fixtures.tracing import trace_command

N = 3000
PROGRAM = """
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.write(b"x" * 4096 * n)
fd = os.open(path, os.O_RDONLY)
for i in range(n):
    if i % 50 == 25:
        os.lseek(fd, 0, os.SEEK_CUR)     # ftell: the position, unchanged
    if i % 400 == 399:
        os.lseek(fd, 0, os.SEEK_SET)     # back to the start: the next read is random
    if i % 300 == 150:                   # a positioned read where the last read ended:
        os.pread(fd, 4096, os.lseek(fd, 0, os.SEEK_CUR))    # consecutive, and the read
                                                             # after it starts 4096 back
    assert len(os.read(fd, 4096)) == 4096
os.close(fd)
"""


@pytest.mark.ebpf
def test_read_patterns_are_the_programs_whatever_the_chunking(site, tmp_path, bpf_object,
                                                             monkeypatch):
    data = tmp_path / "data.bin"
    script = tmp_path / "reader.py"
    script.write_text(PROGRAM)
    _proc, trace, _summary = trace_command(tmp_path, [sys.executable, script, data, N])
    rewinds = len([i for i in range(N) if i % 400 == 399])
    preads = len([i for i in range(N) if i % 300 == 150])
    want = {"consecutive": N - rewinds, "sequential": 0, "random": rewinds + preads}
    seen = []
    for chunk, block in ((1 << 20, 4 << 20), (97, 8192), (1000, 65536)):
        monkeypatch.setattr(merge, "CHUNK_EVENTS", chunk)
        # a chunk ends after the block that fills it: blocks of ~40 and ~300 lines
        monkeypatch.setattr(reader, "PARSE_BLOCK", block)
        monkeypatch.setattr(columnar_mod, "PARSE_BLOCK", block)
        for columnar in (True, False):
            monkeypatch.setattr(model, "COLUMNAR", columnar)
            files = {f["path"]: f for f in split_summary([trace])["files"]}
            got = files[str(data)]["access"]["read"]
            seen.append(((chunk, columnar), got))
    assert all(got == want for _, got in seen), seen
