"""Probes files: what to trace, who may trace it, and the one trust decision.

The error family lives here (not in verify.py) so that document.py, which
reads files, and verify.py, which judges them, can both raise it without
importing each other. ``datacrumbs.probes.verify`` re-exports every class.
"""

from __future__ import annotations

import os

from ..errors import DatacrumbsError

REGENERATE = "generate and sign a new probes file with `datacrumbs probes generate --sign`"


class ProbesFileError(DatacrumbsError):
    """A probes file (or document) that must not be used; the message names it."""

    advice = REGENERATE

    def __init__(self, source: str | os.PathLike, problem: str, advice: str | None = None):
        self.source = str(source)
        self.problem = problem
        # A file name with a newline or escape must not forge or hide output lines.
        shown = self.source if self.source.isprintable() else repr(self.source)
        super().__init__(f"probes file {shown}: {problem}; {advice or self.advice}")


class Unreadable(ProbesFileError):
    """Missing or not readable by this process."""

    advice = "check the path and its permissions"


class NotRegularFile(ProbesFileError):
    """A symlink, directory, FIFO or device: never follow or block on it."""

    advice = "pass the path of the real file, not a link or special file"


class TooLarge(ProbesFileError):
    """Over a size or count limit of the site configuration."""


class CorruptGzip(ProbesFileError):
    """Not gzip, or a damaged or truncated gzip stream."""


class InvalidJSON(ProbesFileError):
    """Not UTF-8 JSON, nested too deeply, or with duplicate keys."""


class SchemaViolation(ProbesFileError):
    """Valid JSON that is not a format-1 probes document."""


class Unsigned(ProbesFileError):
    """No signature or key id."""


class UnknownKey(ProbesFileError):
    """Signed by a key this host does not trust."""

    advice = ("ask the administrator to install the signing service's public key with "
              "`datacrumbs keys export-public`, or " + REGENERATE)


class BadSignature(ProbesFileError):
    """The signature does not match the content: altered after signing."""


class Expired(ProbesFileError):
    """Past its expires_at time."""


class NotYetValid(ProbesFileError):
    """issued_at is in the future (beyond the clock-skew allowance)."""


class OwnerMismatch(ProbesFileError):
    """Signed for another user than the one whose job it is."""


__all__ = [
    "ProbesFileError", "Unreadable", "NotRegularFile", "TooLarge", "CorruptGzip", "InvalidJSON",
    "SchemaViolation", "Unsigned", "UnknownKey", "BadSignature", "Expired", "NotYetValid",
    "OwnerMismatch", "REGENERATE",
]
