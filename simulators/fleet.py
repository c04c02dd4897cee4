"""The frame-level fleet, node by node: real-time publishing, the demo, tests.

`SimFleet` and `SimNode` call their nodes one frame at a time at any time t (a node's
counter counts its calls), which is what a real-time publisher needs.  Their values come
from the same zone model and sensor noise as the bulk generator (simulators/framegen.py),
and their frames from the same signer, byte-identical to `firmware.protocol.encode`.  For
recordings, benchmarks and replays at scale use `FrameGenerator` directly.

Deterministic for a seed: node keys, counters and values depend only on (seed, node,
time, calls so far).  Simulated node keys are derived from the seed and are for
simulation only: a real node's key is random and made at enrolment.
"""

from __future__ import annotations

from collections.abc import Iterator

from firmware import metrics, protocol
from fleet.keyring import Keyring, NodeEntry
from hardware.sites import NodePlacement, load_placements
from simulators.framegen import KIND_METRICS, FrameGenerator, FrameSigner, sim_key
from simulators.zonemodel import ZoneModel

M = metrics.BY_NAME

_MODELS: dict[int, ZoneModel] = {}


def shared_model(seed: int) -> ZoneModel:
    """One zone model per seed per process (building one takes ~50 ms)."""
    model = _MODELS.get(seed)
    if model is None:
        model = _MODELS[seed] = ZoneModel(seed)
    return model


def activity(zone: str, t_s: float, seed: int = 1) -> float:
    """0..~1.5: how busy a zone is at Unix time t (its crowd level in the zone model)."""
    return shared_model(seed).zone_state(zone, t_s).crowd


class SimNode:
    def __init__(self, placement: NodePlacement, seed: int, status_every: int = 10,
                 generator: FrameGenerator | None = None):
        self.placement = placement
        self.node_id = placement.node_id
        self.kind_id = metrics.KIND_IDS[placement.kind]
        self.key = sim_key(seed, self.node_id)
        self.counter = 0
        self.status_every = status_every
        self.frames_made = 0
        self.boot_s: float | None = None
        if generator is None:
            model = shared_model(seed)
            if placement.site not in model.site_ids:
                model.add_site(placement.site, placement.zone)
            generator = FrameGenerator([placement], seed, status_every=0, model=model)
        self._gen = generator
        self._setup = next(n for n in generator.nodes if n.placement == placement)
        self._signer = FrameSigner(self.key)

    @property
    def topic(self) -> str:
        return protocol.topic_up(self.placement.zone, self.node_id)

    def raws(self, t_s: float, window_s: int = 10) -> list[tuple[int, int]]:
        """(metric id, raw) of this node's reading for the window ending at t."""
        t = int(t_s)
        state = self._gen.model.site_state(self.placement.site, t, window_s)
        ids = [M[name].id for name in KIND_METRICS[self.placement.kind]]
        return list(zip(ids, self._gen.raws(self._setup, state, t)))

    def values(self, t_s: float, window_s: int = 10) -> dict[str, float]:
        """This node's reading for the window ending at t, in physical units."""
        return {metrics.BY_ID[i].name: metrics.BY_ID[i].to_value(raw)
                for i, raw in self.raws(t_s, window_s)}

    def frame(self, t_s: float, window_s: int = 10) -> bytes:
        """The next signed frame for the window ending at t (a status frame every
        `status_every` frames, instead of a reading)."""
        if self.boot_s is None:
            self.boot_s = t_s
        self.frames_made += 1
        self.counter += 1
        if self.status_every and self.frames_made % self.status_every == 0:
            pairs = self._gen.status_at(self._setup, int(t_s))
            pairs[0] = (M["uptime_s"].id, int(t_s - self.boot_s))
            flags = protocol.FLAG_STATUS
        else:
            pairs, flags = self.raws(t_s, window_s), 0
        return self._signer.encode(self.kind_id, self.node_id, self.counter, int(t_s),
                                   window_s, pairs, flags)

    def encode(self, values: dict[str, float], t_s: int, window_s: int, flags: int = 0) -> bytes:
        """Sign `values` (physical units, by registry name) as this node's next frame."""
        pairs = [(M[name].id, M[name].to_raw(v)) for name, v in values.items()]
        self.counter += 1
        return self._signer.encode(self.kind_id, self.node_id, self.counter, t_s, window_s,
                                   pairs, flags)


class SimFleet:
    def __init__(self, placements: list[NodePlacement] | None = None, seed: int = 1,
                 status_every: int = 10):
        self.seed = seed
        placements = placements or load_placements()
        model = shared_model(seed)
        self.generator = FrameGenerator(placements, seed, status_every=0, model=model)
        self.nodes = [SimNode(p, seed, status_every, self.generator) for p in placements]

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


# -- faults the demo shows (the composable injector is simulators/faults.py) ----------------


def forged(frame: bytes) -> bytes:
    """The frame with one bit of its tag flipped: as if signed with a guessed key."""
    return frame[:-1] + bytes([frame[-1] ^ 0x01])


def truncated(frame: bytes) -> bytes:
    return frame[: len(frame) // 2]


def stranger(seed: int, t_s: float) -> tuple[str, bytes]:
    """A well-formed frame from a node that no keyring knows."""
    node = SimNode(NodePlacement(0x00FF_FF01, "air", "spoorzone", "nowhere"), seed + 99)
    return node.topic, node.frame(t_s)
