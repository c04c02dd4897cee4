"""`dordt fleet ...`: the plain node keyring (enrol, list, revoke) and the fleet CA
(`dordt fleet ca ...`: certificates for the gateways' brokers, fleet/ca.py); the registry,
keyrings, releases, balena and health commands register from their own cli_* modules."""

from __future__ import annotations

import argparse

from dordt.errors import UserError
from fleet import cli_release, cli_rollout


def register(groups) -> None:
    g = groups.add_parser("fleet", help="registry, keyrings, releases, balena, fleet health",
                          description="The fleet registry (nodes, gateways, keys), signed "
                          "keyrings for gateways, firmware releases and their staged "
                          "rollout, gateways on balena, fleet health, the fleet CA; and the "
                          "plain keyring file commands (enrol, import, list, revoke) of a "
                          "single gateway.  docs/fleet.md is the operator's guide.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)
    enrol = sub.add_parser("enrol", help="add a node with a fresh random key")
    enrol.add_argument("--keyring", required=True, metavar="PATH")
    enrol.add_argument("--node", required=True, help="node id, 8 hex digits")
    enrol.add_argument("--kind", required=True, choices=["air", "noise", "crowd"])
    enrol.add_argument("--zone", required=True)
    enrol.add_argument("--site", required=True)
    enrol.add_argument("--zones", metavar="TOML",
                       help="zones file the zone and site must be in (default: the packaged "
                       "hardware/data/zones.toml)")
    enrol.set_defaults(handler=command_enrol)
    imp = sub.add_parser("import", help="add the nodes of a technician's enrolment bundle",
                         description="Opens every entry of an enrolment bundle (provisioning) "
                         "with the fleet's enrolment private key and adds the nodes to the "
                         "keyring. All or nothing: a tampered entry refuses the whole bundle.")
    imp.add_argument("bundle", metavar="BUNDLE")
    imp.add_argument("--keyring", required=True, metavar="PATH")
    imp.add_argument("--enrol-key", required=True, metavar="PEM",
                     help="the fleet's enrolment private key (enrol-x25519.pem)")
    imp.add_argument("--zones", metavar="TOML")
    imp.set_defaults(handler=command_import)
    ek = sub.add_parser("enrol-key", help="the fleet's enrolment key (X25519) for bundles")
    ek_sub = ek.add_subparsers(dest="ek_command", metavar="COMMAND", required=True)
    ek_init = ek_sub.add_parser("init", help="make the key pair; give the .pub to technicians")
    ek_init.add_argument("--dir", required=True, metavar="DIR")
    ek_init.set_defaults(handler=command_enrol_key_init)
    ls = sub.add_parser("list", help="list nodes (never their keys)")
    ls.add_argument("--keyring", required=True, metavar="PATH")
    ls.set_defaults(handler=command_list)
    revoke = sub.add_parser("revoke", help="revoke a node: the gateway refuses its frames")
    revoke.add_argument("--keyring", required=True, metavar="PATH")
    revoke.add_argument("--node", required=True)
    revoke.set_defaults(handler=command_revoke)
    _register_ca(sub)
    from fleet import cli_registry  # registry | gateway | keyring (fleet/registry.py)

    cli_registry.register(sub)
    # dordt fleet release key init | build | verify (cli_release), publish | rollout | step |
    # watch | status | halt (cli_rollout): one `release` group
    cli_rollout.register_release_commands(cli_release.register(sub))
    from fleet import cli_balena  # dordt fleet balena link | sync | status | pin | rollout

    cli_balena.register(sub)
    from fleet import cli_health  # dordt fleet health

    cli_health.register(sub)


def _register_ca(sub) -> None:
    # Defaults live in fleet/ca.py, which is imported only when a `ca` command runs
    # (cryptography's x509 adds ~70 ms to every `dordt` start).
    g = sub.add_parser(
        "ca", help="the fleet CA: TLS certificates for nodes and gateway brokers",
        description="A small certificate authority: client certificates for nodes (CN = node "
        "id) and gateways (CN = gw-NAME), server certificates for the gateways' brokers, and "
        "the revocation list the brokers load.  The directory layout is described in "
        "fleet/ca.py; keep it (ca.key) off the gateways.")
    casub = g.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    init = casub.add_parser("init", help="make a new CA in an empty directory")
    init.add_argument("--dir", required=True, metavar="DIR")
    init.add_argument("--name", default="Dordt fleet CA", help="the CA certificate's CN")
    init.add_argument("--days", type=int, help="validity in days (default: 20 years)")
    init.add_argument("--permit-dns", action="append", default=[], metavar="DOMAIN",
                      help="name constraint: broker host names must be in DOMAIN (repeat "
                      "for more); check every node's TLS stack supports it first")
    init.set_defaults(handler=command_ca_init)

    node = casub.add_parser("issue-node", help="issue a node's client certificate and key")
    node.add_argument("--dir", required=True, metavar="DIR")
    node.add_argument("--node", required=True, help="node id, 8 hex digits")
    node.add_argument("--days", type=int, help="validity in days (default: 10 years)")
    node.add_argument("--replace", action="store_true",
                      help="revoke the node's valid certificate and issue a new one")
    node.set_defaults(handler=command_ca_issue_node)

    gw = casub.add_parser("issue-gateway",
                          help="issue a gateway's broker (server) and client certificates")
    gw.add_argument("--dir", required=True, metavar="DIR")
    gw.add_argument("--name", required=True, help="the gateway's name; its id is gw-NAME")
    gw.add_argument("--host", required=True, action="append", metavar="HOST",
                    help="a name or address nodes use to reach the broker (repeat for more; "
                    "localhost, 127.0.0.1 and ::1 are always included)")
    gw.add_argument("--days", type=int, help="validity in days (default: 5 years)")
    gw.add_argument("--replace", action="store_true",
                    help="revoke the gateway's valid certificates and issue new ones")
    gw.set_defaults(handler=command_ca_issue_gateway)

    rev = casub.add_parser("revoke", help="revoke a node's or gateway's certificates and "
                           "re-sign the revocation list")
    rev.add_argument("--dir", required=True, metavar="DIR")
    who = rev.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", help="node id, 8 hex digits")
    who.add_argument("--gateway", metavar="NAME", help="gateway name (or gw-NAME)")
    rev.add_argument("--reason", default="unspecified",
                     help="unspecified, key_compromise, cessation_of_operation or superseded")
    rev.set_defaults(handler=command_ca_revoke)

    crl = casub.add_parser("crl", help="re-sign the revocation list (before it expires)")
    crl.add_argument("--dir", required=True, metavar="DIR")
    crl.add_argument("--days", type=int, help="days until its next update (default: 365)")
    crl.set_defaults(handler=command_ca_crl)

    ls = casub.add_parser("list", help="list issued certificates (never keys)")
    ls.add_argument("--dir", required=True, metavar="DIR")
    ls.set_defaults(handler=command_ca_list)

    export = casub.add_parser(
        "export-gateway", help="copy what one gateway needs (never the CA key) to a directory")
    export.add_argument("--dir", required=True, metavar="DIR")
    export.add_argument("--name", required=True, help="the gateway's name (or gw-NAME)")
    export.add_argument("--out", required=True, metavar="DIR")
    export.set_defaults(handler=command_ca_export_gateway)


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

    node_id = _node_id(args.node)
    _check_place(args.zone, args.site, args.kind, args.zones)
    ring = _load(args.keyring, create=True)
    try:
        entry = ring.enrol(node_id, args.kind, args.zone, args.site)
    except KeyringError as exc:
        raise UserError(str(exc), 2) from exc
    ring.save(args.keyring)
    print(f"enrolled {entry.node} ({entry.kind}, {entry.zone}/{entry.site}) in {args.keyring}")
    return 0


def _check_place(zone: str, site: str, kind: str, zones: str | None) -> None:
    from hardware.sites import ZonesError, placement

    try:
        placement(zone, site, kind, zones)
    except ZonesError as exc:
        raise UserError(str(exc), 2) from None


def command_enrol_key_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.bundle import BundleError, init_enrol_key

    try:
        private, public = init_enrol_key(Path(args.dir))
    except BundleError as exc:
        raise UserError(str(exc), 2) from None
    print(f"fleet enrolment key: {private} (private: keep it with the fleet, never on a "
          f"technician's laptop); give {public} to technicians")
    return 0


def command_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.bundle import BundleError, fingerprint, load_private_key, open_bundle
    from fleet.keyring import KeyringError, NodeEntry

    try:
        opened = open_bundle(Path(args.bundle), load_private_key(Path(args.enrol_key)))
    except BundleError as exc:
        raise UserError(str(exc), 2) from None
    ring = _load(args.keyring, create=True)
    added, present = [], []
    for entry, key in opened:
        _check_place(entry["zone"], entry["site"], entry["kind"], args.zones)
        node_id = int(entry["node"], 16)
        known = ring.get(node_id)
        if known is not None:
            if fingerprint(known.keys.get(entry["key_id"], b"")) == entry["fingerprint"]:
                present.append(entry["node"])
                continue
            raise UserError(f"node {entry['node']} is in {args.keyring} already with another "
                            "key: a node id is enrolled once; revoke the old board's entry "
                            "and give the new board a new node id. Nothing was imported", 2)
        try:
            ring.add(NodeEntry(node_id, entry["kind"], entry["zone"], entry["site"],
                               {entry["key_id"]: key}))
        except KeyringError as exc:
            raise UserError(f"{exc}. Nothing was imported", 2) from None
        added.append(entry["node"])
    ring.save(args.keyring)
    print(f"imported {len(added)} node(s) into {args.keyring}"
          + (f": {', '.join(added)}" if added else "")
          + (f"; {len(present)} already there" if present else ""))
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


# -- the fleet CA ---------------------------------------------------------------------------


def _ca_call(fn, *args, **kwargs):
    from fleet.ca import CAError

    try:
        return fn(*args, **kwargs)
    except CAError as exc:
        raise UserError(str(exc), 2) from exc


def _days(args: argparse.Namespace) -> dict:
    if args.days is None:
        return {}
    if args.days < 1:
        raise UserError(f"--days {args.days}: give a number of days, 1 or more", 2)
    return {"valid_days": args.days}


def _open_ca(path: str):
    from fleet.ca import FleetCA

    return _ca_call(FleetCA.open, path)


def command_ca_init(args: argparse.Namespace) -> int:
    from fleet.ca import FleetCA

    ca = _ca_call(FleetCA.init, args.dir, name=args.name, permitted_dns=args.permit_dns,
                  **_days(args))
    print(f"made CA {args.name!r} in {args.dir}, valid until "
          f"{ca.cert.not_valid_after_utc:%Y-%m-%d}; keep {ca.layout.ca_key} (0600) off "
          "the gateways and backed up")
    return 0


def command_ca_issue_node(args: argparse.Namespace) -> int:
    node = f"{_node_id(args.node):08x}"
    ca = _open_ca(args.dir)
    r = _ca_call(ca.issue_node, node, replace=args.replace, **_days(args))
    print(f"issued node {node}: serial {r.serial:x}, valid until {r.not_after:%Y-%m-%d}; "
          f"{ca.layout.node_cert(node)} and {ca.layout.node_key(node)} (0600) go onto the node")
    return 0


def command_ca_issue_gateway(args: argparse.Namespace) -> int:
    ca = _open_ca(args.dir)
    broker, client = _ca_call(ca.issue_gateway, args.name, args.host, replace=args.replace,
                              **_days(args))
    print(f"issued gateway {client.name}: broker serial {broker.serial:x}, client serial "
          f"{client.serial:x}, valid until {client.not_after:%Y-%m-%d}, in "
          f"{ca.layout.gateway_dir(client.name)}; copy them to the gateway with "
          f"`dordt fleet ca export-gateway`")
    return 0


def command_ca_revoke(args: argparse.Namespace) -> int:
    from fleet.ca import gateway_id

    name = f"{_node_id(args.node):08x}" if args.node else _ca_call(gateway_id, args.gateway)
    ca = _open_ca(args.dir)
    done = _ca_call(ca.revoke, name, reason=args.reason)
    serials = ", ".join(f"{r.serial:x}" for r in done) or "none left unrevoked"
    print(f"revoked {name} (serials: {serials}); new {ca.layout.crl}: copy it to every "
          "gateway and restart its broker")
    return 0


def command_ca_crl(args: argparse.Namespace) -> int:
    ca = _open_ca(args.dir)
    from fleet.ca import crl_next_update

    path = _ca_call(ca.write_crl, **_days(args))
    print(f"re-signed {path}, next update {crl_next_update(path):%Y-%m-%d}: copy it to every "
          "gateway and restart its broker")
    return 0


def command_ca_list(args: argparse.Namespace) -> int:
    from fleet.ca import crl_next_update

    ca = _open_ca(args.dir)
    for r in sorted(ca.records, key=lambda r: (r.name, r.not_before)):
        print(f"{r.name:<18} {r.role:<8} {r.serial:040x} until {r.not_after:%Y-%m-%d} "
              f"{r.state()}")
    print(f"revocation list: next update {_ca_call(crl_next_update, ca.layout.crl):%Y-%m-%d}")
    return 0


def command_ca_export_gateway(args: argparse.Namespace) -> int:
    ca = _open_ca(args.dir)
    out = _ca_call(ca.export_gateway, args.name, args.out)
    print(f"wrote the gateway bundle for {args.name} to {out.root} (no CA key); put it in "
          "the gateway's CA directory")
    return 0
