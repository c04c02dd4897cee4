"""`dordt fleet ...`: the node keyring (enrol, list, revoke)."""

from __future__ import annotations

import argparse

from dordt.errors import UserError


def register(groups) -> None:
    g = groups.add_parser("fleet", help="node registry and keys",
                          description="Enrol, list and revoke nodes in a keyring file.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)
    enrol = sub.add_parser("enrol", help="add a node with a fresh random key")
    enrol.add_argument("--keyring", required=True, metavar="PATH")
    enrol.add_argument("--node", required=True, help="node id, 8 hex digits")
    enrol.add_argument("--kind", required=True, choices=["air", "noise", "crowd"])
    enrol.add_argument("--zone", required=True)
    enrol.add_argument("--site", required=True)
    enrol.set_defaults(handler=command_enrol)
    ls = sub.add_parser("list", help="list nodes (never their keys)")
    ls.add_argument("--keyring", required=True, metavar="PATH")
    ls.set_defaults(handler=command_list)
    revoke = sub.add_parser("revoke", help="revoke a node: the gateway refuses its frames")
    revoke.add_argument("--keyring", required=True, metavar="PATH")
    revoke.add_argument("--node", required=True)
    revoke.set_defaults(handler=command_revoke)


def _load(path: str, create: bool = False):
    from pathlib import Path

    from fleet.keyring import Keyring, KeyringError

    if create and not Path(path).exists():
        return Keyring()
    try:
        return Keyring.load(path)
    except KeyringError as exc:
        raise UserError(str(exc), 2) from exc


def _node_id(text: str) -> int:
    if len(text) != 8 or any(c not in "0123456789abcdef" for c in text):
        raise UserError(f"--node {text!r}: give 8 lower-case hex digits, e.g. 0001001a", 2)
    return int(text, 16)


def command_enrol(args: argparse.Namespace) -> int:
    from fleet.keyring import KeyringError

    ring = _load(args.keyring, create=True)
    try:
        entry = ring.enrol(_node_id(args.node), args.kind, args.zone, args.site)
    except KeyringError as exc:
        raise UserError(str(exc), 2) from exc
    ring.save(args.keyring)
    print(f"enrolled {entry.node} ({entry.kind}, {entry.zone}/{entry.site}) in {args.keyring}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    for e in sorted(_load(args.keyring), key=lambda e: e.node_id):
        state = "revoked" if e.revoked else "active"
        print(f"{e.node}  {e.kind:<6} {e.zone:<14} {e.site:<10} keys {sorted(e.keys)} {state}")
    return 0


def command_revoke(args: argparse.Namespace) -> int:
    from fleet.keyring import KeyringError

    ring = _load(args.keyring)
    try:
        ring.revoke(_node_id(args.node))
    except KeyringError as exc:
        raise UserError(str(exc), 2) from exc
    ring.save(args.keyring)
    print(f"revoked {args.node}")
    return 0
