"""Stand-in for the ``flux`` package (see tests/flux_contract/__init__.py): no instance here."""

import errno


class Flux:
    """Like flux.Flux() outside an instance (e.g. ``flux run --dry-run``): connecting fails."""

    def __init__(self, *args, **kwargs):
        raise OSError(errno.ENOENT, "Unable to connect to Flux: no FLUX_URI (stand-in)")
