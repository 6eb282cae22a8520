"""Remove what `datacrumbs install --prefix P` installed, as listed in its manifest.

Files changed since install (datacrumbs.toml, sign-policy.toml) and files added
since (keys, probe sets) are left in place with a note. Remove your
/etc/systemd/system links to the units first.

examples:
  sudo datacrumbs uninstall --prefix /opt/datacrumbs
"""

from __future__ import annotations

from pathlib import Path

from ..config import DEFAULT_PREFIX
from .install import print_report

HELP = "remove exactly what `datacrumbs install` put under a prefix"


def setup_parser(parser) -> None:
    parser.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX,
                        help=f"installation prefix (default {DEFAULT_PREFIX})")


def main(args) -> int:
    from ..flux.install import uninstall

    report = uninstall(args.prefix.absolute())
    print_report(report, "removed")
    return 0
