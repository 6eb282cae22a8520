"""Values from traces and probes files, made safe to print on someone's terminal.

A trace's file names, command names and host names are chosen by the job's user, and an
admin or another user reads the report of that trace. Printed raw, an escape sequence in
a file name sets the reader's window title, clears the screen or writes the clipboard
(OSC 52), rich markup in it (``[/]``, ``[link=...]``) crashes the report or forges links,
and rich's emoji codes turn ``:smile:`` in a name into a picture. So every console that
prints such values is a :class:`SafeConsole` (no markup, no control character reaches the
terminal), and every :class:`rich.text.Text` built from them goes through :func:`shown`. JSON and HTML outputs escape by their own rules and keep the
exact values.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals)
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def shown(value) -> str:
    """``value`` as text with every control character written as a Python escape."""
    return str(value).translate(_ESCAPES)


def plain(value, style: str = "") -> Text:
    """A rich Text of ``value`` as :func:`shown` writes it: never read as markup."""
    return Text(shown(value), style=style)


class SafeConsole(Console):
    """A rich Console that reads no markup in strings and shows control characters as
    escapes: table cells and printed strings may hold values from a trace. Strings meant
    to be styled are given as Text."""

    def __init__(self, *args, **kwargs):
        kwargs["markup"] = kwargs["emoji"] = False     # ":smile:" in a name stays text
        super().__init__(*args, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs["markup"] = kwargs["emoji"] = False
        return super().render_str(shown(text), **kwargs)
