"""The report's fast path: trace lines parsed into columns by pyarrow, no dict per event.

``TraceReader.chunks`` makes a Python dict of every event and the aggregation then
reads each field back with a list comprehension: about 13 µs an event on the project's
machine. Here each block of whole lines (the reader's own blocks) is parsed by
pyarrow's compiled JSON reader against a fixed schema of the fields the report reads
(others are ignored), and the columns go to :meth:`Aggregate.add_columns`, which feeds
the same numpy code as the dict path.

The numbers are the dict path's, by construction:

* chunks end where ``TraceReader.chunks`` ends them (after the block that brings
  ``chunk_events`` events), so every chunk-bounded state (a thread's stack, the
  first host hash of a chunk) is the same;
* a block goes to pyarrow only when pyarrow reads it exactly as the JSON module would:
  one object per line, every field of the schema's type, only complete (``X``) events
  and metadata (``M``) lines, no ``fhash2`` without a string. Anything else (a counter
  row, a bad line, a foreign type, a number too big) sends the whole chunk through the
  dict path, which decides as it always did;
* values are sanitised as the dict path does (``_numbers``: missing, negative or past
  2**53 become the default).

Before pyarrow, a block goes to the compiled scanner (trace/scan.c, trace/fastscan.py)
when the site has it: one pass in C into the same columns (:class:`ScanColumns`), about
a quarter of pyarrow's CPU, declining (for pyarrow, then the dicts) any block with a line
it does not read exactly as the JSON module would.
"""

from __future__ import annotations

import numpy as np

from ..trace import fastscan
from ..trace.reader import (PARSE_BLOCK, TraceReader, _blocks, _loads, block_body,
                             block_events, has_surrogate_escape, parse_block,
                             without_surrogates)

#: The fields the report reads, with the JSON type each must have for the fast path.
_ARGS = [("fhash", "s"), ("fname", "s"), ("hhash", "s"), ("size", "i"), ("count", "i"),
         ("errno", "i"), ("offset", "i"), ("ret", "i"), ("flags", "i"), ("ftype", "s"),
         ("fhash2", "s"), ("ftype2", "s")]
_TOP = [("name", "s"), ("cat", "s"), ("pid", "i"), ("tid", "i"), ("ts", "f"), ("dur", "f"),
        ("ph", "s")]
MAX_VALUE = 2.0 ** 53

# pyarrow, imported when a block first needs it: a site with the compiled scanner reads
# most traces without it, and its import costs each worker about 0.05 s of CPU.
pa = pc = pj = SCHEMA = _PARSE = _READ = None


def _arrow() -> None:
    global pa, pc, pj, SCHEMA, _PARSE, _READ
    if pa is not None:
        return
    import pyarrow
    import pyarrow.compute
    import pyarrow.json

    t = {"s": pyarrow.string(), "i": pyarrow.int64(), "f": pyarrow.float64()}
    SCHEMA = pyarrow.schema([(k, t[x]) for k, x in _TOP] +
                            [("args", pyarrow.struct([(k, t[x]) for k, x in _ARGS]))])
    _PARSE = pyarrow.json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore",
                                       newlines_in_values=False)
    _READ = pyarrow.json.ReadOptions(use_threads=False, block_size=PARSE_BLOCK + (1 << 20))
    pa, pc, pj = pyarrow, pyarrow.compute, pyarrow.json


#: Read blocks with the compiled scanner when the site has one; False: pyarrow first.
SCAN = True
_SCANNER: list = []     # [the scanner or None], looked up once per process


def available() -> bool:
    """Whether pyarrow (a dependency) is installed: the columnar path needs it for the
    blocks the scanner declines."""
    from importlib.util import find_spec

    return find_spec("pyarrow") is not None


def scanner():
    """The site's compiled scanner (fastscan.for_site), or None."""
    if not _SCANNER:
        _SCANNER.append(fastscan.for_site())
    return _SCANNER[0]


_WS = frozenset(b" \t\n\r\x0b\x0c")     # what bytes.strip() strips


def body_bounds(block: bytes) -> tuple[int, int, bool]:
    """block_body's ``(body, closed)`` as ``block[start:end]``, without copying the block
    (a strip copies megabytes a block; a block has only a few bytes to strip)."""
    i, j = 0, len(block)
    while i < j and block[i] in _WS:
        i += 1
    while j > i and block[j - 1] in _WS:
        j -= 1
    closed = False
    if i < j and block[i] == 0x5B and (j - i == 1 or block[i + 1] in (0x0D, 0x0A)):    # [
        i += 1
        while i < j and block[i] in _WS:
            i += 1
    if i < j and block[j - 1] == 0x5D and (j - i == 1 or block[j - 2] in (0x0D, 0x0A)):  # ]
        j -= 1
        closed = True
        while j > i and block[j - 1] in _WS:
            j -= 1
    return i, j, closed


def scan_block(block: bytes, scan):
    """``(fastscan.Block, metadata dicts, records, closed)`` of a block, or None when the
    scanner declines it (parse_block_columns' contract)."""
    start, end, closed = body_bounds(block)
    if start >= end:
        return None, [], 0, closed
    got = scan.scan(block, start, end)
    if got is None:
        return None
    meta = []
    for line in got.meta_lines:         # few: the JSON module reads them, and checks them
        try:
            rec = _loads(line)
        except ValueError:
            rec = None
        if type(rec) is not dict or rec.get("ph") != "M":
            return None
        meta.append(without_surrogates(rec) if has_surrogate_escape(line) else rec)
    return got, meta, got.nrec, closed


def parse_block_columns(block: bytes):
    """``(events table, metadata dicts, records, closed)`` of a block, or None when the
    block is not one pyarrow reads exactly as the dict path would (see the module doc)."""
    body, closed = block_body(block)
    if not body:
        return None, [], 0, closed
    _arrow()
    if b",\n" in body or b"\n\n" in body or has_surrogate_escape(body):
        return None                 # (a lone surrogate: the dict path escapes it)
    try:
        tbl = pj.read_json(pa.py_buffer(body), read_options=_READ, parse_options=_PARSE)
        tbl.validate(full=True)     # pyarrow's JSON reader passes bytes that are not UTF-8
    except (pa.ArrowException, ValueError, UnicodeDecodeError):
        return None
    n = tbl.num_rows
    if n != body.count(b"\n") + 1:         # two objects on a line, or a blank one
        return None
    ph = tbl.column("ph")
    is_x = pc.fill_null(pc.equal(ph, "X"), False)
    nx = pc.sum(is_x).as_py() or 0
    meta: list = []
    if nx != n:
        is_m = pc.fill_null(pc.equal(ph, "M"), False)
        if nx + (pc.sum(is_m).as_py() or 0) != n:
            return None                     # counters and other phases: the dict path
        lines = body.split(b"\n")
        for i in np.flatnonzero(is_m.to_numpy(zero_copy_only=False)).tolist():
            try:
                rec = _loads(lines[i])
            except ValueError:
                rec = None
            if type(rec) is not dict or rec.get("ph") != "M":
                return None
            meta.append(rec)
        tbl = tbl.filter(is_x)
    if b'"fhash2"' in body and body.count(b'"fhash2"') != \
            len(tbl.column("args").combine_chunks().field("fhash2").drop_null()):
        return None                         # a null fhash2 counts as a copy in the dict path
    return tbl, meta, n, closed


def chunks(reader: TraceReader):
    """``("scan", [fastscan.Block])``, ``("table", pa.Table)`` or ``("dicts", [event
    dicts])`` for each chunk, with the same boundaries, metadata and statistics as
    ``reader.chunks()``."""
    stats, meta = reader.stats, reader.meta
    scan = scanner() if SCAN and reader.loads is None else None
    parts: list = []            # (block, Block or table or None, events)
    pending = 0
    for data in reader._raw_pieces():
        for block in _blocks(data, PARSE_BLOCK):
            got = None
            if reader.loads is None:
                if scan is not None:
                    got = scan_block(block, scan)
                if got is None:
                    got = parse_block_columns(block)
            if got is not None:
                tbl, metas, nrec, closed = got
                stats.closed |= closed
                stats.records += nrec
                for r in metas:
                    meta.absorb(r)
                if tbl is None or not tbl.num_rows:
                    continue
                parts.append((block, tbl, None))
                pending += tbl.num_rows
            else:
                events = block_events(block, reader.loads, stats, meta)
                if not events:
                    continue
                parts.append((block, None, events))
                pending += len(events)
            if pending >= reader.chunk_events:
                stats.events += pending
                yield _flush(parts, reader)
                parts, pending = [], 0
    if parts:
        stats.events += pending
        yield _flush(parts, reader)


def _flush(parts: list, reader: TraceReader):
    if all(isinstance(t, fastscan.Block) for _, t, _ in parts):
        return "scan", [t for _, t, _ in parts]
    if all(t is not None for _, t, _ in parts):
        tables = []
        for block, t, _ in parts:
            if isinstance(t, fastscan.Block):   # a chunk of both kinds: pyarrow's columns
                t = (parse_block_columns(block) or (None,))[0]
                if t is None:
                    break
            tables.append(t)
        else:
            return "table", tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    events: list = []
    for block, tbl, evs in parts:
        if evs is None:             # read again as dicts (its metadata is absorbed already)
            records, _, _ = parse_block(block, reader.loads)
            evs = [r for r in records if r.get("ph") != "M"]
        events.extend(evs)
    return "dicts", events


def _f64(arr, default: float) -> np.ndarray:
    """A numeric column as _numbers gives it: null, NaN, negative or past 2**53 -> default."""
    a = arr.to_numpy(zero_copy_only=False)
    if a.dtype != np.float64:
        a = a.astype(np.float64) if arr.null_count == 0 else \
            pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    else:
        a = np.array(a, np.float64)
    bad = ~np.isfinite(a) | (a < 0) | (a > MAX_VALUE)
    if bad.any():
        a[bad] = default
    return a


def _codes(arr) -> tuple[np.ndarray, list]:
    """Dictionary codes of a string column (-1: null) and its values in first-seen order."""
    enc = pc.dictionary_encode(arr).combine_chunks() if isinstance(arr, pa.ChunkedArray) \
        else pc.dictionary_encode(arr)
    idx = enc.indices
    codes = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) \
        if idx.null_count else idx.to_numpy().astype(np.int64)
    return codes, enc.dictionary.to_pylist()


def _first_seen(codes: np.ndarray, n: int) -> np.ndarray:
    """A renumbering of ``codes`` (0..n-1, -1 kept) by first appearance."""
    valid = codes >= 0
    u, first = np.unique(codes[valid], return_index=True)
    order = u[np.argsort(first, kind="stable")]
    remap = np.full(n + 1, -1, np.int64)
    remap[order] = np.arange(len(order))
    return remap[codes]


class Columns:
    """One chunk of complete events as the arrays Aggregate.add_columns reads."""

    def __init__(self, tbl):
        _arrow()
        tbl = tbl.combine_chunks()
        n = self.n = tbl.num_rows
        args = tbl.column("args").chunk(0) if tbl.column("args").num_chunks else None
        if args is None:
            args = pa.array([None] * n, SCHEMA.field("args").type)
        field = args.field
        # A null args object is an empty one: its fields read as missing.
        if args.null_count:
            field = (lambda name, a=args: pc.if_else(a.is_valid(), a.field(name),
                                                     pa.nulls(len(a), a.type.field(name).type)))
        self._field = field
        # (cat, name) keys in first-seen order; a missing name or category reads as "".
        cc, cl = _codes(tbl.column("cat"))
        nc, nl = _codes(tbl.column("name"))
        cl.append("")
        nl.append("")
        cc = np.where(cc < 0, len(cl) - 1, cc)
        nc = np.where(nc < 0, len(nl) - 1, nc)
        raw = cc * len(nl) + nc
        u, first, inv = np.unique(raw, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(u), np.int64)
        rank[order] = np.arange(len(u))
        self.op = rank[inv.reshape(-1)]
        keys = [(cl[k // len(nl)], nl[k % len(nl)]) for k in u[order].tolist()]
        # Two raw keys may read the same once null is "" (a null and an empty name).
        kmap: dict = {}
        remap = np.array([kmap.setdefault(k, len(kmap)) for k in keys], np.int64)
        self.op, self.keys = remap[self.op], list(kmap)
        # File keys: fhash, else "\0" + fname.
        hc, hl = _codes(field("fhash"))
        fc, fl = _codes(field("fname"))
        code = np.where(hc >= 0, hc, np.where(fc >= 0, len(hl) + fc, -1))
        allkeys = hl + ["\0" + s for s in fl]
        fmap: dict = {}
        kremap = np.array([fmap.setdefault(k, len(fmap)) for k in allkeys] + [-1], np.int64)
        code = kremap[code]
        self.fil = _first_seen(code, len(fmap))
        inv_map = list(fmap)
        nf = int(self.fil.max()) + 1 if n and self.fil.max() >= 0 else 0
        self.fkeys = [None] * nf
        sel = self.fil >= 0
        self.fkeys_from(code[sel], self.fil[sel], inv_map)
        self.ts = _f64(tbl.column("ts"), -1)
        self.dur = _f64(tbl.column("dur"), 0)
        self.pid = _f64(tbl.column("pid"), -1)
        self.tid = _f64(tbl.column("tid"), -1)
        self.size = _f64(field("size"), -1)
        self.count = _f64(field("count"), -1)
        self.errno = _f64(field("errno"), 0)
        self._offset = None
        self.ft, self.ftlist = _codes(field("ftype"))
        h0 = field("hhash")[0].as_py() if n else None
        self.hhash = h0
        f2 = field("fhash2")
        self.two = np.flatnonzero(f2.is_valid().to_numpy(zero_copy_only=False)) \
            if f2.null_count != n else np.zeros(0, np.int64)
        self.two_keys = f2.take(pa.array(self.two)).to_pylist() if len(self.two) else []
        self._cache: dict = {}

    def fkeys_from(self, code, fil, names) -> None:
        if len(code):
            u, i = np.unique(fil, return_index=True)
            for f, c in zip(u.tolist(), code[i].tolist()):
                self.fkeys[f] = names[c]

    def arg(self, i: int, key: str):
        """Row i's arg as the dict path's ``args.get(key)`` (opens, seeks and copies)."""
        col = self._cache.get(key)
        if col is None:
            arr = self._field(key)
            if pa.types.is_integer(arr.type):     # exact ints, None where missing
                col = (pc.fill_null(arr, 0).to_numpy(zero_copy_only=False),
                       arr.is_valid().to_numpy(zero_copy_only=False))
            else:
                col = (arr.to_numpy(zero_copy_only=False), None)
            self._cache[key] = col
        vals, valid = col
        if valid is None:
            return vals[i]
        return int(vals[i]) if valid[i] else None

    def ints(self, idx: np.ndarray, key: str):
        """(int64 values, present) of rows ``idx`` of an int column (the schema's ints)."""
        col = self._cache.get(key)
        if col is None:
            self.arg(0, key)
            col = self._cache[key]
        vals, valid = col
        return vals[idx], valid[idx]

    def offsets(self, idx: np.ndarray) -> np.ndarray:
        if self._offset is None:
            self._offset = _f64(self._field("offset"), -1)
        return self._offset[idx]


def _sane(a: np.ndarray, default: float) -> np.ndarray:
    """_f64 of float64 values (NaN: missing), in place."""
    bad = ~np.isfinite(a) | (a < 0) | (a > MAX_VALUE)
    if bad.any():
        a[bad] = default
    return a


def _merge(blocks: list, codes, keys) -> tuple[np.ndarray, list]:
    """Per-block codes (-1: none) renumbered over the chunk, and the chunk's values in
    first-seen order: each block's values are in first-seen order, and blocks in trace
    order, so a dict filled block by block keeps it."""
    if len(blocks) == 1:
        values = list(keys(blocks[0]))
        if len(set(values)) == len(values):    # (a missing and an empty name are both "")
            return codes(blocks[0]).astype(np.int64), values
    seen: dict = {}
    parts = []
    for b in blocks:
        remap = np.array([seen.setdefault(k, len(seen)) for k in keys(b)] + [-1], np.int64)
        parts.append(remap[codes(b)])
    return np.concatenate(parts), list(seen)


class ScanColumns:
    """One chunk of complete events, from the scanner's blocks, as the arrays
    Aggregate.add_columns reads (:class:`Columns`' attributes, the same values).

    The float columns are written block by block into the chunk's arrays (by fold.c's
    kernels where the site has them: one pass instead of a concatenation and six numpy
    passes); the int and string columns only a few rows need (ret, flags, ftype2) are put
    together when first asked for."""

    def __init__(self, blocks: list):
        self._blocks = blocks
        self.n = sum(b.n for b in blocks)
        self.op, self.keys = _merge(blocks, lambda b: b.op, lambda b: b.op_keys)
        self.fil, self.fkeys = _merge(blocks, lambda b: b.fil, lambda b: b.file_keys)
        self._int: dict = {}
        self._str: dict = {}
        self.ts = self._f64("ts", -1)
        self.dur = self._f64("dur", 0)
        self.pid = self._f64("pid", -1)
        self.tid = self._f64("tid", -1)
        self.size = self._f64("size", -1)
        self.count = self._f64("count", -1)
        self.errno = self._f64("errno", 0)
        self._offset = None
        self.ft, self.ftlist = self._strings("ftype")
        self.hhash = None               # the first row's (the chunk's first host hash)
        if self.n:
            b0, k = blocks[0], fastscan.STRINGS.index("hhash")
            c = int(b0.code[k][0])
            self.hhash = b0.strings[k][c] if c >= 0 else None
        k = fastscan.STRINGS.index("fhash2")
        two, self.two_keys, at = [], [], 0
        for b in blocks:                # copies: few rows
            c = b.code[k]
            idx = np.flatnonzero(c >= 0)
            if len(idx):
                two.append(idx + at)
                self.two_keys += [b.strings[k][x] for x in c[idx].tolist()]
            at += b.n
        self.two = np.concatenate(two) if two else np.zeros(0, np.int64)

    def _f64(self, name: str, default: float) -> np.ndarray:
        """Column ``name`` of the chunk (a float one: ts, dur; else an int one) as float64,
        sanitised as _sane does (an int not given: missing)."""
        blocks = self._blocks
        is_float = name in fastscan.FLOATS
        i = (fastscan.FLOATS if is_float else fastscan.INTS).index(name)
        from .analysis import _folder

        folder = _folder()
        if folder is not None:
            out = np.empty(self.n, np.float64)
            at = 0
            for b in blocks:
                if is_float:
                    folder.floats(b.flt[i], None, default, out[at:at + b.n])
                else:
                    folder.floats(b.ival[i], b.iok[i], default, out[at:at + b.n])
                at += b.n
            return out
        if is_float:
            return _sane(np.concatenate([b.flt[i] for b in blocks]), default)
        vals, given = self._ints_of(i)
        a = vals.astype(np.float64)
        a[~given] = np.nan
        return _sane(a, default)

    def _ints_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 values, given) of int column ``i`` over the chunk."""
        got = self._int.get(i)
        if got is None:
            blocks = self._blocks
            got = self._int[i] = (np.concatenate([b.ival[i] for b in blocks]),
                                  np.concatenate([b.iok[i] for b in blocks]))
        return got

    def _strings(self, key: str):
        got = self._str.get(key)
        if got is None:
            k = fastscan.STRINGS.index(key)
            got = self._str[key] = _merge(self._blocks, lambda b: b.code[k],
                                          lambda b: b.strings[k])
        return got

    def arg(self, i: int, key: str):
        """Row i's arg as the dict path's ``args.get(key)`` (opens, seeks and copies)."""
        if key in fastscan.INTS:
            vals, given = self._ints_of(fastscan.INTS.index(key))
            return int(vals[i]) if given[i] else None
        codes, values = self._strings(key)
        return values[codes[i]] if codes[i] >= 0 else None

    def ints(self, idx: np.ndarray, key: str):
        """(int64 values, present) of rows ``idx`` of an int column."""
        vals, given = self._ints_of(fastscan.INTS.index(key))
        return vals[idx], given[idx]

    def offsets(self, idx: np.ndarray) -> np.ndarray:
        if self._offset is None:
            self._offset = self._f64("offset", -1)
        return self._offset[idx]
