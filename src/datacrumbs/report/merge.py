"""Summarise many traces (a job's directory, all its nodes) on every core.

Work is cut into units: a whole file, or for a big file a range of its gzip
members (found in one inflate-only pass), so even a single huge trace keeps
both cores busy. Each unit becomes a partial :class:`Aggregate` in a worker
process; partials merge in unit order, which is exact (see model.py), so the
result does not depend on the number of workers or on dask.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..trace import gzindex
from ..trace.reader import (ReadStats, TailInfo, TraceReadError, TraceReader, iter_members,
                            open_trace, without_surrogates)
from .model import Aggregate, summarize_reader
from .heap import keep_freed_memory

TRACE_PATTERNS = ("*.pfw.gz", "*.pfw")
SUMMARY_SUFFIX = ".summary.json"
#: Files larger than this (compressed) are split into member ranges.
SPLIT_BYTES = 16 << 20
MAX_SUMMARY_BYTES = 16 << 20
#: Whole files when they share out evenly (see _balanced_whole); tests turn it off to cut.
WHOLE_WHEN_BALANCED = True
BALANCE = 1.1
#: Events per chunk a worker aggregates at once: numpy's per-call costs and the per-stream
#: merges are paid per chunk, so big chunks are cheaper; 131,072 events keep a worker near
#: 300 MB (262,144: 430 MB for 3% less CPU).
CHUNK_EVENTS = 131072
#: Units a big file is cut into per worker. Each unit's partial is pickled, sent and merged
#: in the parent while the workers wait on the pipe (7 MB and about 20 ms a partial on the
#: bench trace); 4 a worker still share the work evenly. 10 M events, one file, 2 workers,
#: runs alternated: 2.83-2.95 M events/s with 2, 3 or 4, 2.75-2.77 M/s with 8.
UNITS_PER_JOB = 4
#: Cut traces at the members their own index lists (trace/gzindex.py) instead of inflating
#: them first; tests turn it off to compare.
USE_INDEX = True
#: Files cut by their index, and summaries redone because a worker found the index false.
INDEX_COUNTS = {"used": 0, "refused": 0, "lied": 0}


class _IndexLied(Exception):
    """A unit cut by an index did not read as whole, clean members: start again without."""


class NoTraces(TraceReadError):
    """A path that names no trace at all."""


@dataclass(frozen=True)
class Unit:
    """A slice of work: ``path`` from byte ``start`` to ``end`` (None: to its end)."""

    path: str
    start: int = 0
    end: int | None = None
    size: int = 0
    indexed: bool = False       # cut at offsets the trace's index gave (checked by the worker)
    bounds: tuple = ()          # where the index says its members start (reads end there)


def find_traces(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The trace files named by files and directories (searched recursively), in a stable order."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        try:
            is_dir = p.is_dir()
            exists = is_dir or p.exists() or p.is_symlink()
        except PermissionError:
            raise TraceReadError(f"{p}: permission denied (a directory on the way is not "
                                 "accessible); run as the job's user or root") from None
        if not exists:
            raise NoTraces(f"{p}: no such file or directory; give trace files (*.pfw.gz) "
                           "or a job's trace directory")
        if is_dir:
            try:
                hits = sorted({h for pat in TRACE_PATTERNS for h in p.rglob(pat) if h.is_file()})
            except PermissionError as exc:
                raise TraceReadError(f"{exc.filename or p}: permission denied; "
                                     "run as the job's user or root") from None
            if not hits:
                raise NoTraces(f"{p}: directory contains no traces (*.pfw.gz); "
                               "give the directory the job's traces were written to")
            found.extend(hits)
        else:
            found.append(p)
    unique, seen = [], set()
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def summary_path(trace: Path) -> Path | None:
    """``trace-U-J-H.pfw.gz`` -> ``trace-U-J-H.summary.json`` (the daemon's run summary)."""
    for suffix in (".pfw.gz", ".pfw"):
        if trace.name.endswith(suffix):
            return trace.with_name(trace.name[: -len(suffix)] + SUMMARY_SUFFIX)
    return None


def read_run_summary(path: Path) -> dict:
    """A daemon summary.json, bounded in size; raises TraceReadError with a readable message."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SUMMARY_BYTES + 1)
    except OSError as exc:
        raise TraceReadError(f"{path}: cannot read run summary: {exc.strerror}") from None
    if len(data) > MAX_SUMMARY_BYTES:
        raise TraceReadError(f"{path}: run summary larger than {MAX_SUMMARY_BYTES} bytes; ignored")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceReadError(f"{path}: run summary is not valid JSON ({exc}); ignored") from None
    except RecursionError:
        raise TraceReadError(f"{path}: run summary nested deeper than any summary; "
                             "ignored") from None
    if not isinstance(doc, dict) or doc.get("format") != "datacrumbs-summary":
        raise TraceReadError(f"{path}: not a datacrumbs run summary (format "
                             f"{doc.get('format') if isinstance(doc, dict) else None!r}); ignored")
    return without_surrogates(doc)     # the job user's file: anything may be in it


def _balanced_whole(sizes: list[int], jobs: int) -> bool:
    """Whether whole files keep ``jobs`` workers as busy as cutting them would: the
    largest-first assignment of the files ends within BALANCE of an even share. Then no
    file is cut, and this process inflates nothing (a cut needs its member boundaries:
    an inflate-only pass, a ninth of the report's CPU). A job's traces, one per node,
    are usually that many and that even."""
    if len(sizes) < jobs or not sum(sizes):
        return False
    loads = [0] * jobs
    for size in sorted(sizes, reverse=True):
        loads[loads.index(min(loads))] += size
    return max(loads) <= BALANCE * sum(sizes) / jobs


def _index(trace: Path) -> list | None:
    """The members a trace's own index lists (gzindex.read_index), None without one;
    TraceReadError when it cannot be opened."""
    with open_trace(trace) as f:
        return gzindex.read_index(f)


def _indexed_units(trace: Path, size: int, target: int) -> list[Unit] | None:
    """The units of a trace cut at the members its index lists, or None without one."""
    try:
        entries = _index(trace)
    except TraceReadError:
        return None
    if entries is None:
        INDEX_COUNTS["refused"] += 1
        return None
    INDEX_COUNTS["used"] += 1
    path, units, start, bounds = str(trace), [], 0, []
    for e in entries[1:]:
        bounds.append(e.offset)
        if e.offset - start >= target:
            units.append(Unit(path, start, e.offset, e.offset - start, True, tuple(bounds)))
            start, bounds = e.offset, []
    units.append(Unit(path, start, size, size - start, True, tuple(bounds)))  # and the index
    return units


def _member_starts(trace: Path) -> tuple:
    """Where the index of a trace read whole says its members start (its reads end there,
    see iter_members), or () without one."""
    try:
        entries = _index(trace)
    except TraceReadError:
        return ()
    return tuple(e.offset for e in entries[1:]) if entries else ()


def iter_units(traces: list[Path], jobs: int, pre: Aggregate,
               use_index: bool = False) -> Iterator[Unit]:
    """Cut the work, yielding units as soon as they are known.

    A big file is indexed by member in this process while workers already
    summarise the ranges yielded before (the inflate-only pass costs about a
    tenth of the parsing); files that already share out evenly are not cut.
    """
    sizes: dict[str, int] = {}
    for trace in traces:
        try:
            sizes[str(trace)] = trace.stat().st_size
        except OSError as exc:
            pre.add_unreadable(str(trace), f"{trace}: cannot read: {exc.strerror}")
    whole = WHOLE_WHEN_BALANCED and _balanced_whole(list(sizes.values()), jobs)
    for trace in traces:
        path = str(trace)
        size = sizes.get(path)
        if size is None:
            continue
        if jobs <= 1 or size <= SPLIT_BYTES or whole:
            yield Unit(path, 0, None, size, bounds=_member_starts(trace) if size > SPLIT_BYTES
                       else ())
            continue
        target = max(SPLIT_BYTES // 4, size // (jobs * UNITS_PER_JOB))
        units = _indexed_units(trace, size, target) if use_index else None
        if units is not None:   # whole, clean members if the workers agree (_summarize_indexed)
            yield from units
            pre.source(path).stats = ReadStats(path)
            continue
        tail = TailInfo()
        start = None
        found = 0
        try:
            with open_trace(trace) as f:
                for info, _ in iter_members(f, tail=tail, max_member_bytes=1 << 62):
                    if info is None:    # lines of a damaged last member: its worker keeps them
                        continue
                    found += 1
                    start = info.offset if start is None else start
                    end = info.offset + info.length
                    if end - start >= target:
                        yield Unit(path, start, end, end - start)
                        start = None
        except TraceReadError as exc:
            pre.add_unreadable(path, str(exc))
            continue
        if not found:
            yield Unit(path, 0, None, size)    # the worker reports what is wrong with it
            continue
        if tail.error:      # the last unit reads the damage too, as one reader of the file would
            start = end if start is None else start
            yield Unit(path, start, None, size - start)
            continue
        if start is not None:
            yield Unit(path, start, end, end - start)
        pre.source(path).stats = ReadStats(path)


def plan_units(traces: list[Path], jobs: int, pre: Aggregate) -> list[Unit]:
    return list(iter_units(traces, jobs, pre))


def summarize_unit(unit: Unit) -> Aggregate:
    """One unit's partial summary (runs in a worker process; must not raise for bad data)."""
    agg = Aggregate()
    try:
        reader = TraceReader(unit.path, start=unit.start, end=unit.end, chunk_events=CHUNK_EVENTS,
                             bounds=unit.bounds)
        summarize_reader(reader, agg)
        if reader.stats.records == 0 and reader.stats.bad_lines:
            agg = Aggregate()
            agg.add_unreadable(unit.path, f"{unit.path}: not a trace ({reader.stats.bad_lines:,} lines, "
                                          "none a JSON event object)")
    except TraceReadError as exc:
        agg = Aggregate()
        agg.add_unreadable(unit.path, str(exc))
    except OSError as exc:
        agg = Aggregate()
        agg.add_unreadable(unit.path, f"{unit.path}: cannot read: {exc.strerror or exc}")
    return agg


def _summarize_indexed(unit: Unit) -> tuple[Aggregate, bool]:
    """summarize_unit, and whether the unit read as whole members ending at its end with
    nothing dropped: what cutting there without inflating first assumed (by induction from
    offset 0, every cut of the file is then a member boundary, as inflating would find)."""
    agg = summarize_unit(unit)
    st = agg.sources.get(unit.path)
    stats = st.stats if st is not None else None
    clean = stats is not None and not (stats.torn_tail or stats.tail_error or
                                       stats.dropped_bytes or stats.partial_member_kept)
    return agg, clean and not agg.unreadable


def summarize_checked(unit: Unit) -> tuple[Aggregate, bool]:
    """A unit's partial, and False when it was cut by an index the worker found false
    (the caller starts again without the index): for schedulers that take one function."""
    return _summarize_indexed(unit) if unit.indexed else (summarize_unit(unit), True)


def add_run_summaries(traces: list[Path], agg: Aggregate) -> None:
    for trace in traces:
        sp = summary_path(trace)
        if sp is None or not sp.exists():
            continue
        try:
            agg.add_run_summary(str(sp), read_run_summary(sp))
        except TraceReadError as exc:
            agg.add_unreadable(str(sp), str(exc))


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def summarize_paths(paths: Iterable[str | os.PathLike], *, jobs: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> Aggregate:
    """Everything the report shows for ``paths``: traces found, split, summarised, merged."""
    traces = find_traces(paths)
    jobs = default_jobs() if jobs is None else max(1, jobs)
    agg = Aggregate()
    total = 0
    for trace in traces:
        try:
            total += trace.stat().st_size
        except OSError:
            pass
    if on_progress:
        on_progress(0, total)
    # Unpickling and merging partials makes hundreds of thousands of small acyclic objects:
    # the cyclic GC would rescan the growing aggregate for nothing (a third of the
    # parent's CPU on a 2 M event trace).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            _merge_units(traces, jobs, total, agg, on_progress, USE_INDEX)
        except _IndexLied:      # rare (a damaged or forged trace): the inflating path decides
            INDEX_COUNTS["lied"] += 1
            agg = Aggregate()
            if on_progress:
                on_progress(0, total)
            _merge_units(traces, jobs, total, agg, on_progress, False)
    finally:
        if was_enabled:
            gc.enable()
    add_run_summaries(traces, agg)
    return agg


def _merge_units(traces: list[Path], jobs: int, total: int, agg: Aggregate,
                 on_progress: Callable[[int, int], None] | None, use_index: bool = False) -> None:
    done = 0
    # Each partial is merged as soon as it and those before it are done, so the parent
    # holds a few partials at a time, not all of them (a partial keeps per-file and
    # per-thread state: see analysis.py).
    if jobs <= 1 or (len(traces) <= 1 and total <= SPLIT_BYTES):
        keep_freed_memory()     # this process reads the traces itself
        for unit in iter_units(traces, 1, agg):
            agg.merge(summarize_unit(unit))
            done += unit.size
            if on_progress:
                on_progress(done, total)
    else:
        # forkserver: the parent may run threads (rich's progress refresh), which fork would copy.
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                 initializer=keep_freed_memory) as pool:
            futures = [(pool.submit(_summarize_indexed if u.indexed else summarize_unit, u),
                        u.size, u.indexed) for u in iter_units(traces, jobs, agg, use_index)]
            futures.reverse()
            while futures:                  # submission order: deterministic
                fut, size, indexed = futures.pop()
                part = fut.result()
                if indexed:
                    part, clean = part
                    if not clean:
                        for other, _, _ in futures:
                            other.cancel()
                        raise _IndexLied
                agg.merge(part)
                del fut
                done += size
                if on_progress:
                    on_progress(done, total)


def summarize(paths: Iterable[str | os.PathLike], *, jobs: int | None = None, top: int = 10,
              on_progress: Callable[[int, int], None] | None = None) -> dict:
    """The finished summary dict of ``paths`` (what ``datacrumbs report`` renders)."""
    return summarize_paths(paths, jobs=jobs, on_progress=on_progress).finalize(top=top)
