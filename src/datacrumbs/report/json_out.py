"""Writing report files: the summary as JSON, and any text output, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomicfile import atomic_write, cannot_write
from ..errors import DatacrumbsError


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    out = Path(path)
    if out.is_dir():
        raise DatacrumbsError(f"{out}: is a directory; give a file name for the report")
    try:
        atomic_write(out, text, mode=0o644, fsync=False)
    except OSError as exc:
        raise DatacrumbsError(cannot_write(out, exc)) from None
    return out


# JSON escapes C0 controls itself; DEL and C1 (0x9b: a one-byte CSI on some terminals)
# would reach a terminal that shows `report --json -` raw. Escaped, the values are the same.
_DEL_C1 = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0))}


def dumps(summary: dict) -> str:
    return json.dumps(summary, indent=2, ensure_ascii=False).translate(_DEL_C1) + "\n"


def write_json(summary: dict, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, dumps(summary))
