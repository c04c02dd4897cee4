"""The gateway's over-the-air update server (docs/ota.md §3, §4).

In:  the `[ota]` config (a release directory with one sub-directory per serial, an offers
     file, the chunk size), the node's `get` and `state` messages on
     dordt/v1/+/+/ota/get and .../state, and the nodes whose frames the pipeline accepted.
Out: `offer` messages to the nodes the offers file names (on start, when the file changes,
     and when a node's frame arrives, at most once per `offer_every_s` each); a `chunk`
     answering each `get`; every `state` message as an `ota` point for the outbox; the
     nodes that switched to a release on trial (the pipeline sends them a signed time
     message after their next accepted frame: the "frame accepted" half of the node's
     health check, firmware/ota.py).

The server uses the gateway's one MQTT session (gateway/ingest/mqtt.py: its `extra`
subscriptions, acked at once, not after an outbox commit as frames are): a broker that
takes client ids from certificates (gateway/mosquitto.py) allows a gateway one session.

Nothing a node sends is trusted: `get` answers only files a release's release.json names
(fleet/release.py's Release.file_path: no path outside the release), at most `chunk_bytes`
at a time; what a node does with them is checked on the node against the signature.

On failure: an offers file that cannot be read or parsed is logged and the last good one
kept; a release directory that cannot be read is logged and not offered; a bad `get` gets
a chunk message with `error` and no bytes; a bad `state` message is counted and dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from firmware import protocol
from fleet.offers import OTA_STATES, OffersError, read_offers, version_code
from fleet.release import ReleaseError, load_release
from gateway.model import Point

log = logging.getLogger("dordt.gateway.ota")

SUB_GET = protocol.TOPIC_ROOT + "/+/+/ota/get"
SUB_STATE = protocol.TOPIC_ROOT + "/+/+/ota/state"
FINAL = {"confirmed", "refused", "rolled_back"}  # no more offers of that serial to that node
CHUNK_MIN_BYTES = 64
CHUNK_MAX_BYTES = 2048  # gateway/mosquitto.py's max_packet_size leaves room for this
REQUEST_MAX_BYTES = 512  # a get or state message is a few dozen bytes
DETAIL_MAX_CHARS = 200


@dataclass(frozen=True)
class OtaSettings:
    """The `[ota]` section (gateway/gateway.sample.toml)."""

    releases_dir: Path
    offers_file: Path
    chunk_bytes: int = 1024
    offer_every_s: float = 60.0


def topic(zone: str, node: str, suffix: str) -> str:
    return f"{protocol.TOPIC_ROOT}/{zone}/{node}/ota/{suffix}"


SUBSCRIPTIONS = [(SUB_GET, 1), (SUB_STATE, 1)]  # for MqttIngest's `extra`


class OtaServer:
    """See the module docstring.  `zone_of(node)` gives the zone of a node name ("0001001a")
    from the keyring, or None for a node the gateway does not serve; `publish(topic,
    payload) -> bool` sends QoS 1 on the gateway's session (False while it is down)."""

    def __init__(self, settings: OtaSettings, gateway_id: str, zone_of, publish,
                 clock=time.time):
        self.settings = settings
        self.gateway_id = gateway_id
        self.zone_of = zone_of
        self.publish = publish
        self.clock = clock
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._offers: dict[str, int] = {}  # node -> serial offered
        self._offers_stamp: tuple | None = None
        self._releases: dict[int, object] = {}  # serial -> fleet.release.Release
        self._offered_at: dict[str, float] = {}  # node -> when last offered
        self._last_state: dict[str, tuple[int, str]] = {}  # node -> (serial, state)
        self._points: list[Point] = []
        self._offered_all = False  # every node offered to once since start
        self.reload_offers()

    def tick(self) -> None:
        """Periodic (the gateway's housekeeping): a changed offers file, or the first
        chance after start, offers to every node it names."""
        if self.reload_offers() or not self._offered_all:
            self.offer_all()

    # -- offers -----------------------------------------------------------------------------

    def reload_offers(self) -> bool:
        """Read the offers file again when it changed (size or mtime); True when it did and
        was taken.  A bad file keeps the last good offers."""
        path = self.settings.offers_file
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._offers_stamp:
            return False
        self._offers_stamp = stamp
        if stamp is None:
            log.warning("OTA: no offers file %s; offering nothing", path)
            with self._lock:
                self._offers = {}
            return True
        try:
            offers = dict(read_offers(path))
        except OffersError as exc:
            self._count("offers_file_bad")
            log.error("OTA: offers file %s not used (%s); keeping the last good one", path, exc)
            return False
        with self._lock:
            self._offers = offers
            self._offered_at.clear()
        log.info("OTA: offers file %s: %d nodes", path, len(offers))
        return True

    def release(self, serial: int):
        """The Release of `serial` in the release directory, or None (logged)."""
        rel = self._releases.get(serial)
        if rel is None:
            directory = self.settings.releases_dir / str(serial)
            try:
                rel = load_release(directory)
            except (ReleaseError, OSError) as exc:
                log.error("OTA: release %d not served: %s", serial, exc)
                return None
            if rel.serial != serial:
                log.error("OTA: %s holds release %d, not %d; not served", directory,
                          rel.serial, serial)
                return None
            self._releases[serial] = rel
        return rel

    def offer_all(self) -> int:
        """Offer now to every node of the offers file (start, a changed file)."""
        with self._lock:
            nodes = list(self._offers)
        sent = [self._offer(node, force=True) for node in nodes]
        self._offered_all = all(sent)
        return sum(sent)

    def on_frames(self, nodes) -> int:
        """Nodes whose frames were just accepted: offer to those due (rate-limited)."""
        if self.reload_offers():
            return self.offer_all()
        return sum(self._offer(node) for node in set(nodes))

    def _offer(self, node: str, force: bool = False) -> bool:
        now = self.clock()
        with self._lock:
            serial = self._offers.get(node)
            if serial is None:
                return False
            last = self._last_state.get(node)
            if last is not None and last[0] == serial and last[1] in FINAL:
                return False
            if last is not None and last[0] == serial and last[1] == "switched":
                return False  # it is rebooting into it: the trial decides
            if not force and now - self._offered_at.get(node, 0.0) < self.settings.offer_every_s:
                return False
            self._offered_at[node] = now
        zone = self.zone_of(node)
        rel = self.release(serial)
        if zone is None or rel is None:
            return True  # nothing to send, and nothing to retry
        body = {"serial": serial, "version": rel.version, "size": rel.size,
                "chunk": self.settings.chunk_bytes}
        if not self.publish(topic(zone, node, "offer"), _compact(body)):
            with self._lock:
                self._offered_at.pop(node, None)
            return False
        self._count("offers")
        return True

    def awaiting_confirmation(self, node: str) -> bool:
        """True when `node` has an offer it has not confirmed, refused or rolled back: it
        may be on trial (also after a restart of this gateway, which forgets states)."""
        with self._lock:
            serial = self._offers.get(node)
            last = self._last_state.get(node)
        if serial is None:
            return False
        return last is None or last[0] != serial or last[1] not in FINAL

    # -- messages from nodes ----------------------------------------------------------------

    def on_message(self, topic_name: str, payload: bytes) -> None:
        """A message on SUBSCRIPTIONS (called on the MQTT client's thread)."""
        parts = topic_name.split("/")
        if len(parts) != 6 or parts[4] != "ota":
            return
        zone, node, suffix = parts[2], parts[3], parts[5]  # dordt/v1/<zone>/<node>/ota/<x>
        try:
            if suffix == "get":
                self.answer_get(zone, node, payload)
            elif suffix == "state":
                self.record_state(zone, node, payload)
        except Exception:  # one bad message must not stop the network thread
            log.exception("OTA: %s from %s not handled", suffix, node)

    def answer_get(self, zone: str, node: str, payload: bytes) -> bytes:
        """The chunk message for a `get` (published to the node); returned for tests."""
        try:
            req = _request(payload, {"serial": int, "path": str, "offset": int,
                                     "length": int})
        except ValueError as exc:
            self._count("gets_refused")
            msg = _compact({"serial": None, "path": None, "error": str(exc)})
            self._publish(zone, node, "chunk", msg)
            return msg
        serial, path, offset, length = (req["serial"], req["path"], req["offset"],
                                        req["length"])
        error = None
        data = b""
        total = 0
        served = self.zone_of(node) is not None
        rel = self.release(serial) if served else None
        if not served:
            error = "node not served by this gateway"
        elif rel is None:
            error = f"no release {serial} here"
        else:
            try:
                file = rel.file_path(path)
                total = file.stat().st_size
                if offset < 0 or offset > total or length < 0:
                    error = f"offset {offset} length {length} outside {path} ({total} bytes)"
                else:
                    with file.open("rb") as f:
                        f.seek(offset)
                        data = f.read(min(length, self.settings.chunk_bytes))
            except ReleaseError:
                error = f"release {serial} has no file {path!r}"
            except OSError as exc:
                error = f"cannot read {path}: {exc.strerror}"
        if error is not None:
            self._count("gets_refused")
            msg = _compact({"serial": serial, "path": path, "error": error})
        else:
            self._count("chunks")
            self._count("chunk_bytes", len(data))
            msg = _compact({"serial": serial, "path": path, "offset": offset,
                            "total": total}) + b"\n" + data
        self._publish(zone, node, "chunk", msg)
        return msg

    def record_state(self, zone: str, node: str, payload: bytes) -> Point | None:
        """A node's `state` message as an `ota` point (queued for the outbox)."""
        try:
            msg = _request(payload, {"serial": int, "state": str})
        except ValueError:
            self._count("states_refused")
            return None
        state = msg["state"]
        if state not in OTA_STATES or self.zone_of(node) is None:
            self._count("states_refused")
            return None
        version = msg.get("version") if isinstance(msg.get("version"), str) else ""
        detail = str(msg.get("detail", ""))[:DETAIL_MAX_CHARS]
        point = Point("ota", {"zone": zone, "node": node, "gateway": self.gateway_id},
                      {"serial": float(msg["serial"]), "state": float(OTA_STATES[state]),
                       "version": float(_version_code(version))}, int(self.clock()))
        with self._lock:
            self._last_state[node] = (msg["serial"], state)
            self._points.append(point)
        self._count(f"state.{state}")
        log.info("OTA: node %s release %d: %s (%s)", node, msg["serial"], state, detail)
        return point

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:  # read by health's HTTP thread, written by MQTT's and the pipeline's
            self.counts[name] += n

    def take_points(self) -> list[Point]:
        with self._lock:
            points, self._points = self._points, []
        return points

    def stats(self) -> dict:
        with self._lock:
            return {"offered_nodes": len(self._offers), **dict(self.counts)}

    def _publish(self, zone: str, node: str, suffix: str, body: bytes) -> None:
        self.publish(topic(zone, node, suffix), body)


def _version_code(text: str) -> int:
    """MMmmpp of a node's version text; 0 when it is not M.m.p (the message is untrusted)."""
    try:
        return version_code(text)
    except ValueError:
        return 0


def _request(payload: bytes, need: dict[str, type]) -> dict:
    if len(payload) > REQUEST_MAX_BYTES:
        raise ValueError(f"message over {REQUEST_MAX_BYTES} bytes")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    for key, kind in need.items():
        value = msg.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{key!r} missing or not a {kind.__name__}")
    return msg


def _compact(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
