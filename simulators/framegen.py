"""Frame-level generation: signed frames for thousands of nodes, fast.

In:  node placements (hardware/sites.py, or `scaled_placements` for a bigger fleet), a
seed, a cadence, and a zone model (simulators/zonemodel.py) that says what is true at each
site.  Out: frames — byte-identical to `firmware.protocol.encode` for the same fields —
as `Message`s (simulators/recording.py) or straight into a recording.

Each node is a sensor on top of the zone model's truth: small seeded measurement noise,
a per-node calibration offset, a crowd sensor that sees most but not all phones.  A value
is a pure function of (seed, node, time), and so is the counter: a node's counter for the
window ending at t is `2 * (t // cadence)` (+1 for its status frame), always increasing,
so any stretch of time can be generated alone, in parallel, or again, with the same bytes.

Speed (the generator is measured by bench/simulator_throughput.py):
- HMAC-SHA256 from precomputed states: per node, the SHA-256 objects of key^ipad and
  key^opad are made once; a frame costs two `.copy()`s, two updates and two digests
  (RFC 2104 §2), about twice as fast as `hmac.digest`;
- template headers: the constant part of the 19-byte header (version, kind, flags, key
  id, node id; window and metric count) is made once per node, only counter and
  timestamp are packed per frame;
- the metric bytes come from tables: per metric, the id byte and the zigzag varint of
  each raw value are encoded once, so a frame's body is a join of table entries;
- the zone model's slow layers are computed once a minute per site, its window layer
  once per site and window, shared by the site's nodes.

On failure: `ValueError` naming the field, as `protocol.encode`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from firmware import metrics, protocol
from fleet.keyring import Keyring, NodeEntry
from hardware.sites import NodePlacement, Zone, load_placements, load_zones
from simulators.recording import Message, chunk_bytes, varint_bytes, zigzag
from simulators.zonemodel import SiteState, ZoneModel, _mix

M = metrics.BY_NAME
_HEADER_TAIL = struct.Struct(">II")  # counter, timestamp: the only per-frame header fields
_IPAD = bytes(0x36 for _ in range(64))
_OPAD = bytes(0x5C for _ in range(64))

# Metrics each kind sends, in wire order (ascending ids, §2.4).
KIND_METRICS = {
    "air": ("temperature_c", "humidity_pct", "pressure_hpa", "gas_resistance_ohm",
            "pm25_ugm3", "pm10_ugm3", "pm1_ugm3", "air_faults"),
    "noise": ("laeq_db", "lamax_db", "la10_db", "la50_db", "la90_db", "noise_faults"),
    "crowd": ("crowd_count", "rssi_bin_0", "rssi_bin_1", "rssi_bin_2", "rssi_bin_3",
              "rssi_bin_4", "crowd_faults"),
}
STATUS_METRICS = ("uptime_s", "free_heap_bytes", "reset_cause", "firmware_version",
                  "error_count", "dropped_frames", "supply_mv")
FIRMWARE_VERSION = 100  # 0.1.0 as MMmmpp
GAS_STEP_OHM = 100  # the simulated BME680 reports gas resistance in 100-ohm steps
REBOOT_EVERY_S = 7 * 86400  # simulated nodes restart once a week (uptime wraps)
NOISE_ROWS = 4096
NOISE_MASK = NOISE_ROWS - 1
# A crowd sensor's miscount grows with the crowd: 0.25 * sqrt(n) phones (one sd).
_SQRT = [0.25 * math.sqrt(n) for n in range(8192)]


def sim_key(seed: int, node_id: int) -> bytes:
    """A simulated node's key, derived from the seed.  For simulation only: a real node's
    key is random and made at enrolment."""
    return hashlib.sha256(b"dordt-sim-key/%d/%d" % (seed, node_id)).digest()


# -- signing ------------------------------------------------------------------------------


class FrameSigner:
    """HMAC-SHA256 with one node key, from precomputed inner and outer states (RFC 2104:
    H(K^opad || H(K^ipad || m))); the states are copied per frame, not rebuilt."""

    __slots__ = ("key_id", "inner", "outer")

    def __init__(self, key: bytes, key_id: int = 0):
        if len(key) != protocol.KEY_LEN:
            raise ValueError(f"node key must be {protocol.KEY_LEN} bytes, got {len(key)}")
        block = key + bytes(64 - len(key))
        self.key_id = key_id
        self.inner = hashlib.sha256(bytes(a ^ b for a, b in zip(block, _IPAD)))
        self.outer = hashlib.sha256(bytes(a ^ b for a, b in zip(block, _OPAD)))

    def tag(self, signed: bytes | bytearray | memoryview) -> bytes:
        inner = self.inner.copy()
        inner.update(signed)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:protocol.TAG_LEN]

    def sign(self, signed: bytes) -> bytes:
        """`signed` with its tag appended: a whole frame."""
        return signed + self.tag(signed)

    def encode(self, kind: int, node_id: int, counter: int, timestamp: int, window_s: int,
               pairs, flags: int = 0) -> bytes:
        """Exactly `protocol.encode(key, ...)` (same checks, same bytes), faster."""
        return self.sign(encode_unsigned(kind, node_id, counter, timestamp, window_s, pairs,
                                         self.key_id, flags))


def encode_unsigned(kind: int, node_id: int, counter: int, timestamp: int, window_s: int,
                    pairs, key_id: int = 0, flags: int = 0) -> bytes:
    """Header and metrics of a frame (everything the tag covers), with protocol.encode's
    checks: metrics sorted by id, each id once, values in range, at most 200 bytes."""
    pairs = sorted(pairs)
    if not pairs or len(pairs) > protocol.MAX_METRICS:
        raise ValueError(f"a frame carries 1 to {protocol.MAX_METRICS} metrics, "
                         f"got {len(pairs)}")
    for name, value, lo, hi in (
            ("kind", kind, 1, 255), ("flags", flags, 0, protocol.FLAGS_KNOWN),
            ("key_id", key_id, 0, 255), ("node_id", node_id, 0, protocol.U32_MAX),
            ("counter", counter, 0, protocol.U32_MAX),
            ("timestamp", timestamp, 0, protocol.U32_MAX), ("window_s", window_s, 0, 0xFFFF)):
        _check(name, value, lo, hi)
    parts = [struct.pack(">BBBBIIIHB", protocol.VERSION, kind, flags, key_id, node_id,
                         counter, timestamp, window_s, len(pairs))]
    last = -1
    for metric_id, raw in pairs:
        _check("metric id", metric_id, 0, 255)
        if metric_id == last:
            raise ValueError(f"metric 0x{metric_id:02x} appears twice")
        last = metric_id
        _check(f"metric 0x{metric_id:02x} value", raw, protocol.RAW_MIN, protocol.RAW_MAX)
        parts.append(metric_part(metric_id, raw))
    body = b"".join(parts)
    if len(body) + protocol.TAG_LEN > protocol.MAX_FRAME:
        raise ValueError(f"frame would be {len(body) + protocol.TAG_LEN} bytes, over "
                         f"{protocol.MAX_FRAME}")
    return body


def _check(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or value < lo or value > hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


# -- metric tables ---------------------------------------------------------------------------


def metric_part(metric_id: int, raw: int) -> bytes:
    """The bytes of one metric on the wire: its id and the zigzag varint of `raw` (§2.1)."""
    table = _TABLES.get(metric_id)
    if table is not None:
        lo, step, entries = table
        i = raw - lo
        if i >= 0 and i < len(entries) * step and not i % step:
            return entries[i // step]
    return bytes((metric_id,)) + varint_bytes(zigzag(raw))


def _build_table(metric_id: int, lo: int, hi: int, step: int = 1) -> list[bytes]:
    prefix = bytes((metric_id,))
    return [prefix + varint_bytes(zigzag(raw)) for raw in range(lo, hi + 1, step)]


_TABLES: dict[int, tuple[int, int, list[bytes]]] = {}
# Table ranges: the registry range, except where it is huge (crowd counts above 8191 and
# gas resistance above 2 MOhm fall back to encoding on the fly).
_TABLE_SPECS = {
    "temperature_c": (None, None, 1), "humidity_pct": (None, None, 1),
    "pressure_hpa": (None, None, 1), "gas_resistance_ohm": (0, 2_000_000, GAS_STEP_OHM),
    "pm25_ugm3": (None, None, 1), "pm10_ugm3": (None, None, 1), "pm1_ugm3": (None, None, 1),
    "laeq_db": (None, None, 1), "lamax_db": (None, None, 1), "la10_db": (None, None, 1),
    "la50_db": (None, None, 1), "la90_db": (None, None, 1),
    "crowd_count": (0, 8191, 1), "rssi_bin_0": (0, 8191, 1), "rssi_bin_1": (0, 8191, 1),
    "rssi_bin_2": (0, 8191, 1), "rssi_bin_3": (0, 8191, 1), "rssi_bin_4": (0, 8191, 1),
    "air_faults": (0, 255, 1), "noise_faults": (0, 255, 1), "crowd_faults": (0, 255, 1),
}


def tables() -> dict[str, list[bytes]]:
    """Per metric name, the encoded (id, value) bytes indexed by (raw - raw_min) / step.
    Built once per process (~0.2 s), shared by every generator and forked worker."""
    if not _TABLES:
        for name, (lo, hi, step) in _TABLE_SPECS.items():
            m = M[name]
            lo = m.raw_min if lo is None else lo
            hi = m.raw_max if hi is None else hi
            _TABLES[m.id] = (lo, step, _build_table(m.id, lo, hi, step))
    return {name: _TABLES[M[name].id][2] for name in _TABLE_SPECS}


# -- nodes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSetup:
    """What the generator keeps per node."""

    index: int
    placement: NodePlacement
    key: bytes
    topic: str
    salt: int  # seeds this node's measurement noise
    offset: float  # calibration offset of the node's sensor (units of its main metric)
    detect: float  # crowd nodes: share of the phones present that the node hears
    phase: int  # staggers status frames across nodes


def scaled_placements(n_nodes: int, zones: list[Zone] | None = None) -> list[NodePlacement]:
    """`n_nodes` placements spread over the zones: the real sites first, then more sites of
    the same kinds in each zone in turn ("spz-04", ...), ids as hardware.sites derives
    them (zone number << 16 | site number << 4 | kind)."""
    zones = zones if zones is not None else load_zones()
    if n_nodes < 1:
        raise ValueError(f"a fleet needs at least one node, got {n_nodes}")
    out: list[NodePlacement] = []
    site_no = 0
    while len(out) < n_nodes:
        site_no += 1
        if site_no >= 1 << 12:
            raise ValueError(f"{n_nodes} nodes do not fit 4095 sites per zone")
        for zone in zones:
            if zone.sites:
                template = zone.sites[(site_no - 1) % len(zone.sites)]
                prefix = template.id.rsplit("-", 1)[0]
                if site_no <= len(zone.sites):
                    site_id, kinds = zone.sites[site_no - 1].id, zone.sites[site_no - 1].kinds
                else:
                    site_id, kinds = f"{prefix}-{site_no:02d}", template.kinds
                for kind in kinds:
                    if len(out) < n_nodes:
                        out.append(NodePlacement(
                            zone.number << 16 | site_no << 4 | metrics.KIND_IDS[kind],
                            kind, zone.id, site_id))
    return out


# -- the generator ---------------------------------------------------------------------------


class FrameGenerator:
    """Frames of a fleet, window by window.

    `frames(t)`: the frames of every node for the window of `cadence_s` ending at t, as
    (node index, frame), status frames after the measurement frames.
    `messages(start, end)`: the same as Messages for every window end in (start, end].
    `metrics_at(node, t)`: a node's (metric id, raw) pairs, for tests and SimNode.
    """

    def __init__(self, placements: list[NodePlacement] | None = None, seed: int = 1,
                 cadence_s: int = 10, status_every: int = 60,
                 model: ZoneModel | None = None):
        if not 1 <= cadence_s <= 3600:
            raise ValueError(f"cadence_s must be 1..3600 s, got {cadence_s}")
        self.seed = seed
        self.cadence_s = int(cadence_s)
        self.status_every = status_every
        self.placements = placements if placements is not None else load_placements()
        self.model = model or ZoneModel(seed, placements=self.placements)
        for p in self.placements:
            if p.site not in self.model.site_ids:
                self.model.add_site(p.site, p.zone)
        self.gauss = self.model.gauss
        self.nodes: list[NodeSetup] = []
        for i, p in enumerate(self.placements):
            salt = _mix(p.node_id * 7 + seed, 12345)  # 16 bits
            g = self.gauss[salt]
            self.nodes.append(NodeSetup(
                i, p, sim_key(seed, p.node_id), protocol.topic_up(p.zone, p.node_id), salt,
                0.3 * g, min(0.99, 0.92 + 0.03 * g), salt % max(1, status_every)))
        self.signers = [FrameSigner(n.key) for n in self.nodes]
        g = self.gauss
        # measurement noise, pre-scaled (sd): temperature 0.1 degC, humidity 0.5 %RH,
        # pressure 0.03 hPa (in raw units); gas 3 %, particulates 5 % (as gains to raw
        # units); sound levels 0.2 dB (raw units, +0.5 for rounding)
        self._air_noise = [
            (10 * g[k], 50 * g[k + 1], 3 * g[k + 2], (1 + 0.03 * g[k + 3]) / GAS_STEP_OHM,
             10 * (1 + 0.05 * g[k + 4]), 10 * (1 + 0.05 * g[k + 5]), 10 * (1 + 0.05 * g[k + 6]))
            for k in range(NOISE_ROWS)]
        self._level_noise = [2 * g[k + 8] + 0.5 for k in range(NOISE_ROWS)]
        self._prepare()

    def keyring(self) -> Keyring:
        return Keyring([NodeEntry(n.placement.node_id, n.placement.kind, n.placement.zone,
                                  n.placement.site, {0: n.key}) for n in self.nodes])

    @property
    def topics(self) -> list[str]:
        return [n.topic for n in self.nodes]

    # -- values --------------------------------------------------------------------------

    def counter(self, t_s: int, status: bool = False) -> int:
        return 2 * (int(t_s) // self.cadence_s) + (1 if status else 0)

    def is_status_window(self, node: NodeSetup, t_s: int) -> bool:
        every = self.status_every
        return bool(every) and (int(t_s) // self.cadence_s + node.phase) % every == 0

    def raws(self, node: NodeSetup, state: SiteState, t_s: int) -> tuple[int, ...]:
        """The raw values a node reports for the window ending at t, in KIND_METRICS
        order: the site's truth as its sensor sees it."""
        i = (_mix(self.seed, int(t_s)) + node.salt) & 0xFFFF
        kind = node.placement.kind
        if kind == "air":
            return self._air(state, i, node.offset * 100)
        if kind == "noise":
            return self._noise(state, i, node.offset * 10)
        return self._crowd(state, i, node.detect,
                           self.model.site(node.placement.site).rssi_shares)

    # Values: the noise index i is (a per-window hash + the node's salt) mod 2**16; the
    # measurement noise of a frame comes from row i mod NOISE_ROWS of a table of pre-scaled
    # normal draws (one row: one draw per metric, in raw units or as a gain).

    def _air(self, st: SiteState, i: int, offset_raw: float) -> tuple[int, ...]:
        _, _, temp, humid, pressure, gas, pm25, pm10, pm1 = st[:9]
        n0, n1, n2, n3, n4, n5, n6 = self._air_noise[i & NOISE_MASK]
        temperature = int(temp * 100 + n0 + offset_raw + 10000.5) - 10000
        humidity = int(humid * 100 + n1 + 0.5)
        gas = int(gas * n3 + 0.5)
        pm25 = int(pm25 * n4 + 0.5)
        pm10 = int(pm10 * n5 + 0.5)
        pm1 = int(pm1 * n6 + 0.5)
        if pm25 > 10000:
            pm25 = 10000
        return (
            -4000 if temperature < -4000 else 8500 if temperature > 8500 else temperature,
            0 if humidity < 0 else 10000 if humidity > 10000 else humidity,
            int(pressure * 100 + n2 + 0.5),
            GAS_STEP_OHM * (gas if gas < 20000 else 20000),
            pm25,
            pm25 if pm10 < pm25 else 20000 if pm10 > 20000 else pm10,
            pm1 if pm1 < pm25 else pm25,
            0,
        )

    def _noise(self, st: SiteState, i: int, offset_raw: float) -> tuple[int, ...]:
        # one shift for all levels keeps their order (la90 <= la50 <= la10 <= lamax)
        shift = offset_raw + self._level_noise[i & NOISE_MASK]
        laeq, lamax, la10, la50, la90 = st[9:]
        return (int(laeq * 10 + shift), int(lamax * 10 + shift), int(la10 * 10 + shift),
                int(la50 * 10 + shift), int(la90 * 10 + shift), 0)

    def _crowd(self, st: SiteState, i: int, detect: float,
               shares: tuple[float, ...]) -> tuple[int, ...]:
        phones = st[0]
        heard = phones * detect + _SQRT[phones if phones < 8192 else 8191] * self.gauss[i]
        count = int(heard + 0.5) if heard > 0 else 0
        b0 = int(count * shares[0])
        b1 = int(count * shares[1])
        b3 = int(count * shares[3])
        b4 = int(count * shares[4])
        return (count, b0, b1, count - b0 - b1 - b3 - b4, b3, b4, 0)

    def metrics_at(self, node: NodeSetup | int, t_s: int) -> list[tuple[int, int]]:
        """(metric id, raw) pairs of a node's measurement frame for the window ending at
        t, in ascending id order."""
        if isinstance(node, int):
            node = self.nodes[node]
        state = self.model.site_state(node.placement.site, int(t_s), self.cadence_s)
        ids = self._ids[node.placement.kind]
        return list(zip(ids, self.raws(node, state, int(t_s))))

    def status_at(self, node: NodeSetup | int, t_s: int) -> list[tuple[int, int]]:
        if isinstance(node, int):
            node = self.nodes[node]
        g = self.gauss[_mix(node.salt + 1, int(t_s))]
        values = (int(t_s - node.phase) % REBOOT_EVERY_S, 118_000 + int(1500 * g), 1,
                  FIRMWARE_VERSION, 0, 0, 5000 + int(40 * g))
        return [(M[name].id, v) for name, v in zip(STATUS_METRICS, values)]

    # -- frames --------------------------------------------------------------------------

    def _prepare(self) -> None:
        self._ids = {k: tuple(M[n].id for n in names) for k, names in KIND_METRICS.items()}
        window = self.cadence_s
        self._prefix = []
        self._suffix = []
        for n in self.nodes:
            kind_id = metrics.KIND_IDS[n.placement.kind]
            self._prefix.append(struct.pack(">BBBBI", protocol.VERSION, kind_id, 0, 0,
                                            n.placement.node_id))
            self._suffix.append(struct.pack(">HB", window, len(KIND_METRICS[n.placement.kind])))
        # nodes grouped by site, so a site's truth is computed once per window; per node
        # what the hot loop needs, flat
        by_site: dict[str, list] = {}
        for n in self.nodes:
            signer = self.signers[n.index]
            by_site.setdefault(n.placement.site, []).append((
                n.index, metrics.KIND_IDS[n.placement.kind], n.salt,
                n.offset * (100 if n.placement.kind == "air" else 10), n.detect,
                self._prefix[n.index], self._suffix[n.index], signer.inner, signer.outer))
        self._groups = [(site, group, self.model.site(site).rssi_shares)
                        for site, group in by_site.items()]
        self._status_due: dict[int, list[NodeSetup]] = {}
        for n in self.nodes:
            self._status_due.setdefault(n.phase, []).append(n)
        t = tables()
        self._tables = tuple(tuple(t[n] for n in KIND_METRICS[k])
                             for k in ("air", "noise", "crowd"))

    def frame(self, node: NodeSetup | int, t_s: int, status: bool = False) -> bytes:
        """One node's frame for the window ending at t (its status frame with `status`)."""
        if isinstance(node, int):
            node = self.nodes[node]
        t_s = int(t_s)
        signer = self.signers[node.index]
        if status:
            return signer.encode(metrics.KIND_IDS[node.placement.kind], node.placement.node_id,
                                 self.counter(t_s, True), t_s, self.cadence_s,
                                 self.status_at(node, t_s), protocol.FLAG_STATUS)
        state = self.model.site_state(node.placement.site, t_s, self.cadence_s)
        return self._measurement(node, state, t_s, self.counter(t_s))

    def _measurement(self, node: NodeSetup, state: SiteState, t_s: int, counter: int) -> bytes:
        raws = self.raws(node, state, t_s)
        kind = node.placement.kind
        parts = []
        for metric_id, raw in zip(self._ids[kind], raws):
            parts.append(metric_part(metric_id, raw))
        signed = b"".join((self._prefix[node.index], _HEADER_TAIL.pack(counter, t_s),
                           self._suffix[node.index], *parts))
        return self.signers[node.index].sign(signed)

    def frames(self, t_s: int) -> list[tuple[int, bytes]]:
        """Every node's frames for the window ending at t: (node index, frame), measurement
        frames site by site (node order when the placements list each site's nodes
        together, as load_placements and scaled_placements do), then the status frames due
        in this window."""
        t_s = int(t_s)
        window = self.cadence_s
        head = _HEADER_TAIL.pack(2 * (t_s // window), t_s)
        base = _mix(self.seed, t_s)
        site_state = self.model.site_state
        air, noise, crowd = self._air, self._noise, self._crowd
        ta, tb, tc, td, te, tf, tg, th = self._tables[0]
        na, nb, nc, nd, ne, nf = self._tables[1]
        crowd_tables = self._tables[2]
        join = b"".join
        out = []
        append = out.append
        for site, group, shares in self._groups:
            state = site_state(site, t_s, window)
            for k, kind, salt, offset, detect, prefix, suffix, inner, outer in group:
                i = (base + salt) & 0xFFFF
                try:
                    if kind == 1:
                        r = air(state, i, offset)
                        signed = join((prefix, head, suffix, ta[r[0] + 4000], tb[r[1]],
                                       tc[r[2] - 30000], td[r[3] // GAS_STEP_OHM], te[r[4]],
                                       tf[r[5]], tg[r[6]], th[0]))
                    elif kind == 2:
                        r = noise(state, i, offset)
                        signed = join((prefix, head, suffix, na[r[0]], nb[r[1]], nc[r[2]],
                                       nd[r[3]], ne[r[4]], nf[0]))
                    else:
                        r = crowd(state, i, detect, shares)
                        ca, cb, cc, cd, ce, cf, cg = crowd_tables
                        signed = join((prefix, head, suffix, ca[r[0]], cb[r[1]], cc[r[2]],
                                       cd[r[3]], ce[r[4]], cf[r[5]], cg[0]))
                except IndexError:  # a value beyond the tables: encode it on the fly
                    ids = self._ids[self.nodes[k].placement.kind]
                    signed = join((prefix, head, suffix,
                                   *(metric_part(m, v) for m, v in zip(ids, r))))
                h = inner.copy()
                h.update(signed)
                o = outer.copy()
                o.update(h.digest())
                append((k, signed + o.digest()[:16]))
        if self.status_every:
            due = self._status_due.get(-(t_s // window) % self.status_every)
            for node in due or ():
                append((node.index, self.frame(node, t_s, status=True)))
        return out

    def window_ends(self, start_s: int, end_s: int) -> range:
        """Window ends on the cadence grid in (start, end]."""
        c = self.cadence_s
        first = (int(start_s) // c + 1) * c
        return range(first, int(end_s) + 1, c)

    def messages(self, start_s: int, end_s: int, qos: int = 1) -> Iterator[Message]:
        """Every frame of every window ending in (start, end], as Messages in time order;
        each is published at its window's end."""
        topics = self.topics
        for t in self.window_ends(start_s, end_s):
            t_ms = t * 1000
            for k, frame in self.frames(t):
                yield Message(t_ms, topics[k], frame, qos)

    def encode_chunks(self, start_s: int, end_s: int, topic_index: dict[str, int],
                      chunk_bytes_max: int = 256 * 1024, level: int = 6,
                      qos: int = 1) -> Iterator[tuple[bytes, int]]:
        """The recording chunks of (start, end], encoded here (for parallel writers): yields
        (chunk, message count).  The records are those of messages(); a chunk ends at the
        first window end past `chunk_bytes_max`."""
        heads = [varint_bytes(topic_index[n.topic] << 4 | qos) for n in self.nodes]
        same_time = [b"\x00" + h for h in heads]  # dt 0: the window's other records
        lengths = [varint_bytes(n) for n in range(256)]
        buf = bytearray()
        count = 0
        base = last = 0
        for t in self.window_ends(start_s, end_s):
            t_ms = t * 1000
            frames = self.frames(t)
            if not frames:
                continue
            if not count:
                base = last = t_ms
            parts = []
            append = parts.append
            for k, frame in frames:
                append(same_time[k])
                append(lengths[len(frame)])
                append(frame)
            parts[0] = varint_bytes(zigzag(t_ms - last)) + heads[frames[0][0]]
            last = t_ms
            buf += b"".join(parts)
            count += len(frames)
            if len(buf) >= chunk_bytes_max:
                yield chunk_bytes(buf, count, base, level), count
                buf = bytearray()
                count = 0
        if count:
            yield chunk_bytes(buf, count, base, level), count


# -- recordings --------------------------------------------------------------------------------

SEGMENT_S = 3600  # recordings are cut into chunks at every full hour (UTC), in any mode

_WORKER_GEN: FrameGenerator | None = None


def _segments(start_s: int, end_s: int) -> list[tuple[int, int]]:
    """(start, end] slices of the span, cut at multiples of SEGMENT_S."""
    out = []
    lo = int(start_s)
    while lo < end_s:
        hi = min(int(end_s), (lo // SEGMENT_S + 1) * SEGMENT_S)
        out.append((lo, hi))
        lo = hi
    return out


def _segment_chunks(args: tuple[int, int, int, int]) -> list[tuple[bytes, int]]:
    lo, hi, chunk_max, level = args
    gen = _WORKER_GEN
    assert gen is not None
    index = {t: i for i, t in enumerate(gen.topics)}
    return list(gen.encode_chunks(lo, hi, index, chunk_max, level))


def record(gen: FrameGenerator, path, start_s: int, end_s: int, meta: dict | None = None,
           workers: int = 1, level: int = 1, chunk_bytes_max: int = 256 * 1024,
           on_progress=None) -> int:
    """Write every frame of (start, end] to a recording at `path`; returns the count.

    The span is cut into hour segments; with `workers` > 1 they are generated in that many
    forked processes (each with a copy of `gen`) and written in order.  The file is the
    same byte for byte whatever `workers` is.  `on_progress(messages, simulated_until_s)`
    is called after each segment."""
    from simulators.recording import RecordingWriter

    global _WORKER_GEN
    segments = _segments(start_s, end_s)
    meta = dict(meta or {})
    meta.setdefault("source", "framegen")
    meta.update(seed=gen.seed, cadence_s=gen.cadence_s, status_every=gen.status_every,
                nodes=len(gen.nodes), start_s=int(start_s), end_s=int(end_s))
    jobs = [(lo, hi, chunk_bytes_max, level) for lo, hi in segments]
    with RecordingWriter(path, meta, gen.topics, level=level) as writer:
        _WORKER_GEN = gen
        try:
            if workers > 1 and len(jobs) > 1:
                import multiprocessing

                ctx = multiprocessing.get_context("fork")
                with ctx.Pool(workers) as pool:
                    results = pool.imap(_segment_chunks, jobs)
                    for (_, hi), chunks in zip(segments, results):
                        for chunk, count in chunks:
                            writer.write_chunk(chunk, count)
                        if on_progress:
                            on_progress(writer.count, hi)
            else:
                for job in jobs:
                    for chunk, count in _segment_chunks(job):
                        writer.write_chunk(chunk, count)
                    if on_progress:
                        on_progress(writer.count, job[1])
        finally:
            _WORKER_GEN = None
        return writer.count
