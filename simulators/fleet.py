"""Frame-level fleet simulator: statistical readings for many nodes, signed with the real
codec, so the gateway sees exactly what real nodes send.

Deterministic for a seed: node keys, counters and values depend only on (seed, node,
time).  Simulated node keys are derived from the seed and are for simulation only: a
real node's key is random and made at enrolment.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator

from firmware import metrics, protocol
from fleet.keyring import Keyring, NodeEntry
from hardware.sites import NodePlacement, load_placements

M = metrics.BY_NAME

# Activity peaks per zone (hour of day, weight): commuters at the station, evenings on
# the terraces, afternoons on the boulevard.
_PEAKS = {
    "spoorzone": ((8.0, 1.0), (17.5, 0.9), (12.5, 0.3)),
    "maasterras": ((20.0, 1.0), (13.0, 0.4)),
    "spuiboulevard": ((14.5, 1.0), (11.0, 0.6), (19.0, 0.4)),
}


def activity(zone: str, t_s: float) -> float:
    """0..~1: how busy a zone is at Unix time t (local time ~ UTC+1)."""
    hour = ((t_s / 3600.0) + 1.0) % 24.0
    level = 0.05
    for peak, weight in _PEAKS.get(zone, ((13.0, 1.0),)):
        d = min(abs(hour - peak), 24 - abs(hour - peak))
        level += weight * math.exp(-(d * d) / 4.0)
    return min(level, 1.2)


class SimNode:
    def __init__(self, placement: NodePlacement, seed: int, status_every: int = 10):
        self.placement = placement
        self.node_id = placement.node_id
        self.kind_id = metrics.KIND_IDS[placement.kind]
        self.key = hashlib.sha256(b"dordt-sim-key/%d/%d" % (seed, self.node_id)).digest()
        self.counter = 0
        self.status_every = status_every
        self.frames_made = 0
        self.boot_s: float | None = None
        self._rng = random.Random(seed * 1_000_003 + self.node_id)

    @property
    def topic(self) -> str:
        return protocol.topic_up(self.placement.zone, self.node_id)

    def values(self, t_s: float) -> dict[str, float]:
        """This node's reading for the window ending at t."""
        rng, zone = self._rng, self.placement.zone
        a = activity(zone, t_s)
        day = math.sin(2 * math.pi * (((t_s / 3600.0) + 1.0) % 24.0 - 9.0) / 24.0)
        kind = self.placement.kind
        if kind == "air":
            pm25 = max(0.0, 6.0 + 14.0 * a + rng.gauss(0, 1.5))
            return {
                "temperature_c": 11.0 + 5.0 * day + rng.gauss(0, 0.2),
                "humidity_pct": min(100.0, max(0.0, 78.0 - 15.0 * day + rng.gauss(0, 1.0))),
                "pressure_hpa": 1013.0 + rng.gauss(0, 0.3),
                "gas_resistance_ohm": max(1000.0, 60000.0 - 25000.0 * a + rng.gauss(0, 800)),
                "pm25_ugm3": pm25,
                "pm10_ugm3": pm25 * 1.6 + abs(rng.gauss(0, 1.0)),
                "air_faults": 0,
            }
        if kind == "noise":
            laeq = 46.0 + 22.0 * a + rng.gauss(0, 1.0)
            out = {
                "laeq_db": laeq,
                "lamax_db": laeq + 8.0 + abs(rng.gauss(0, 2.0)),
                "la10_db": laeq + 3.0,
                "la50_db": laeq - 2.0,
                "la90_db": laeq - 6.0,
            }
            return out
        count = max(0, int(round(rng.gauss(220 * a, 6 + 10 * a))))
        shares = (0.1, 0.2, 0.3, 0.25, 0.15)
        bins = [int(count * s) for s in shares]
        bins[2] += count - sum(bins)
        out = {"crowd_count": count}
        out.update({f"rssi_bin_{i}": b for i, b in enumerate(bins)})
        return out

    def frame(self, t_s: float, window_s: int = 10) -> bytes:
        """The next signed frame for the window ending at t (a status frame every
        `status_every` frames)."""
        if self.boot_s is None:
            self.boot_s = t_s
        self.frames_made += 1
        if self.status_every and self.frames_made % self.status_every == 0:
            values = {
                "uptime_s": int(t_s - self.boot_s),
                "free_heap_bytes": 120_000 + self._rng.randrange(4000),
                "reset_cause": 1,
                "firmware_version": 100,
                "error_count": 0,
                "dropped_frames": 0,
            }
            flags = protocol.FLAG_STATUS
        else:
            values, flags = self.values(t_s), 0
        return self.encode(values, int(t_s), window_s, flags)

    def encode(self, values: dict[str, float], t_s: int, window_s: int, flags: int = 0) -> bytes:
        pairs = [(M[name].id, M[name].to_raw(v)) for name, v in values.items()]
        self.counter += 1
        return protocol.encode(
            self.key, self.kind_id, self.node_id, self.counter, t_s, window_s, pairs,
            flags=flags,
        )


class SimFleet:
    def __init__(self, placements: list[NodePlacement] | None = None, seed: int = 1,
                 status_every: int = 10):
        self.seed = seed
        self.nodes = [SimNode(p, seed, status_every) for p in (placements or load_placements())]

    def keyring(self) -> Keyring:
        return Keyring([
            NodeEntry(n.node_id, n.placement.kind, n.placement.zone, n.placement.site,
                      {0: n.key})
            for n in self.nodes
        ])

    def tick(self, t_s: float, window_s: int = 10) -> Iterator[tuple[str, bytes]]:
        """One frame from every node for the window ending at t: (topic, frame)."""
        for node in self.nodes:
            yield node.topic, node.frame(t_s, window_s)


# -- faults the demo shows (the full fault injector comes with the simulators issue) ----


def forged(frame: bytes) -> bytes:
    """The frame with one bit of its tag flipped: as if signed with a guessed key."""
    return frame[:-1] + bytes([frame[-1] ^ 0x01])


def truncated(frame: bytes) -> bytes:
    return frame[: len(frame) // 2]


def stranger(seed: int, t_s: float) -> tuple[str, bytes]:
    """A well-formed frame from a node that no keyring knows."""
    node = SimNode(NodePlacement(0x00FF_FF01, "air", "spoorzone", "nowhere"), seed + 99)
    return node.topic, node.frame(t_s)
