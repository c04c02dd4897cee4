"""Self-test of an enrolled board: on the node (firmware/selftest.py) its heap, clock,
config, key and the sensors of its kind; then end to end, a status frame signed on the node
and checked here by the gateway's own verifier (gateway/verify.py) with the node's key;
given a broker, the frame is published and a running gateway's signed time reply proves it
was accepted.

In:  an open `BoardLink` to an enrolled board; optionally the enrolment bundle (to check
     that the board holds the key that was sealed) and an MQTT broker URL.
Out: `SelftestReport`: one row per check (name, ok, detail) and `ok` for all of them.
On failure: failed checks are rows, not exceptions; the CLI exits 1 when any failed.
     A board that is not enrolled or has no firmware is a `UserError` (exit 2) saying which
     step to run first.

The node key is read from the board into memory for the verifier and dropped; it is never
written, printed or put in a report (only its fingerprint, fleet/bundle.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from dordt.errors import UserError
from firmware import protocol
from firmware.uplink.mqtt import decode_time, topic_down
from fleet import bundle as bundles
from fleet.keyring import Keyring, NodeEntry
from gateway.model import Envelope, Reading
from gateway.verify import Verifier
from provisioning.enrol import board_pins
from provisioning.identify import BoardInfo
from provisioning.link import BoardCodeError, BoardLink

EXIT_BAD_INPUT = 2
GATEWAY_REPLY_S = 10.0

_ON_NODE = """
import json
from firmware import board, config, hal, selftest
from binascii import hexlify
try:
    cfg = config.load(hal.Flash("/"))
except config.ConfigError as e:
    cfg = None
    print(json.dumps({"enrolled": False, "why": str(e)}))
if cfg is not None:
    hw = board.build(wdt_timeout_ms=None, pins=PINS)
    rows = selftest.basics(hw) + selftest.sensors(hw, cfg.kind)
    topic, frame = selftest.signed_frame(hw)
    print(json.dumps({"enrolled": True, "rows": rows, "node": cfg.node, "kind": cfg.kind,
        "zone": cfg.zone, "site": cfg.site, "key_id": cfg.key_id, "topic": topic,
        "frame": hexlify(frame).decode(), "key": hexlify(cfg.key).decode()}))
"""


@dataclass
class SelftestReport:
    node: str
    kind: str
    zone: str
    site: str
    rows: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.rows)

    def as_dict(self) -> dict:
        return {"node": self.node, "kind": self.kind, "zone": self.zone, "site": self.site,
                "ok": self.ok,
                "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.rows]}


def selftest(link: BoardLink, info: BoardInfo, bundle_path: Path | None = None,
             broker: str | None = None) -> SelftestReport:
    if info.profile is None:
        raise UserError(f"no hardware profile for this board ({info.machine})", EXIT_BAD_INPUT)
    code = _ON_NODE.replace("PINS", repr(board_pins(info.profile)))
    try:
        raw = link.exec_json(code, "running the self-test on the board", timeout_s=20)
    except BoardCodeError as exc:
        if "ImportError" in exc.traceback or "no module named" in exc.traceback:
            raise UserError("the board has no dordt firmware: install it first "
                            "(`dordt provision install`)", EXIT_BAD_INPUT) from None
        raise
    if not raw.get("enrolled"):
        raise UserError(f"the board is not enrolled ({raw.get('why')}): run `dordt provision "
                        "enrol` first", EXIT_BAD_INPUT)
    key = bytes.fromhex(raw.pop("key"))
    report = SelftestReport(raw["node"], raw["kind"], raw["zone"], raw["site"],
                            [tuple(r) for r in raw["rows"]])
    node_id = int(raw["node"], 16)
    frame = bytes.fromhex(raw["frame"])
    _verify(report, key, raw, node_id, frame)
    if bundle_path is not None:
        _check_sealed(report, key, raw["node"], bundle_path)
    if broker:
        _through_gateway(report, key, node_id, raw["zone"], raw["topic"], frame, broker)
    return report


def _verify(report, key, raw, node_id, frame) -> None:
    """The gateway's verifier, with a keyring holding just this node."""
    ring = Keyring([NodeEntry(node_id, raw["kind"], raw["zone"], raw["site"],
                              {raw["key_id"]: key})])
    result = Verifier(ring).check(Envelope("selftest", raw["topic"], frame, time.time()))
    if isinstance(result, Reading):
        report.rows.append(("signed frame", True, f"a status frame signed on the node "
                            f"(counter {result.counter}) passes the gateway's verifier"))
    else:
        report.rows.append(("signed frame", False, f"the gateway's verifier refuses the "
                            f"node's frame: {result.reason} ({result.detail})"))


def _check_sealed(report, key, node, bundle_path: Path) -> None:
    try:
        entry = bundles.Bundle.load(bundle_path).find(node)
    except bundles.BundleError as exc:
        report.rows.append(("enrolment", False, str(exc)))
        return
    if entry is None:
        report.rows.append(("enrolment", False, f"node {node} is not in {bundle_path}: the "
                            "fleet will not know its key; enrol it with this bundle"))
    elif entry["fingerprint"] != bundles.fingerprint(key):
        report.rows.append(("enrolment", False, "the key on the board is not the one sealed "
                            "in the bundle: enrol the board again"))
    else:
        report.rows.append(("enrolment", True, f"the board's key is the one sealed in "
                            f"{bundle_path.name}"))


def _through_gateway(report, key, node_id, zone, topic, frame, broker: str) -> None:
    """Publish the frame and wait for the gateway's signed time reply on the node's downlink
    (gateway/pipeline.py: _send_time answers accepted frames from nodes without a clock)."""
    import paho.mqtt.client as mqtt

    url = urlparse(broker if "://" in broker else "mqtt://" + broker)
    got = threading.Event()
    reply: list[bytes] = []

    def on_message(client, userdata, msg):
        if decode_time(msg.payload, key, node_id, 0) is not None:
            reply.append(msg.payload)
            got.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"dordt-selftest-{protocol.node_name(node_id)}")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    try:
        client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
    except OSError as exc:
        report.rows.append(("gateway", False, f"cannot reach the broker {broker} "
                            f"({exc.strerror or exc}): check the address and that the gateway "
                            "runs"))
        return
    client.loop_start()
    try:
        client.subscribe(topic_down(zone, node_id), qos=1)
        subscribed.wait(5)
        client.publish(topic, frame, qos=1).wait_for_publish(5)
        if got.wait(GATEWAY_REPLY_S):
            report.rows.append(("gateway", True, f"a gateway on {broker} accepted the frame "
                                "(its signed time reply came back)"))
        else:
            report.rows.append(("gateway", False, f"no reply from a gateway on {broker} in "
                                f"{GATEWAY_REPLY_S:.0f} s: is the gateway running with a keyring "
                                "that holds this node (`dordt fleet import`)?"))
    finally:
        client.loop_stop()
        client.disconnect()
