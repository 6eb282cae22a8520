"""The same summary computed with dask (``datacrumbs report --dask``).

The units of work and the per-unit function are the local ones (merge.py);
dask only schedules them (a bag of files and member ranges), and the partials
are merged in unit order, so the numbers are identical to a local run. With a
``dask.distributed`` client active, the same graph runs on a cluster.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..errors import DatacrumbsError
from .merge import add_run_summaries, default_jobs, find_traces, plan_units, summarize_unit
from .model import Aggregate


def summarize_paths(paths: Iterable[str | os.PathLike], *, jobs: int | None = None,
                    scheduler: str | None = "processes") -> Aggregate:
    try:
        import dask.bag as db
    except ImportError:
        raise DatacrumbsError("--dask needs dask: install datacrumbs[dask] "
                              "(pip install 'dask[dataframe]')") from None
    traces = find_traces(paths)
    agg = Aggregate()
    units = plan_units(traces, jobs or default_jobs(), agg)
    if units:
        bag = db.from_sequence(units, npartitions=len(units))
        kwargs = {"scheduler": scheduler} if scheduler else {}    # a name or a get function
        if scheduler == "processes":
            kwargs["num_workers"] = jobs or default_jobs()
        for part in bag.map(summarize_unit).compute(**kwargs):
            agg.merge(part)
    add_run_summaries(traces, agg)
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
