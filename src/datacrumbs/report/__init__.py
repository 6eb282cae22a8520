"""Reading a job's traces back: the summary model, its renderings and the Perfetto export.

``model`` aggregates events into mergeable partials; ``merge`` spreads files and
member ranges over processes; ``terminal``, ``html``/``plots`` and ``json_out``
render the same summary dict; ``export`` writes one Perfetto-viewable trace;
``dask_backend`` computes the same summary with dask.
"""
