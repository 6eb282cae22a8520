"""A session's raw tracepoint links, made in a thread while the engine attaches the rest.

The kernel attaches raw tracepoints one at a time (its tracepoints mutex), about 0.15 ms
each: 844 of a 10,000-probe file took 0.13 s of a start, one system call each from
Python. Here they go to the kernel in one C call (libbpf.raw_tracepoint_links) that
holds no GIL, in a thread, while the engine's own thread writes the other specs and
attaches uprobes and system calls; the engine takes the results before it is ready.
The probes' specs are written before the links exist, as for every other probe.
"""

from __future__ import annotations

import threading

from . import libbpf


class Batch:
    """Raw tracepoint links for ``items`` [(probe index, tracepoint name)] of one program,
    begun at once in a thread; ``results`` waits for them."""

    def __init__(self, prog_fd: int, items: list[tuple[int, str]]):
        self.items = items
        self._out: list | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(prog_fd,),
                                        name="datacrumbs-rawtp")
        self._thread.start()

    def _run(self, prog_fd: int) -> None:
        try:
            self._out = libbpf.raw_tracepoint_links(
                prog_fd, [(name, index) for index, name in self.items])
        except BaseException as exc:  # noqa: BLE001 - raised again by results()
            self._error = exc

    def results(self) -> list[tuple[int, object]]:
        """[(probe index, FdLink or AttachFailed)] in the order given."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return list(zip((index for index, _name in self.items), self._out))

    def discard(self) -> None:
        """Wait for the links and detach them (the engine failed before taking them)."""
        self._thread.join()
        for got in self._out or []:
            if isinstance(got, libbpf.FdLink):
                got.destroy()
