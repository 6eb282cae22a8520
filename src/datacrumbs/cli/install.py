"""Install datacrumbs' node files under a prefix (units, prolog/epilog, plugin, config, BPF object).

Writes <prefix>/etc/datacrumbs/{datacrumbs.toml,systemd/,flux/,keys/,probe-sets/},
<prefix>/sbin/datacrumbs_service_{run,stop}.sh, <prefix>/bin/ (links to this Python
environment's commands) and <prefix>/lib/datacrumbs/datacrumbs.bpf.o, recorded in
<prefix>/share/datacrumbs/install-manifest.txt for `datacrumbs uninstall`. An existing
datacrumbs.toml is never overwritten: its run dir and timeouts go into the unit.

then, as the seed says:
  sudo ln -sf PREFIX/etc/datacrumbs/systemd/datacrumbs@.service /etc/systemd/system/datacrumbs@.service
  sudo systemctl daemon-reload

examples:
  sudo datacrumbs install                       (prefix /opt/datacrumbs)
  sudo datacrumbs install --prefix /usr/local/datacrumbs --no-bpf
"""

from __future__ import annotations

from pathlib import Path

from ..config import DEFAULT_PREFIX

HELP = "install units, prolog/epilog scripts, Flux plugin and config under a prefix"


def setup_parser(parser) -> None:
    parser.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX,
                        help=f"installation prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--no-bpf", action="store_true",
                        help="do not compile the BPF object (build it later with "
                             "`datacrumbs build-bpf -o PREFIX/lib/datacrumbs/datacrumbs.bpf.o`)")


def print_report(report, verb: str) -> None:
    for path in getattr(report, verb):
        print(f"{verb} {path}")
    for note in report.kept:
        print(f"note: {note}")


def main(args) -> int:
    from ..flux.install import install

    report = install(args.prefix.absolute(), build_bpf=not args.no_bpf)
    print_report(report, "installed")
    print(f"installed into {args.prefix}; next: link "
          f"{args.prefix}/etc/datacrumbs/systemd/datacrumbs@.service into /etc/systemd/system "
          "and run `systemctl daemon-reload` (docs/admin-guide.md)")
    return 0
