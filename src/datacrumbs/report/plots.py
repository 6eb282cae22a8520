"""The report's plots as PNG bytes, drawn from the summary dict alone.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so
nothing is left open after a plot and no display is needed.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_POINTS = 400
MAX_SERIES = 12


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def timeline(summary: dict) -> bytes | None:
    """Bandwidth per node over time (MiB/s), bins widened to at most MAX_POINTS."""
    series = summary["timeline"]["series"]
    if not series:
        return None
    bin_us = summary["timeline"]["bin_us"]
    start = min(pts[0][0] for pts in series.values())
    end = max(pts[-1][0] for pts in series.values()) + bin_us
    factor = max(1, int(np.ceil((end - start) / bin_us / MAX_POINTS)))
    width = bin_us * factor
    nbins = int(np.ceil((end - start) / width))
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot()
    hosts = sorted(series, key=lambda h: -sum(v for _, v in series[h]))
    for host in hosts[:MAX_SERIES]:
        pts = np.array(series[host], dtype=np.float64)
        idx = ((pts[:, 0] - start) // width).astype(np.int64)
        vals = np.bincount(idx, weights=pts[:, 1], minlength=nbins)
        x = (np.arange(nbins) * width) / 1e6
        ax.step(x, vals / (width / 1e6) / (1 << 20), where="post", label=host)
    ax.set_xlabel("seconds since the first event")
    ax.set_ylabel("MiB/s")
    ax.set_title("I/O bandwidth per node")
    if len(hosts) > 1:
        ax.legend(fontsize="small", title=f"{min(len(hosts), MAX_SERIES)} of {len(hosts)} nodes")
    return _png(fig)


def latency(summary: dict, limit: int = 6) -> bytes | None:
    """Latency histograms of the operations that took the most time."""
    hists = summary["latency_histograms"]
    names = [f"{o['category']}/{o['name']}" for o in summary["operations"]
             if f"{o['category']}/{o['name']}" in hists][:limit]
    if not names:
        return None
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot()
    for name in names:
        rows = np.array(hists[name], dtype=np.float64)
        # geometric bin centres; zero-length calls (bin 0) at half a nanosecond
        centers = np.maximum(np.sqrt(np.maximum(rows[:, 0], 5e-4) * rows[:, 1]), 5e-4)
        ax.plot(centers, rows[:, 2], marker=".", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("operations")
    ax.set_title("Latency per operation")
    ax.legend(fontsize="small")
    return _png(fig)


def access_sizes(summary: dict, limit: int = 6) -> bytes | None:
    """How many operations moved how many bytes (power-of-two bins)."""
    sizes = summary["access_sizes"]
    if not sizes:
        return None
    top = sorted(sizes, key=lambda k: -sum(r[2] for r in sizes[k]))[:limit]
    all_bins = sorted({r[0] for k in top for r in sizes[k]})
    pos = {b: i for i, b in enumerate(all_bins)}
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot()
    width = 0.8 / len(top)
    for j, name in enumerate(top):
        xs = [pos[r[0]] + j * width for r in sizes[name]]
        ax.bar(xs, [r[2] for r in sizes[name]], width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(all_bins))])
    ax.set_xticklabels([_size_label(b) for b in all_bins], rotation=45, fontsize="small")
    ax.set_xlabel("bytes moved per operation (at least; bins double)")
    ax.set_ylabel("operations")
    ax.set_title("Access sizes")
    ax.legend(fontsize="small")
    return _png(fig)


def _size_label(b: int) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if b < 1024:
            return f"{b}{unit}"
        b //= 1024
    return f"{b}P"


def files(summary: dict) -> bytes | None:
    """The top files by bytes as horizontal bars."""
    rows = [f for f in summary["top_files_by_bytes"] if f["bytes"]]
    if not rows:
        return None
    fig = Figure(figsize=(9, 0.4 * len(rows) + 1.2))
    ax = fig.add_subplot()
    labels = [_short(f["path"]) for f in rows][::-1]
    ax.barh(range(len(rows)), [f["bytes"] / (1 << 20) for f in rows][::-1])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_xlabel("MiB")
    ax.set_title("Top files by bytes")
    return _png(fig)


def _short(path: str, width: int = 50) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


ALL = (("I/O timeline", timeline), ("Latency", latency), ("Access sizes", access_sizes),
       ("Files", files))
