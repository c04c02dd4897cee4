"""The one place that wires the gateway's stages, in order:

    ingest → verify → anonymise → buffer → forward

A processing thread takes envelopes off the ingest queue in groups (up to `group_max`,
or whatever arrived within `group_wait_s`), verifies and anonymises them, commits the
group to the outbox in one transaction, and only then acks every envelope of the group
to its link.  The forwarder drains the outbox to the store on its own thread.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from firmware.uplink.mqtt import encode_time, topic_down
from fleet.keyring import Keyring
from gateway.anonymise import Anonymiser, default_policy_path, load_policy
from gateway.buffer import EVICT_DISK_FULL, Outbox
from gateway.config import GatewayConfig
from gateway.forward import Store, open_store
from gateway.forward.forwarder import Forwarder, Provenance
from gateway.health import Health, sd_notify, watchdog_interval_s
from gateway.ingest.mqtt import MqttIngest, MqttTls
from gateway.keyring_source import KeyringSource
from gateway.model import Envelope, Reading, Rejected
from gateway.ota import SUBSCRIPTIONS as OTA_SUBSCRIPTIONS
from gateway.ota import OtaServer, OtaSettings
from gateway.provenance import AuditLog, GatewayIdentity
from gateway.verify import Verifier

log = logging.getLogger("dordt.gateway")

TIME_DOWNLINK_EVERY_S = 60.0
# A node on trial after an update (gateway/ota.py) confirms once a time message tells it
# that a frame of this boot was accepted (firmware/ota.py): sooner than the minute above.
TIME_DOWNLINK_TRIAL_EVERY_S = 2.0


@dataclass
class GatewayStats:
    received: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    # (node or None, reason): lets people see which nodes misbehave.  In memory only.
    rejected_by_node: Counter = field(default_factory=Counter)


class Gateway:
    def __init__(
        self,
        keyring: Keyring,
        store: Store,
        data_dir: str | Path,
        broker_url: str | None = None,
        client_id: str = "dordt-gateway",
        gateway_id: str | None = None,
        group_max: int = 2000,
        group_wait_s: float = 0.05,
        buffer_max_bytes: int | None = 512 * 1024 * 1024,
        buffer_max_age_s: float | None = 30 * 86400,
        housekeeping_s: float = 5.0,
        buffer_reserve_bytes: int = 16 * 1024 * 1024,
        buffer_wal_pages: int = 1000,
        heartbeat_s: float = 60.0,
        health_port: int | None = None,
        serial_ports: list[str] | tuple[str, ...] = (),
        serial_baudrate: int = 115200,
        ble: dict | None = None,
        policy_path: str | Path | None = None,
        broker_tls: MqttTls | None = None,
        keyring_source: KeyringSource | None = None,
        ota: OtaSettings | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.outbox = Outbox(self.data_dir / "outbox.sqlite", buffer_max_bytes,
                             buffer_max_age_s, wal_pages=buffer_wal_pages,
                             reserve_bytes=buffer_reserve_bytes)
        self.housekeeping_s = housekeeping_s
        self.verifier = Verifier(keyring, self.outbox.load_windows())
        # the keyring file, watched: newer keyrings are taken on the pipeline thread
        self.keyring_source = keyring_source
        self.gateway_id = gateway_id or client_id
        self.identity = GatewayIdentity.load_or_create(self.data_dir, self.gateway_id)
        self.audit = AuditLog(self.data_dir / "audit.log")
        policy = load_policy(policy_path or default_policy_path(),
                             known_zones=_known_zones(keyring))
        self.anonymiser = Anonymiser(policy, self.data_dir / "privacy.sqlite")
        self.outbox.note_policy(self.anonymiser.policy_version, self.anonymiser.policy_digest)
        self.forwarder = Forwarder(self.outbox, store,
                                   provenance=Provenance(self.identity, self.audit,
                                                         self.anonymiser.policy_version,
                                                         self.anonymiser.policy_digest))
        self.store = store
        # SimpleQueue: put and get in C, no Condition per item (MQTT's network thread and
        # the processing thread each touch every frame once)
        self.queue: queue.SimpleQueue[Envelope] = queue.SimpleQueue()
        self.ingest = (MqttIngest(broker_url, self.queue, client_id, tls=broker_tls,
                                  extra=OTA_SUBSCRIPTIONS if ota is not None else (),
                                  on_extra=self._ota_message)
                       if broker_url else None)
        # links without acks (serial, BLE): started and stopped beside MQTT
        self.links: list = []
        for port in serial_ports:
            from gateway.ingest.serial import SerialIngest

            self.links.append(SerialIngest(port, self.queue, serial_baudrate))
        if ble is not None:
            from gateway.ingest.ble import BleIngest

            self.links.append(BleIngest(
                self.queue, adapter=ble.get("adapter") or None,
                scanning_mode=ble.get("scanning_mode", "active"),
                is_fleet_node=lambda n: self.verifier.keyring.get(n) is not None))
        self.group_max = group_max
        self.group_wait_s = group_wait_s
        self.stats = GatewayStats()
        self.rejections: list[Rejected] = []  # the latest few, for people
        self.alerts: dict[str, float] = {}  # name -> when it was last raised (health)
        self._time_sent: dict[int, float] = {}  # node id -> when it was last sent the time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_tick = time.monotonic()
        self.ota = None
        if ota is not None and self.ingest is not None:
            self.ota = OtaServer(ota, self.gateway_id, self._zone_of, self.ingest.send)
        self.health = Health(self)
        self.health_port = health_port  # None: no HTTP endpoint; 0: any free port
        self.heartbeat_s = heartbeat_s
        self._next_heartbeat = time.monotonic() + heartbeat_s
        self._watchdog_s = watchdog_interval_s()
        self._next_watchdog = 0.0

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Gateway:
        """A gateway as a validated config file describes it (gateway/gateway.sample.toml)."""
        g, m, st, b, h = cfg["gateway"], cfg["mqtt"], cfg["store"], cfg["buffer"], cfg["health"]
        source = KeyringSource(cfg.path_of("gateway", "keyring"),
                               cfg.path_of("gateway", "data_dir"), g["id"],
                               signer_path=cfg.path_of("gateway", "keyring_signer"),
                               private_key_path=cfg.path_of("gateway", "keyring_key"),
                               poll_s=g["keyring_poll_s"])
        keyring = source.load()
        spec = st["url"]
        if spec.startswith("sqlite:"):
            store = open_store(spec)
        else:
            store = open_store(spec, token=cfg.store_token(), org=st["org"],
                               bucket=st["bucket"], timeout_s=st["timeout_s"])
        gw = cls(
            keyring, store, cfg.path_of("gateway", "data_dir"), m["url"],
            client_id=m["client_id"], gateway_id=g["id"],
            buffer_max_bytes=int(b["max_mb"] * 1024 * 1024),
            buffer_max_age_s=b["max_age_days"] * 86400,
            heartbeat_s=h["heartbeat_s"], health_port=cfg.health_listen[1],
            serial_ports=cfg["serial"]["ports"], serial_baudrate=cfg["serial"]["baudrate"],
            ble=cfg["ble"] if cfg["ble"]["enabled"] else None,
            policy_path=cfg.path_of("gateway", "policy") if g["policy"] else None,
            broker_tls=MqttTls(cfg.path_of("mqtt", "ca_file"), cfg.path_of("mqtt", "cert_file"),
                               cfg.path_of("mqtt", "key_file"))
            if m["url"].startswith("mqtts://") else None,
            keyring_source=source,
            ota=OtaSettings(cfg.path_of("ota", "releases"), cfg.path_of("ota", "offers"),
                            cfg["ota"]["chunk_bytes"], cfg["ota"]["offer_every_s"])
            if cfg["ota"]["releases"] else None,
        )
        gw.forwarder.batch_max = st["batch_max"]
        return gw

    # -- processing -------------------------------------------------------------------------

    def process(self, envelopes: list[Envelope]) -> list[Reading | Rejected]:
        """Verify, anonymise and durably commit one group, then ack it."""
        check = self.verifier.check
        results = [check(env) for env in envelopes]
        verified = [r for r in results if type(r) is Reading]
        refused = [r for r in results if type(r) is not Reading] if len(verified) < len(
            results) else []
        rejected = Counter(r.reason for r in refused)
        moved = self.verifier.take_dirty()
        try:
            # Inside the try: if the accountant cannot record its spending, nothing of the
            # group is committed or acked, and its window moves are forgotten.
            readings = self.anonymiser.apply(verified)
            counts = Counter({"received": len(envelopes), "accepted": len(readings)})
            counts.update({f"rejected.{k}": v for k, v in rejected.items()})
            try:
                self.outbox.commit(readings, moved, counts, self.anonymiser.policy_version)
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                # The buffer's filesystem is full: raise the alert, give up the ballast
                # and try again; only if that is not enough, make room by evicting the
                # oldest readings (gap records say so) and try once more.  Evicting first
                # lost every buffered reading to a disk filled for a moment by something
                # else, with the store up and draining (bench/soak.py, disk_full).
                self.alerts["disk_full"] = time.time()
                released = self.outbox.release_ballast()
                self.outbox.checkpoint()
                try:
                    if not released:
                        raise exc
                    log.error("buffer disk full: using the ballast's room")
                    self.outbox.commit(readings, moved, counts,
                                       self.anonymiser.policy_version)
                except sqlite3.OperationalError as again:
                    if not _disk_full(again):
                        raise
                    log.error("buffer disk full: evicting the oldest readings to make room")
                    self.outbox.evict_oldest(max(1000, 2 * len(readings)), EVICT_DISK_FULL)
                    self.outbox.checkpoint()
                    self.outbox.commit(readings, moved, counts,
                                       self.anonymiser.policy_version)
        except Exception:
            # Nothing of this group is durable: forget its window moves and do not ack,
            # so the broker redelivers it.
            self.verifier.restore(self.outbox.load_windows())
            raise
        if "disk_full" in self.alerts and not self.outbox.ballast.exists():
            # Take the ballast back as soon as there is room, not at the next
            # housekeeping: a disk that fills again before then would find no room to
            # give and cost the oldest readings (bench/soak.py, disk_full twice in 5 s).
            self.outbox.restore_ballast()
        for env in envelopes:
            if env.ack is not None:
                env.ack()
        self.stats.received += len(envelopes)
        self.stats.accepted += len(readings)
        self.stats.rejected.update(rejected)
        for r in refused:
            if isinstance(r, Rejected):
                self.stats.rejected_by_node[(r.node, r.reason)] += 1
                log.info("rejected %s frame (%s): %s", r.source, r.reason, r.detail)
                self.rejections = (self.rejections + [r])[-20:]
        if readings:
            self.forwarder.wake()
            self._send_time([r for r in readings if r.time_estimated], envelopes, results)
            if self.ota is not None:
                ota = self.ota
                nodes = {r.node for r in readings}
                self._send_time([r for r in readings if ota.awaiting_confirmation(r.node)],
                                envelopes, results, TIME_DOWNLINK_TRIAL_EVERY_S)
                ota.on_frames(nodes)
        return results

    def _ota_message(self, topic: str, payload: bytes) -> None:
        if self.ota is not None:
            self.ota.on_message(topic, payload)

    def _zone_of(self, node: str) -> str | None:
        """The keyring's zone of a node name (gateway/ota.py), or None."""
        try:
            entry = self.verifier.keyring.get(int(node, 16))
        except ValueError:
            return None
        return entry.zone if entry is not None else None

    def _send_time(self, unsynced: list[Reading], envelopes: list[Envelope], results: list,
                   every_s: float = TIME_DOWNLINK_EVERY_S) -> None:
        """Nodes without a clock get the gateway's time on their downlink topic, signed with
        their key (firmware/uplink/mqtt.py: encode_time), at most once a minute each (every
        TIME_DOWNLINK_TRIAL_EVERY_S for a node on trial).  Signed with the key id of the
        node's frame: during a key rotation the keyring holds two keys, and a node accepts
        time only under the key id it uses."""
        if self.ingest is None or not unsynced:
            return
        # byte 3 of a frame is its key id (docs/protocol.md §2)
        wanted = {r.node for r in unsynced}
        key_ids = {r.node: env.payload[3] for env, r in zip(envelopes, results, strict=True)
                   if type(r) is Reading and r.node in wanted}
        now = time.time()
        for r in unsynced:
            node_id = int(r.node, 16)
            entry = self.verifier.keyring.get(node_id)
            window = self.verifier.windows.get(node_id)
            if entry is None or window is None or not entry.keys:
                continue
            if now - self._time_sent.get(node_id, 0.0) < every_s:
                continue
            key_id = key_ids.get(r.node, max(entry.keys))
            if key_id not in entry.keys:
                continue
            msg = encode_time(entry.keys[key_id], node_id, max(window.highest, 0), int(now),
                              key_id)
            if self.ingest.send(topic_down(entry.zone, node_id), msg):
                self._time_sent[node_id] = now

    def loop_alive(self, now_s: float | None = None) -> bool:
        """False when the processing thread has died or stopped turning."""
        if self._thread is None:
            return True
        return self._thread.is_alive() and time.monotonic() - self._loop_tick < 30

    def housekeeping(self) -> None:
        """Periodic duties: the buffer's bounds, the heartbeat to the store."""
        if self.outbox.enforce_bounds():
            self.alerts["buffer_evicting"] = time.time()
            self.forwarder.wake()
        if self.ota is not None:
            self.ota.tick()
            for point in self.ota.take_points():
                self.outbox.add_point(point)
            self.forwarder.wake()
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + self.heartbeat_s
            self.outbox.add_point(self.health.heartbeat_point())
            self.forwarder.wake()

    def _poll_keyring(self) -> None:
        """Take a newer keyring from the watched file (gateway/keyring_source.py).  On this
        thread, between groups: a group is verified against one keyring.  use_keyring keeps
        the replay windows, so a rotated key id continues the node's counter (docs/protocol.md
        §4) and a keyring change never reopens a replay."""
        refused = sum(self.keyring_source.refused.values())
        try:
            ring = self.keyring_source.poll()
        except Exception:
            log.exception("keyring: could not check %s; keeping the keyring in use",
                          self.keyring_source.path)
            return
        if sum(self.keyring_source.refused.values()) > refused:
            self.alerts["keyring_refused"] = time.time()
        if ring is not None:
            self.verifier.use_keyring(ring)

    def _run(self) -> None:
        next_housekeeping = time.monotonic()
        while not self._stop.is_set() or not self.queue.empty():
            self._loop_tick = time.monotonic()
            if self._watchdog_s and self._loop_tick >= self._next_watchdog:
                self._next_watchdog = self._loop_tick + self._watchdog_s
                sd_notify("WATCHDOG=1")
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + self.housekeeping_s
                try:
                    self.housekeeping()
                except Exception:
                    log.exception("housekeeping failed; will try again")
            if self.keyring_source is not None:
                self._poll_keyring()
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            group = [first]
            deadline = time.monotonic() + self.group_wait_s
            while len(group) < self.group_max:
                remaining = deadline - time.monotonic()
                try:
                    group.append(self.queue.get(timeout=max(remaining, 0)) if remaining > 0
                                 else self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.process(group)
            except Exception:
                log.exception("could not commit %d frames; they stay unacked", len(group))
                time.sleep(1)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        self.forwarder.start()
        if self.ingest is not None:
            self.ingest.start()
        for link in self.links:
            link.start()
        if self.health_port is not None:
            self.health_port = self.health.serve(port=self.health_port)
        sd_notify("READY=1")

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop ingest, commit what was received, give the forwarder up to
        `drain_timeout_s` to empty the outbox, then close everything."""
        sd_notify("STOPPING=1")
        if self.ingest is not None:
            self.ingest.stop()
        for link in self.links:
            link.stop()
        self.health.close()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.forwarder.stop(drain_timeout_s)
        self.store.close()
        self.outbox.close()
        self.anonymiser.close()


def _known_zones(keyring: Keyring) -> set[str]:
    """Zones a policy may name: the keyring's and the zones file's."""
    from hardware.sites import load_zones

    return {entry.zone for entry in keyring} | {zone.id for zone in load_zones()}


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc)
