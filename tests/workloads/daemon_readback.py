"""Independent trace readers for the daemon and writer tests (not the project's reader).

Two readers that share no code with datacrumbs: zlib member by member (dropping
a torn tail the way the design says every reader must), and pandas
``read_json(lines=True)`` on the lines between ``[`` and ``]``.
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import pandas as pd


def members(path) -> tuple[list[bytes], bytes]:
    """(complete members' text, torn tail bytes) of a multi-member gzip file."""
    data = memoryview(Path(path).read_bytes())
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        try:
            text = d.decompress(data[pos:])
        except zlib.error:
            return out, bytes(data[pos:])
        if not d.eof:
            return out, bytes(data[pos:])
        out.append(text)
        pos = len(data) - len(d.unused_data)
    return out, b""


def lines(path) -> list[str]:
    """Every line of the complete members; each member must end at a line end (the empty
    members of the writer's member index hold no line)."""
    result = []
    for text in members(path)[0]:
        assert not text or text.endswith(b"\n"), "a gzip member does not end at a line end"
        result.extend(text.decode().splitlines())
    return result


def records(path) -> list[dict]:
    """JSON objects of the trace (without the ``[`` / ``]`` lines)."""
    return [json.loads(line) for line in lines(path) if line not in ("[", "]")]


def events(path, ph="X") -> list[dict]:
    return [r for r in records(path) if r.get("ph") == ph]


def pandas_frame(path) -> pd.DataFrame:
    body = "\n".join(line for line in lines(path) if line not in ("[", "]"))
    return pd.read_json(io.StringIO(body), lines=True, dtype=False)
