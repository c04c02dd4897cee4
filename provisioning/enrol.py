"""Enrol a board as a node: its id and place checked against the zones file, its sensors
checked against its kind, a fresh key written to the board with its config, and the key
sealed into the technician's enrolment bundle (fleet/bundle.py) so the laptop keeps no
readable copy.

In:  an open `BoardLink` to a board with our firmware installed, what the technician says
     (zone, site, kind, or a node id from the label), the fleet's enrolment public key and
     the bundle file to append to.
Out: `Enrolment`: the public fields of the new node (what the label shows).
On failure: `UserError` with what to do.  Exit 2 for what the technician typed (a zone or
     site not in the zones file, with "did you mean"; a node id enrolled already; a kind
     the board's sensors do not fit; a missing fleet key), 1 when the board did not keep
     what was written (nothing is recorded then), 3 for the link (provisioning/link.py).
     Order of writes: the board first (key and config, each replaced atomically on flash,
     then checked on the board), the bundle second; when the bundle cannot be written the
     key is removed from the board again, so a node never holds a key the fleet cannot get.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from dordt.errors import UserError
from firmware import config as node_config
from firmware import protocol
from fleet import bundle as bundles
from fleet.keyring import Keyring, KeyringError
from hardware.profiles import Board
from hardware.sites import NodePlacement, ZonesError, load_placements, placement
from provisioning.identify import BoardInfo
from provisioning.link import BoardCodeError, BoardLink

EXIT_BAD_INPUT = 2
KEY_FINGERPRINT_MSG = b"dordt key fingerprint"  # fleet/bundle.py: fingerprint()
# Which board features each node kind's kit needs (hardware/data/kits.toml).
KIND_NEEDS = {"air": ("i2c_sda", "i2c_scl", "uart_tx", "uart_rx"),
              "noise": ("i2s_sck", "i2s_ws", "i2s_sd"), "crowd": ()}


@dataclass(frozen=True)
class Enrolment:
    node: str
    kind: str
    zone: str
    site: str
    board: str
    enrolled_at: str
    fingerprint: str
    already: bool = False  # the board and the bundle held this enrolment before
    release_pub: bool = False  # the fleet's release key was written to /release.pub

    def public(self) -> dict:
        return {"node": self.node, "kind": self.kind, "zone": self.zone, "site": self.site}


def plan(zone: str | None, site: str | None, kind: str | None, node: str | None = None,
         zones_path: Path | None = None) -> NodePlacement:
    """The placement to enrol: from zone, site and kind, or from the node id on a label."""
    try:
        if node is not None:
            if len(node) != 8 or any(c not in "0123456789abcdef" for c in node):
                raise UserError(f"--node {node!r}: a node id is 8 lower-case hex digits, as "
                                "printed on the label, e.g. 0001001a", EXIT_BAD_INPUT)
            found = next((p for p in load_placements(zones_path)
                          if p.node_id == int(node, 16)), None)
            if found is None:
                raise UserError(f"node {node} has no place in the zones file: check the "
                                "label, or give --zone, --site and --kind", EXIT_BAD_INPUT)
            for given, have, what in ((zone, found.zone, "zone"), (site, found.site, "site"),
                                      (kind, found.kind, "kind")):
                if given is not None and given != have:
                    raise UserError(f"node {node} is the {found.kind} node at {found.zone}/"
                                    f"{found.site}, but --{what} says {given}: check the "
                                    "label", EXIT_BAD_INPUT)
            return found
        if not (zone and site and kind):
            raise UserError("say which node this board becomes: --zone, --site and --kind "
                            "(or --node with the id on its label)", EXIT_BAD_INPUT)
        return placement(zone, site, kind, zones_path)
    except ZonesError as exc:
        raise UserError(str(exc), EXIT_BAD_INPUT) from None


def check_kind_fits_profile(kind: str, profile: Board) -> None:
    if kind == "crowd" and not profile.ble:
        raise UserError(f"a {profile.name} has no Bluetooth LE radio: it cannot be a crowd "
                        "node", EXIT_BAD_INPUT)
    missing = [p for p in KIND_NEEDS[kind] if p not in profile.pins]
    if missing:
        raise UserError(f"the {profile.name} profile has no {', '.join(missing)} pins: it "
                        f"cannot carry a {kind} node's sensors", EXIT_BAD_INPUT)


def board_pins(profile: Board) -> dict:
    return {k: v for k, v in profile.pins.items() if k != "led"}


def probe_sensors(link: BoardLink, kind: str, profile: Board) -> list[list]:
    """Ask the board's own firmware whether `kind`'s sensors answer (firmware/selftest.py)."""
    code = ("import json\nfrom firmware import board, selftest\n"
            f"hw = board.build(wdt_timeout_ms=None, kind={kind!r}, "
            f"pins={board_pins(profile)!r})\n"
            f"print(json.dumps(selftest.sensors(hw, {kind!r})))\n")
    return link.exec_json(code, f"checking the board's {kind} sensors", timeout_s=15)


def config_doc(p: NodePlacement, profile: Board, broker: dict,
               wifi: dict | None = None) -> dict:
    doc = {"version": node_config.VERSION, "node_id": protocol.node_name(p.node_id),
           "kind": p.kind, "zone": p.zone, "site": p.site, "key_id": 0,
           "key_file": node_config.KEY_FILE, "broker": broker,
           # the profile: an update over the air must be for this board (docs/ota.md §2)
           "board": {"pins": board_pins(profile), "profile": profile.id}}
    if wifi:
        doc["wifi"] = wifi
    return doc


def _board_node(link: BoardLink) -> dict | None:
    """The node the board is enrolled as (public fields and key fingerprint), or None."""
    code = ("import json\nfrom firmware import config, hal, protocol\n"
            "from binascii import hexlify\n"
            "try:\n    c = config.load(hal.Flash('/'))\nexcept Exception:\n    c = None\n"
            "print(json.dumps(None if c is None else {'node': c.node, 'kind': c.kind, "
            "'zone': c.zone, 'site': c.site, 'fingerprint': hexlify(protocol.hmac_sha256("
            f"c.key, {KEY_FINGERPRINT_MSG!r})[:8]).decode()}}))\n")
    return link.exec_json(code, "reading the board's enrolment")


def enrol(link: BoardLink, info: BoardInfo, p: NodePlacement, recipient_path: Path,
          bundle_path: Path, broker: dict, wifi: dict | None = None,
          keyring_path: Path | None = None, force: bool = False,
          clock=dt.datetime.now, release_pub: Path | None = None) -> Enrolment:
    """Enrol the board; with `release_pub` (the fleet's release.pub) also put that key on
    the board as /release.pub, the only key it takes firmware over the air from
    (docs/ota.md §1), also when the board was enrolled before."""
    profile = info.profile
    release_pub_text = _release_pub_text(release_pub) if release_pub is not None else None
    if profile is None:
        raise UserError(f"this tool has no profile for the board ({info.machine}): it "
                        "enrols the boards in hardware/data/boards/", EXIT_BAD_INPUT)
    node = protocol.node_name(p.node_id)
    try:
        recipient = bundles.load_public_key(recipient_path)
        bundle = bundles.Bundle.load_or_new(bundle_path, recipient)
    except bundles.BundleError as exc:
        raise UserError(str(exc), EXIT_BAD_INPUT) from None
    try:
        on_board = _board_node(link)
    except BoardCodeError:
        raise UserError("the board has no dordt firmware to enrol: install it first "
                        "(`dordt provision install`)", EXIT_BAD_INPUT) from None

    earlier = bundle.find(node)
    if earlier is not None:
        if on_board and on_board["node"] == node and \
                on_board["fingerprint"] == earlier["fingerprint"]:
            if release_pub_text is not None:
                _write_release_pub(link, release_pub_text)
            return Enrolment(node, p.kind, p.zone, p.site, earlier["board"],
                             earlier["enrolled_at"], earlier["fingerprint"], already=True,
                             release_pub=release_pub_text is not None)
        raise UserError(f"node {node} was enrolled already (at {earlier['enrolled_at']}, "
                        f"recorded in {bundle_path}): a node id is enrolled once; check the "
                        "label, or have the fleet operator revoke it before a new board takes "
                        "its place", EXIT_BAD_INPUT)
    if keyring_path is not None and keyring_path.exists():
        try:
            if Keyring.load(keyring_path).get(p.node_id) is not None:
                raise UserError(f"node {node} is in the keyring {keyring_path} already: a "
                                "node id is enrolled once", EXIT_BAD_INPUT)
        except KeyringError as exc:
            raise UserError(str(exc), EXIT_BAD_INPUT) from None
    if on_board and on_board["node"] != node and not force:
        raise UserError(f"this board is enrolled as node {on_board['node']} ({on_board['kind']}"
                        f", {on_board['zone']}/{on_board['site']}) already: take a fresh board, "
                        "or give --force to enrol it again as a new node", EXIT_BAD_INPUT)

    check_kind_fits_profile(p.kind, profile)
    failed = [row for row in probe_sensors(link, p.kind, profile) if not row[1]]
    if failed:
        raise UserError(f"this board's sensors do not fit the {p.kind} kit: "
                        + "; ".join(f"{name}: {detail}" for name, _, detail in failed)
                        + f"; wire the {p.kind} kit (hardware/data/kits.toml) or enrol the "
                        "board as the kind its sensors fit", EXIT_BAD_INPUT)

    key = secrets.token_bytes(protocol.KEY_LEN)
    doc = config_doc(p, profile, broker, wifi)
    key_text = key.hex().encode()
    try:
        node_config.parse(doc, lambda name: key_text)
    except node_config.ConfigError as exc:
        raise UserError(f"the node config would be invalid: {exc}", EXIT_BAD_INPUT) from None
    fingerprint = bundles.fingerprint(key)
    _write_board(link, doc, key)
    written = _board_node(link)
    if not written or written["node"] != node or written["fingerprint"] != fingerprint:
        _remove_key(link)
        raise UserError("the board did not keep the key and config just written (its flash "
                        "may be failing): nothing was recorded; run enrol again, and set the "
                        "board aside if it fails twice", 1)
    enrolled_at = clock(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    public = {"node": node, "kind": p.kind, "zone": p.zone, "site": p.site,
              "board": profile.id, "key_id": 0, "enrolled_at": enrolled_at,
              "fingerprint": fingerprint}
    bundle.entries.append(bundles.seal(public, key, recipient))
    try:
        bundle.save(bundle_path)
    except OSError as exc:
        _remove_key(link)
        raise UserError(f"could not record the enrolment in {bundle_path} ({exc.strerror}): "
                        "the key was removed from the board again; free space or pick "
                        "another --work-dir and enrol again", 1) from None
    if release_pub_text is not None:
        # After the bundle: a board that did not keep it is enrolled, and enrol run again
        # (the "enrolled already" path above) writes the release key once more.
        _write_release_pub(link, release_pub_text)
    return Enrolment(node, p.kind, p.zone, p.site, profile.id, enrolled_at, fingerprint,
                     release_pub=release_pub_text is not None)


def _release_pub_text(path: Path) -> str:
    from fleet.release import ReleaseError, load_public_key

    try:
        return load_public_key(path).hex() + "\n"  # 64 hex digits, as the node reads it
    except ReleaseError as exc:
        raise UserError(f"--release-pub: {exc}", EXIT_BAD_INPUT) from None


def _write_release_pub(link: BoardLink, text: str) -> None:
    from firmware.ota_verify import RELEASE_PUB

    link.exec(f"from firmware import hal\nhal.Flash('/').replace({RELEASE_PUB!r}, "
              f"{text.encode()!r})\n", "writing the fleet's release key")
    back = link.exec_json("import json\nfrom firmware import hal\n"
                          f"d = hal.Flash('/').read({RELEASE_PUB!r})\n"
                          "print(json.dumps(d.decode() if d else None))\n",
                          "reading the release key back")
    if back != text:
        raise UserError(f"the board did not keep /{RELEASE_PUB} (its flash may be failing): "
                        "the node is enrolled but takes no update over the air; run enrol "
                        "again with --release-pub", 1)


def _write_board(link: BoardLink, doc: dict, key: bytes) -> None:
    # hal.Flash.replace: each file is complete or absent after a cut, never torn.
    key_text = key.hex().encode() + b"\n"  # node.key: 64 hex digits (firmware/config.py)
    link.exec("from firmware import hal\n_fl = hal.Flash('/')\n"
              f"_fl.replace({node_config.KEY_FILE!r}, {key_text!r})\n"
              f"_fl.replace({node_config.CONFIG_FILE!r}, {json.dumps(doc).encode()!r})\n"
              "del _fl\n", "writing the node's key and config")


def _remove_key(link: BoardLink) -> None:
    try:
        link.exec(f"from firmware import hal\nhal.Flash('/').remove({node_config.KEY_FILE!r})\n",
                  "removing the node key")
    except Exception:  # best effort: the error that brought us here is the one to report
        pass
