"""datacrumbs: per-job eBPF I/O tracing for HPC clusters run by Flux."""

__version__ = "0.1.0"
