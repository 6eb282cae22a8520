"""The same summary computed with dask (``datacrumbs report --dask``).

The units of work and the per-unit function are the local ones (merge.py);
dask only schedules them (a bag of files and member ranges), and the partials
are merged in unit order, so the numbers are identical to a local run. With a
``dask.distributed`` client active, the same graph runs on a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable

from ..errors import DatacrumbsError
from . import merge
from .heap import keep_freed_memory
from .merge import add_run_summaries, default_jobs, find_traces, iter_units, summarize_checked
from .model import Aggregate

BATCH_PER_WORKER = 2


def summarize_paths(paths: Iterable[str | os.PathLike], *, jobs: int | None = None,
                    scheduler: str | None = "processes") -> Aggregate:
    try:
        import dask.bag as db
    except ImportError:
        raise DatacrumbsError("--dask needs dask: install datacrumbs[dask] "
                              "(pip install 'dask[dataframe]')") from None
    traces = find_traces(paths)
    try:    # cut at the traces' member indexes, checked as in merge.summarize_paths
        agg = _summarize(db, traces, jobs, scheduler, merge.USE_INDEX)
    except merge._IndexLied:
        merge.INDEX_COUNTS["lied"] += 1
        agg = _summarize(db, traces, jobs, scheduler, False)
    add_run_summaries(traces, agg)
    return agg


def _summarize(db, traces, jobs, scheduler, use_index: bool) -> Aggregate:
    agg = Aggregate()
    units = list(iter_units(traces, jobs or default_jobs(), agg, use_index))
    kwargs = {"scheduler": scheduler} if scheduler else {}    # a name or a get function
    pool = None
    if scheduler == "processes" and units:
        kwargs["num_workers"] = jobs or default_jobs()
        # one pool for every batch (dask would start one per compute: imports each time)
        pool = ProcessPoolExecutor(max_workers=kwargs["num_workers"],
                                   mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=keep_freed_memory)
        kwargs["pool"] = pool
    # A few units per worker at a time: compute() returns all its partials at once, and
    # 10 M events' 32 partials took 1.7 GB here; merged in unit order, batch after batch.
    batch = BATCH_PER_WORKER * (jobs or default_jobs())
    try:
        for first in range(0, len(units), batch):
            part_units = units[first:first + batch]
            bag = db.from_sequence(part_units, npartitions=len(part_units))
            for part, clean in bag.map(summarize_checked).compute(**kwargs):
                if not clean:
                    raise merge._IndexLied
                agg.merge(part)
    finally:
        if pool is not None:
            pool.shutdown()
    return agg


def summarize(paths, *, top: int = 10, jobs: int | None = None,
              scheduler: str | None = "processes") -> dict:
    return summarize_paths(paths, jobs=jobs, scheduler=scheduler).finalize(top=top)


def summarize_on_cluster(paths, address: str, *, top: int = 10, jobs: int | None = None,
                         connect_timeout: float = 10.0) -> dict:
    """The same summary on a dask.distributed cluster: its workers read the traces (they
    must see the same paths, e.g. a shared file system) and the partials come back here
    to be merged in unit order, so the numbers are the local ones."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise DatacrumbsError("--dask-scheduler needs dask.distributed: install "
                              "datacrumbs[dask]") from None
    try:
        client = Client(address, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DatacrumbsError(f"cannot reach the dask scheduler at {address}: {exc}; start one "
                              "(dask scheduler) or check the address") from None
    with client:
        absolute = [os.path.abspath(p) for p in paths]   # the workers' cwd is not ours
        return summarize_paths(absolute, jobs=jobs or max(1, len(client.nthreads())),
                               scheduler=client.get).finalize(top=top)
