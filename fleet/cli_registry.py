"""`dordt fleet registry | gateway | keyring ...`: the fleet registry (fleet/registry.py), its
gateways and their signed keyrings (fleet/keyring_file.py).

Thin: argument parsing and presentation.  Every listing takes --json (one JSON document on
stdout, for scripts).  Errors are `UserError`s, exit 2 (docs/fleet.md lists them); no
command prints a key, the master key or a private key's path contents.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dordt.errors import UserError
from fleet.registry import add_master_key_argument, add_registry_argument

EXIT_BAD_INPUT = 2


def register(sub) -> None:
    _register_registry(sub)
    _register_gateway(sub)
    _register_keyring(sub)


def _common(p, master_key: bool = True) -> None:
    # every command takes --master-key, also those that need none (a listing checks it)
    add_registry_argument(p)
    if master_key:
        add_master_key_argument(p)


def _register_registry(sub) -> None:
    g = sub.add_parser("registry", help="the fleet registry: nodes, keys, zones (SQLite)",
                       description="The fleet's registry of zones, sites, nodes and gateways, "
                       "with node keys sealed under a master key (docs/fleet.md).")
    rs = g.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)

    init = rs.add_parser("init", help="make (or upgrade) the registry and load the zones file",
                         description="Makes the registry file, applies its migrations and "
                         "loads zones and sites from the zones file.  With --master-key FILE "
                         "naming a file that does not exist, makes a new master key there "
                         "(0600): back it up apart from the registry.")
    _common(init, master_key=True)
    init.add_argument("--zones", metavar="TOML", help="zones file (default: the packaged "
                      "hardware/data/zones.toml)")
    init.set_defaults(handler=command_registry_init)

    imp = rs.add_parser("import", help="add the nodes of an enrolment bundle (or of a plain "
                        "keyring file)",
                        description="Opens every entry of an enrolment bundle with the fleet's "
                        "enrolment private key and adds the nodes, keys sealed.  Given a plain "
                        "keyring JSON (today's keyring.json) instead, moves its nodes into the "
                        "registry.  All or nothing.")
    imp.add_argument("bundle", metavar="FILE", help="an enrolment bundle, or a keyring JSON")
    imp.add_argument("--enrol-key", metavar="PEM",
                     help="the fleet's enrolment private key (enrol-x25519.pem), for a bundle")
    _common(imp, master_key=True)
    imp.set_defaults(handler=command_registry_import)

    ls = rs.add_parser("ls", help="list nodes (never their keys)")
    ls.add_argument("--zone")
    ls.add_argument("--state", choices=["active", "retired", "revoked"])
    ls.add_argument("--json", action="store_true", help="one JSON list on stdout")
    _common(ls)
    ls.set_defaults(handler=command_registry_ls)

    show = rs.add_parser("show", help="one node: place, state, key ids and fingerprints")
    show.add_argument("node", metavar="NODE")
    show.add_argument("--json", action="store_true")
    _common(show)
    show.set_defaults(handler=command_registry_show)

    for name, what in (("retire", "take a node out of service: left out of new keyrings"),
                       ("revoke", "revoke a node: gateways refuse its frames once they take "
                        "the next keyring")):
        p = rs.add_parser(name, help=what)
        p.add_argument("node", metavar="NODE")
        _common(p)
        p.set_defaults(handler=command_registry_state, state=name + "d")

    rot = rs.add_parser("rotate-key", help="start (or --finish) a node key rotation",
                        description="Start: makes the node's next key id, kept beside the "
                        "current one (keyrings carry both), and writes the rekey file that "
                        "carries the new key to the node (sealed under its current key).  "
                        "--finish: once the node sends under the new key id, drops the old "
                        "key; the next keyrings stop accepting it.")
    rot.add_argument("node", metavar="NODE")
    rot.add_argument("--rekey-out", metavar="FILE",
                     help="where to write the rekey file (default: rekey-NODE-KEYID.json)")
    rot.add_argument("--finish", action="store_true")
    _common(rot, master_key=True)
    rot.set_defaults(handler=command_registry_rotate_key)

    mk = rs.add_parser("master-key", help="re-seal every node key under a new master key",
                       description="Makes a new master key in NEW_FILE (0600) and re-seals "
                       "every node key under it, in one transaction.  Back the registry up "
                       "first; old backups stay sealed under the old key.")
    mk.add_argument("new_file", metavar="NEW_FILE")
    _common(mk)
    mk.set_defaults(handler=command_registry_master_key)

    bak = rs.add_parser("backup", help="a consistent copy of the registry (online backup)",
                        description="Copies the registry with SQLite's online backup API, "
                        "also while other commands use it.  Keys stay sealed in the copy: keep "
                        "the master key apart from it.  Restore: docs/fleet.md.")
    bak.add_argument("dest", metavar="FILE")
    _common(bak)
    bak.set_defaults(handler=command_registry_backup)


def _register_gateway(sub) -> None:
    g = sub.add_parser("gateway", help="gateways in the fleet registry")
    gs = g.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    add = gs.add_parser("add", help="add a gateway serving a zone")
    add.add_argument("name", metavar="NAME", help="the gateway's id ([gateway] id of its config)")
    add.add_argument("--zone", required=True)
    add.add_argument("--keyring-pub", metavar="FILE",
                     help="the gateway's keyring-x25519.pub (`dordt gateway keyring-key init`)")
    add.add_argument("--hardware", default="", metavar="PROFILE",
                     help="its hardware, e.g. raspberrypi4-64")
    _common(add)
    add.set_defaults(handler=command_gateway_add)
    setkey = gs.add_parser("set-key", help="give a gateway its (new) keyring key")
    setkey.add_argument("name", metavar="NAME")
    setkey.add_argument("--keyring-pub", required=True, metavar="FILE",
                        help="the gateway's keyring-x25519.pub")
    _common(setkey)
    setkey.set_defaults(handler=command_gateway_set_key)
    ls = gs.add_parser("ls", help="list gateways")
    ls.add_argument("--json", action="store_true")
    _common(ls)
    ls.set_defaults(handler=command_gateway_ls)
    assign = gs.add_parser("assign", help="serve a node from a gateway (not its zone's)")
    assign.add_argument("node", metavar="NODE")
    assign.add_argument("name", metavar="NAME", nargs="?",
                        help="the gateway; leave out to go back to the zone's gateways")
    _common(assign)
    assign.set_defaults(handler=command_gateway_assign)


def _register_keyring(sub) -> None:
    g = sub.add_parser("keyring", help="signed keyrings for gateways",
                       description="Per-gateway keyrings, sealed to the gateway and signed by "
                       "the fleet (fleet/keyring_file.py, docs/fleet.md).")
    ks = g.add_subparsers(dest="keyring_command", metavar="COMMAND", required=True)
    signer = ks.add_parser("signer", help="the fleet's keyring-signing key (Ed25519)")
    ss = signer.add_subparsers(dest="signer_command", metavar="COMMAND", required=True)
    sinit = ss.add_parser("init", help="make the key pair; copy the .pub to every gateway")
    sinit.add_argument("--dir", required=True, metavar="DIR")
    sinit.set_defaults(handler=command_signer_init)
    issue = ks.add_parser("issue", help="write one gateway's signed, sealed keyring")
    issue.add_argument("--gateway", required=True, metavar="NAME")
    issue.add_argument("--out", required=True, metavar="FILE")
    issue.add_argument("--signer-key", required=True, metavar="PEM",
                       help="the fleet's keyring-signer.pem")
    issue.add_argument("--above-serial", type=int, default=0, metavar="N",
                       help="give a serial above N (after a registry restore: the serial "
                       "the gateway's /healthz shows)")
    _common(issue, master_key=True)
    issue.set_defaults(handler=command_keyring_issue)


# -- helpers ------------------------------------------------------------------------------


def _open(args, create: bool = False, need_master_key: bool = False):
    from fleet.registry import open_from_args

    return open_from_args(args, create=create, need_master_key=need_master_key)


def _call(fn, *a, **kw):
    from fleet.keyring_file import KeyringFileError
    from fleet.registry import RegistryError

    try:
        return fn(*a, **kw)
    except (RegistryError, KeyringFileError) as exc:
        raise UserError(str(exc), EXIT_BAD_INPUT) from None


def _node_arg(text: str) -> str:
    if len(text) != 8 or any(c not in "0123456789abcdef" for c in text):
        raise UserError(f"node {text!r}: give 8 lower-case hex digits, e.g. 0001001a",
                        EXIT_BAD_INPUT)
    return text


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


# -- registry -----------------------------------------------------------------------------


def command_registry_init(args: argparse.Namespace) -> int:
    from fleet.registry import RegistryError, new_master_key_file, registry_path

    made_key = None
    if args.master_key and not Path(args.master_key).exists():
        made_key = _call(new_master_key_file, Path(args.master_key))
    path = registry_path(args)
    existed = path.exists()
    with _open(args, create=True) as reg:
        if made_key is None and reg._master_key is None and not existed:
            reg.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise UserError("give --master-key FILE (a new key is made there when the file "
                            "does not exist), or set $DORDT_FLEET_MASTER_KEY_FILE", 2)
        if made_key is not None and existed:
            try:
                reg._master_key = made_key
                reg._check_master_key()
            except RegistryError as exc:
                raise UserError(f"{exc} (a new master key was just made in "
                                f"{args.master_key}: delete it and give the registry's)",
                                2) from None
        sites = _call(reg.sync_zones, args.zones)
        version = reg.db.execute("PRAGMA user_version").fetchone()[0]
    print(f"registry {path}: schema {version}, {sites} sites"
          + (f"; made a new master key in {args.master_key} (0600): back it up apart from "
             "the registry" if made_key is not None else ""))
    return 0


def _is_plain_keyring(path: Path) -> bool:
    from fleet.keyring import FORMAT

    try:
        return json.loads(path.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False  # the bundle loader names what is wrong with it


def command_registry_import(args: argparse.Namespace) -> int:
    from fleet.bundle import BundleError, load_private_key, open_bundle
    from fleet.keyring import Keyring, KeyringError

    path = Path(args.bundle)
    if _is_plain_keyring(path):
        try:
            Keyring.check_private(path)
            ring = Keyring.load(path)
        except KeyringError as exc:
            raise UserError(str(exc), EXIT_BAD_INPUT) from None
        with _open(args, need_master_key=True) as reg:
            added, present = _call(reg.import_keyring, ring)
        print(f"imported {len(added)} node(s) from the keyring {path}"
              + (f"; {len(present)} already there" if present else "")
              + "; its keys are sealed in the registry now: delete the plain file")
        return 0
    if not args.enrol_key:
        raise UserError(f"{path}: give --enrol-key PEM (the fleet's enrolment private key) to "
                        "open an enrolment bundle", EXIT_BAD_INPUT)
    try:
        opened = open_bundle(path, load_private_key(Path(args.enrol_key)))
    except BundleError as exc:
        raise UserError(str(exc), EXIT_BAD_INPUT) from None
    with _open(args, need_master_key=True) as reg:
        added, present = _call(reg.import_bundle, opened)
    print(f"imported {len(added)} node(s)" + (f": {', '.join(added)}" if added else "")
          + (f"; {len(present)} already there" if present else ""))
    return 0


def _node_public(node: dict) -> dict:
    return {k: node[k] for k in ("node", "kind", "zone", "site", "hardware", "firmware",
                                 "state", "key_ids", "last_seen", "gateway", "enrolled_at")}


def command_registry_ls(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        nodes = reg.nodes(zone=args.zone, state=args.state)
    if args.json:
        _print_json([_node_public(n) for n in nodes])
        return 0
    if not nodes:
        print("no nodes match")
    for n in nodes:
        print(f"{n['node']}  {n['kind']:<6} {n['zone']:<14} {n['site']:<8} {n['state']:<8} "
              f"keys {n['key_ids']} firmware {n['firmware'] or '-'} "
              f"last seen {n['last_seen'] or '-'}")
    return 0


def command_registry_show(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        node = _call(reg.node, _node_arg(args.node))
    public = _node_public(node)
    public["keys"] = node["keys"]  # ids, states, fingerprints: never the keys
    if args.json:
        _print_json(public)
        return 0
    for k in ("node", "kind", "zone", "site", "state", "hardware", "firmware", "gateway",
              "enrolled_at", "last_seen"):
        print(f"{k:<12} {public[k] if public[k] not in (None, '') else '-'}")
    for key in node["keys"]:
        print(f"key {key['key_id']:<8} {key['state']:<8} fingerprint {key['fingerprint']} "
              f"since {key['created_at']}")
    return 0


def command_registry_state(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        node = _call(reg.set_state, _node_arg(args.node), args.state)
    print(f"{node['node']} is {node['state']}; issue new keyrings (`dordt fleet keyring "
          "issue`) for its gateways to apply it")
    return 0


def command_registry_rotate_key(args: argparse.Namespace) -> int:
    from fleet import rekey

    node = _node_arg(args.node)
    with _open(args, need_master_key=True) as reg:
        if args.finish:
            key_id = _call(reg.finish_rotation, node)
            print(f"{node}: key {key_id} is now its only key; issue new keyrings (`dordt "
                  "fleet keyring issue`) so gateways stop accepting the old one")
            return 0
        keys = _call(reg.node, node)["keys"]
        current = next(k["key_id"] for k in keys if k["state"] == "current")
        pending = next((k["key_id"] for k in keys if k["state"] == "next"), None)
        out = Path(args.rekey_out) if args.rekey_out else None
        if out is not None and out.exists():
            raise UserError(f"{out} exists already; give a new file for the rekey file", 2)
        if pending is None:
            new_id, new_key = _call(reg.rotate_key, node)
        else:  # a rotation under way: its rekey file again (lost, or never written)
            new_id, new_key = pending, _call(reg.node_key, node, pending)
        doc = rekey.wrap(node, current, _call(reg.node_key, node, current), new_id, new_key)
        out = out or Path(f"rekey-{node}-{new_id}.json")
        rekey.save(doc, out)
    if pending is not None:
        print(f"{node} is in a rotation to key {new_id} already: wrote its rekey file {out} "
              f"again; once the node sends under key {new_id}: rotate-key {node} --finish")
        return 0
    print(f"{node}: new key {new_id} beside key {current}; the rekey file {out} takes it to "
          "the node (sealed under its current key). Issue new keyrings now (they carry both "
          f"keys), and once the node sends under key {new_id}: rotate-key {node} --finish")
    return 0


def command_registry_master_key(args: argparse.Namespace) -> int:
    import os

    from fleet.files import write_file_atomic
    from fleet.registry import MASTER_KEY_LEN

    out = Path(args.new_file)
    if out.exists():
        raise UserError(f"{out} exists already; give a new file for the new master key", 2)
    new_key = os.urandom(MASTER_KEY_LEN)
    with _open(args, need_master_key=True) as reg:
        # the new key is on disk before any key is sealed under it
        write_file_atomic(out, new_key.hex().encode() + b"\n", 0o600)
        try:
            count = _call(reg.change_master_key, new_key)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    print(f"re-sealed {count} node key(s) under the new master key in {out}; use it from now "
          "on, and keep the old one only as long as backups sealed under it")
    return 0


def command_registry_backup(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        dest = _call(reg.backup, args.dest)
    print(f"backed up the registry to {dest} (keys stay sealed; keep the master key apart)")
    return 0


# -- gateways -----------------------------------------------------------------------------


def _read_pub(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the gateway's keyring key "
                        f"({getattr(exc, 'strerror', None) or 'not text'})", 2) from None


def command_gateway_add(args: argparse.Namespace) -> int:
    pub = _read_pub(args.keyring_pub) if args.keyring_pub else None
    with _open(args) as reg:
        gw = _call(reg.add_gateway, args.name, args.zone, pub, args.hardware)
    print(f"added gateway {gw['name']} ({gw['zone']})"
          + ("" if pub else "; give it a keyring key before issuing keyrings"))
    return 0


def command_gateway_set_key(args: argparse.Namespace) -> int:
    pub = _read_pub(args.keyring_pub)
    with _open(args) as reg:
        gw = _call(reg.set_gateway_key, args.name, pub)
    print(f"gateway {gw['name']}: its next keyring is sealed to the new key; issue one now")
    return 0


def command_gateway_ls(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        gateways = reg.gateways()
    if args.json:
        _print_json(gateways)
        return 0
    if not gateways:
        print("no gateways; add one with `dordt fleet gateway add`")
    for g in gateways:
        print(f"{g['name']:<20} {g['zone']:<14} {g['state']:<8} keyring serial "
              f"{g['keyring_serial']} ({g['keyring_issued_at'] or 'never issued'}) last seen "
              f"{g['last_seen'] or '-'}")
    return 0


def command_gateway_assign(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        _call(reg.assign, _node_arg(args.node), args.name)
    print(f"{args.node} is served by {args.name or 'its zone gateways'}")
    return 0


# -- keyrings -----------------------------------------------------------------------------


def command_signer_init(args: argparse.Namespace) -> int:
    from fleet.keyring_file import init_signer

    private, public = _call(init_signer, Path(args.dir))
    print(f"keyring-signing key: {private} (private: keep it with the fleet); copy {public} "
          "to every gateway ([gateway] keyring_signer)")
    return 0


def command_keyring_issue(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleet.files import write_file_atomic
    from fleet.keyring_file import load_private

    signer = _call(load_private, Path(args.signer_key), Ed25519PrivateKey)
    with _open(args, need_master_key=True) as reg:
        data, serial = _call(reg.issue_keyring, args.gateway, signer, args.above_serial)
        nodes = len(reg.served(args.gateway))
    # sealed to the gateway: no secret readable in it, but no reason to share it either
    write_file_atomic(Path(args.out), data, 0o600)
    print(f"keyring serial {serial} for gateway {args.gateway}: {nodes} node(s), written to "
          f"{args.out}; copy it over the gateway's [gateway] keyring file")
    return 0

