"""Manage the signing service's Ed25519 keys (run as root on the signing host).

Private keys stay in the site's private_key_dir (0700, files 0600); public
keys go to public_key_dir, where every host that verifies probes files reads
them. `rotate` makes a new signing key and keeps old public keys, so files
signed before stay valid until they expire; delete an old `<key_id>.pub`
everywhere to revoke every file it signed.

examples:
  datacrumbs keys init
  datacrumbs keys list
  datacrumbs keys rotate
  datacrumbs keys export-public /shared/cluster/etc/datacrumbs/keys
"""

from __future__ import annotations

import argparse
import os
import textwrap

from rich.table import Table
from rich.text import Text

from ..config import load_config
from ..safetext import SafeConsole
from ..signing.keys import KeyStore, KeyStoreError

HELP = "create, rotate, list and export the signing keys"


def setup_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter  # keeps the examples' lines; descriptions wrapped
    sub.add_parser(
        "init", formatter_class=fmt, help="create the first signing key (refuses if one exists)",
        description=textwrap.fill("Create the signing service's first Ed25519 key: the private key in "
        "private_key_dir (0700, file 0600), its public key in public_key_dir. Refuses when a "
        "key exists already (use `rotate`). Run once, as root, on the signing host; then copy "
        "public_key_dir to every node.", 78),
        epilog="example:\n  sudo datacrumbs keys init")
    sub.add_parser(
        "rotate", formatter_class=fmt, help="make a new signing key; old public keys stay trusted",
        description=textwrap.fill("Make a new signing key and sign with it from now on. Old public keys "
        "stay, so files signed before remain valid until they expire; to revoke them, delete "
        "the old <key_id>.pub from public_key_dir on every node. Copy the new public key to "
        "every node before users sign with it.", 78),
        epilog="example:\n  sudo datacrumbs keys rotate && sudo datacrumbs keys export-public "
        "/shared/etc/datacrumbs/keys")
    sub.add_parser(
        "list", formatter_class=fmt, help="list the keys, marking the current one",
        description=textwrap.fill("List every key: its id, whether it is the current signing key, and "
        "whether its private and public halves are present here.", 78),
        epilog="example:\n  sudo datacrumbs keys list")
    export = sub.add_parser(
        "export-public", formatter_class=fmt, help="copy all public keys to a directory",
        description=textwrap.fill("Copy every <key_id>.pub to DEST (e.g. a directory shared with the compute "
        "nodes, or their public_key_dir): the prolog, the tracer and the Flux plugin verify "
        "signatures with these files. The current key's public half is first restored from "
        "its private key if this host's public_key_dir lacks it (after a reinstall under a "
        "new prefix: give that directory as DEST).", 78),
        epilog="example:\n  sudo datacrumbs keys export-public /shared/cluster/etc/datacrumbs/keys")
    export.add_argument("dest", metavar="DEST", help="directory to copy <key_id>.pub files to")


def main(args) -> int:
    store = KeyStore.from_config(load_config())
    if args.keys_command in ("init", "rotate") and os.geteuid() != 0:
        raise KeyStoreError(f"`datacrumbs keys {args.keys_command}` writes the signing keys, "
                            f"which are root's ({store.private_dir}); run it as root: "
                            f"sudo datacrumbs keys {args.keys_command}")
    if args.keys_command == "init":
        print(f"created signing key {store.init()} in {store.private_dir}; public key in "
              f"{store.public_dir}")
    elif args.keys_command == "rotate":
        print(f"new signing key {store.rotate()}; older public keys stay in {store.public_dir}")
    elif args.keys_command == "export-public":
        for path in store.export_public(args.dest):
            print(path)
    else:
        table = Table(title=Text(f"keys ({store.public_dir})"), title_justify="left")
        for column in ("key id", "current", "private key", "public key"):
            table.add_column(column, no_wrap=column == "key id")
        for info in store.list():
            table.add_row(info.key_id, "yes" if info.current else "",
                          "present" if info.has_private else "-",
                          Text(str(info.public_path) if info.public_path else "MISSING"))
        SafeConsole().print(table)
    return 0
