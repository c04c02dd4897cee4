"""Fault injection: composable, seeded transforms of a Message stream.

In:  a time-ordered stream of Messages (simulators/recording.py), a list of faults, a seed
and, for faults that change a frame's content, the keyring whose keys re-sign it (as a node
with that fault would have signed it).  Out: the stream with the faults applied, still in
time order; outages also insert control events (`recording.CONTROL`) that the replayer
hands to the harness (stop/start the broker or the gateway).

Each fault is one stage; `FaultPipeline` chains them in the order given, each with its
own `random.Random` seeded from (seed, position, name), so the same faults, seed and input
give the same output.  Every fault counts what it did in `affected` (tests derive the
gateway's expected counters from it).  Times (`at_s`) are seconds after the stream's
first message.  Control events pass every stage unchanged.

docs/simulators.md has the table of faults and the gateway's expected reaction; `dordt
sim faults` prints the parameters.  On failure: `FaultError` naming the fault and
parameter.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from firmware import metrics, protocol
from fleet.keyring import Keyring
from simulators.framegen import KIND_METRICS, FrameSigner
from simulators.recording import Message, control


class FaultError(ValueError):
    """A fault that cannot be set up; the message names it and the parameter."""


class _Context:
    """What the stages share: the stream's start and the signers for re-signing."""

    def __init__(self, keyring: Keyring | None):
        self.keyring = keyring
        self.start_ms: int | None = None
        self._signers: dict[tuple[int, int], FrameSigner] = {}

    def signer(self, node_id: int, key_id: int) -> FrameSigner | None:
        found = self._signers.get((node_id, key_id))
        if found is None and self.keyring is not None:
            entry = self.keyring.get(node_id)
            key = entry.keys.get(key_id) if entry else None
            if key is not None:
                found = self._signers[(node_id, key_id)] = FrameSigner(key, key_id)
        return found

    def rewrite(self, frame: protocol.Frame, **changes) -> bytes | None:
        """The frame with some fields changed, signed again with its node's key; None
        when the key is unknown (the frame then passes unchanged)."""
        signer = self.signer(frame.node_id, frame.key_id)
        if signer is None:
            return None
        fields = dict(kind=frame.kind, node_id=frame.node_id, counter=frame.counter,
                      timestamp=frame.timestamp, window_s=frame.window_s,
                      pairs=frame.metrics, flags=frame.flags)
        fields.update(changes)
        return signer.encode(**fields)


def _frame_of(msg: Message) -> protocol.Frame | None:
    if msg.is_control:
        return None
    try:
        return protocol.decode(msg.payload)
    except protocol.FrameError:
        return None


def _nodes_param(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace("+", ",").split(",") if v]
    out = tuple(str(v).lower() for v in value)  # type: ignore[union-attr]
    for name in out:
        if len(name) != 8 or any(c not in "0123456789abcdef" for c in name):
            raise FaultError(f"nodes: {name!r} is not a node id (8 lower-case hex digits)")
    return out


@dataclass
class Fault:
    """One stage.  Subclasses set `name`, `summary`, `gateway` (the expected reaction)
    and implement `apply`.  `nodes`: only frames of these nodes (default: all)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    gateway: ClassVar[str] = ""
    needs_keys: ClassVar[bool] = False

    nodes: tuple[str, ...] = field(default=(), metadata={"help": "node ids, + separated"})
    affected: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.nodes = _nodes_param(self.nodes)
        self._node_ids = {int(n, 16) for n in self.nodes}

    def selects(self, msg: Message) -> bool:
        """A frame message this fault may touch (the node filter applied)."""
        if msg.is_control:
            return False
        if not self._node_ids:
            return True
        parsed = protocol.parse_topic_up(msg.topic)
        return parsed is not None and parsed[1] in self._node_ids

    def apply(self, stream: Iterator[Message], rng: random.Random,
              ctx: _Context) -> Iterator[Message]:
        raise NotImplementedError

    def offset_ms(self, msg: Message, ctx: _Context) -> int:
        return msg.t_ms - (ctx.start_ms or msg.t_ms)


def _check_p(fault: Fault, p: float) -> None:
    if not 0 <= p <= 1:
        raise FaultError(f"{fault.name}: p must be a probability 0..1, got {p}")


class _Later:
    """Messages held back to be sent at a later time: in time order, and in the order they
    were held when their times are equal."""

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = 0

    def hold(self, msg: Message, t_ms: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_ms, self._seq, msg._replace(t_ms=t_ms)))

    def due(self, t_ms: int) -> Iterator[Message]:
        while self._heap and self._heap[0][0] <= t_ms:
            yield heapq.heappop(self._heap)[2]

    def rest(self) -> Iterator[Message]:
        return self.due(1 << 62)


# -- delivery faults ---------------------------------------------------------------------------


@dataclass
class Drop(Fault):
    name: ClassVar[str] = "drop"
    summary: ClassVar[str] = "lose frames on the way"
    gateway: ClassVar[str] = "nothing arrives: a gap in the store; counters skip, no rejection"
    p: float = field(default=0.05, metadata={"help": "probability per frame"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        for msg in stream:
            if self.selects(msg) and rng.random() < self.p:
                self.affected += 1
                continue
            yield msg


@dataclass
class Duplicate(Fault):
    name: ClassVar[str] = "duplicate"
    summary: ClassVar[str] = "deliver a frame twice (QoS 1 redelivery)"
    gateway: ClassVar[str] = "the first copy is stored, the second rejected as `replay`"
    p: float = field(default=0.05, metadata={"help": "probability per frame"})
    gap_s: float = field(default=0.0, metadata={"help": "seconds between the two copies"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        later = _Later()
        for msg in stream:
            yield from later.due(msg.t_ms)
            yield msg
            if self.selects(msg) and rng.random() < self.p:
                self.affected += 1
                later.hold(msg, msg.t_ms + int(self.gap_s * 1000))
                if not self.gap_s:
                    yield from later.due(msg.t_ms)
        yield from later.rest()


@dataclass
class Reorder(Fault):
    name: ClassVar[str] = "reorder"
    summary: ClassVar[str] = "hold a frame back behind later frames of the same node"
    gateway: ClassVar[str] = ("stored: a frame less than 64 counters behind the newest is "
                              "accepted; further behind it is `too_old` (a gap)")
    p: float = field(default=0.05, metadata={"help": "probability per frame"})
    depth: int = field(default=3, metadata={"help": "later frames of the node that overtake"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        held: dict[str, list[list]] = {}
        last_ms = 0
        for msg in stream:
            last_ms = msg.t_ms
            if self.selects(msg) and rng.random() < self.p:
                self.affected += 1
                held.setdefault(msg.topic, []).append([self.depth, msg])
                continue
            yield msg
            waiting = held.get(msg.topic)
            if waiting:
                for item in waiting:
                    item[0] -= 1
                for item in [w for w in waiting if w[0] <= 0]:
                    waiting.remove(item)
                    yield item[1]._replace(t_ms=msg.t_ms)  # overtaken: sent after this one
        left = sorted((m.t_ms, i, m) for i, m in enumerate(
            m for waiting in held.values() for _, m in waiting))
        for _, _, msg in left:  # the stream ended: send what is still held
            yield msg._replace(t_ms=max(msg.t_ms, last_ms))


@dataclass
class Delay(Fault):
    name: ClassVar[str] = "delay"
    summary: ClassVar[str] = "deliver a frame late"
    gateway: ClassVar[str] = ("stored late if fewer than 64 counters (32 windows of "
                              "FrameGenerator) have passed meanwhile, else `too_old` (a gap)")
    p: float = field(default=0.05, metadata={"help": "probability per frame"})
    delay_s: float = field(default=30.0, metadata={"help": "how late, seconds"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        later = _Later()
        for msg in stream:
            yield from later.due(msg.t_ms)
            if self.selects(msg) and rng.random() < self.p:
                self.affected += 1
                later.hold(msg, msg.t_ms + int(self.delay_s * 1000))
                continue
            yield msg
        yield from later.rest()


@dataclass
class Corrupt(Fault):
    name: ClassVar[str] = "corrupt"
    summary: ClassVar[str] = "flip random bits of a frame (a bad link)"
    gateway: ClassVar[str] = ("rejected, never stored: `bad_tag` when the bits are in the "
                              "signed bytes or the tag; a hit header may give `malformed`, "
                              "`truncated`, `version`, `topic_mismatch`, `unknown_node` or "
                              "`unknown_key` first")
    p: float = field(default=0.05, metadata={"help": "probability per frame"})
    bits: int = field(default=1, metadata={"help": "bits flipped per corrupted frame"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        for msg in stream:
            if self.selects(msg) and msg.payload and rng.random() < self.p:
                self.affected += 1
                data = bytearray(msg.payload)
                for pos in rng.sample(range(len(data) * 8), min(self.bits, len(data) * 8)):
                    data[pos // 8] ^= 1 << (pos % 8)
                msg = msg._replace(payload=bytes(data))
            yield msg


@dataclass
class ReplayAttack(Fault):
    name: ClassVar[str] = "replay_attack"
    summary: ClassVar[str] = "an attacker re-sends a captured frame later"
    gateway: ClassVar[str] = ("rejected: `replay` while the copy is less than 64 counters "
                              "behind, `too_old` after that")
    p: float = field(default=0.01, metadata={"help": "probability per frame"})
    after_s: float = field(default=120.0, metadata={"help": "seconds until it is re-sent"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        later = _Later()
        for msg in stream:
            yield from later.due(msg.t_ms)
            yield msg
            if self.selects(msg) and rng.random() < self.p:
                self.affected += 1
                later.hold(msg, msg.t_ms + int(self.after_s * 1000))
        yield from later.rest()


@dataclass
class ForgedTag(Fault):
    name: ClassVar[str] = "forged_tag"
    summary: ClassVar[str] = "a frame whose tag was not made with the node's key"
    gateway: ClassVar[str] = "rejected as `bad_tag`"
    p: float = field(default=0.01, metadata={"help": "probability per frame"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        for msg in stream:
            if self.selects(msg) and len(msg.payload) >= protocol.MIN_FRAME and (
                    rng.random() < self.p):
                self.affected += 1
                data = bytearray(msg.payload)
                data[-protocol.TAG_LEN:] = rng.randbytes(protocol.TAG_LEN)
                msg = msg._replace(payload=bytes(data))
            yield msg


# -- node faults (re-signed: the node itself sends them) -------------------------------------


@dataclass
class ClockDrift(Fault):
    name: ClassVar[str] = "clock_drift"
    summary: ClassVar[str] = "node clocks run fast or slow (timestamps drift; re-signed)"
    gateway: ClassVar[str] = "stored, at the drifted timestamps (the gateway trusts the node)"
    needs_keys: ClassVar[bool] = True
    ppm: float = field(default=500.0, metadata={"help": "drift, parts per million"})
    offset_s: float = field(default=0.0, metadata={"help": "constant clock error, seconds"})

    def apply(self, stream, rng, ctx):
        for msg in stream:
            frame = _frame_of(msg) if self.selects(msg) else None
            if frame is not None and frame.time_synced:
                start_s = (ctx.start_ms or msg.t_ms) // 1000
                ts = frame.timestamp + round(self.offset_s
                                             + (frame.timestamp - start_s) * self.ppm / 1e6)
                if ts != frame.timestamp and 0 <= ts <= protocol.U32_MAX:
                    payload = ctx.rewrite(frame, timestamp=ts)
                    if payload is not None:
                        self.affected += 1
                        msg = msg._replace(payload=payload)
            yield msg


@dataclass
class _SensorFault(Fault):
    """Faults of one metric of measurement frames, during [at_s, at_s + duration_s)."""

    needs_keys: ClassVar[bool] = True
    metric: str = field(default="pm25_ugm3", metadata={"help": "registry name of the metric"})
    at_s: float = field(default=0.0, metadata={"help": "start, seconds after the first frame"})
    duration_s: float = field(default=1e12, metadata={"help": "how long, seconds"})

    def __post_init__(self) -> None:
        super().__post_init__()
        m = metrics.BY_NAME.get(self.metric)
        if m is None or m.group == metrics.GROUP_STATUS:
            raise FaultError(f"{self.name}: metric {self.metric!r} is not a measurement metric "
                             "of the registry (see docs/protocol.md §8)")
        self._metric = m

    def during(self, msg: Message, ctx: _Context) -> bool:
        offset = self.offset_ms(msg, ctx) / 1000
        return self.at_s <= offset < self.at_s + self.duration_s

    def frames(self, stream, ctx) -> Iterator[tuple[Message, protocol.Frame | None, int]]:
        """(message, its frame if this fault applies to it, index of the metric)."""
        for msg in stream:
            frame = None
            if self.selects(msg) and self.during(msg, ctx):
                frame = _frame_of(msg)
                if frame is not None and not frame.is_status:
                    ids = [i for i, _ in frame.metrics]
                    if self._metric.id in ids:
                        yield msg, frame, ids.index(self._metric.id)
                        continue
            yield msg, None, -1


@dataclass
class Stuck(_SensorFault):
    name: ClassVar[str] = "stuck"
    summary: ClassVar[str] = "a sensor repeats its last value"
    gateway: ClassVar[str] = "stored: a flat line in that field"

    def apply(self, stream, rng, ctx):
        frozen: dict[int, int] = {}
        for msg, frame, k in self.frames(stream, ctx):
            if frame is not None:
                pairs = list(frame.metrics)
                if frame.node_id not in frozen:
                    frozen[frame.node_id] = pairs[k][1]
                elif pairs[k][1] != frozen[frame.node_id]:
                    pairs[k] = (pairs[k][0], frozen[frame.node_id])
                    payload = ctx.rewrite(frame, pairs=pairs)
                    if payload is not None:
                        self.affected += 1
                        msg = msg._replace(payload=payload)
            yield msg


@dataclass
class Spike(_SensorFault):
    name: ClassVar[str] = "spike"
    summary: ClassVar[str] = "a sensor reports a wild value now and then"
    gateway: ClassVar[str] = ("stored as an outlier while the value is inside the metric's "
                              "registry range; beyond it the frame is rejected as `metric` "
                              "(a gap)")
    p: float = field(default=0.01, metadata={"help": "probability per frame"})
    factor: float = field(default=8.0, metadata={"help": "the value is multiplied by this"})

    def apply(self, stream, rng, ctx):
        _check_p(self, self.p)
        for msg, frame, k in self.frames(stream, ctx):
            if frame is not None and rng.random() < self.p:
                pairs = list(frame.metrics)
                raw = round(pairs[k][1] * self.factor) or int(self.factor)
                raw = max(protocol.RAW_MIN, min(protocol.RAW_MAX, raw))
                pairs[k] = (pairs[k][0], raw)
                payload = ctx.rewrite(frame, pairs=pairs)
                if payload is not None:
                    self.affected += 1
                    msg = msg._replace(payload=payload)
            yield msg


def fault_bit(metric_name: str) -> tuple[str, int]:
    """(the kind's faults metric, the bit) a node sets when `metric_name` has no value:
    bit i for the i-th metric of the kind (framegen.KIND_METRICS order).  The simulator's
    convention until the firmware's drivers define theirs."""
    for kind, names in KIND_METRICS.items():
        if metric_name in names:
            return f"{kind}_faults", 1 << names.index(metric_name)
    raise FaultError(f"metric {metric_name!r} belongs to no node kind")


@dataclass
class NaN(_SensorFault):
    name: ClassVar[str] = "nan"
    summary: ClassVar[str] = ("a sensor returns NaN: the node leaves the metric out and sets "
                              "its bit in the kind's fault bitmask")
    gateway: ClassVar[str] = ("stored without that field; `<kind>_faults` carries the "
                              "metric's bit")

    def apply(self, stream, rng, ctx):
        faults_name, bit = fault_bit(self.metric)
        faults_id = metrics.BY_NAME[faults_name].id
        for msg, frame, k in self.frames(stream, ctx):
            if frame is not None:
                pairs = [p for i, p in enumerate(frame.metrics) if i != k]
                flags = dict(pairs)
                flags[faults_id] = flags.get(faults_id, 0) | bit
                payload = ctx.rewrite(frame, pairs=sorted(flags.items()))
                if payload is not None:
                    self.affected += 1
                    msg = msg._replace(payload=payload)
            yield msg


@dataclass
class Missing(_SensorFault):
    name: ClassVar[str] = "missing"
    summary: ClassVar[str] = "a metric is missing from the frames (no fault bit)"
    gateway: ClassVar[str] = "stored without that field: a gap in that field only"

    def apply(self, stream, rng, ctx):
        for msg, frame, k in self.frames(stream, ctx):
            if frame is not None and len(frame.metrics) > 1:
                pairs = [p for i, p in enumerate(frame.metrics) if i != k]
                payload = ctx.rewrite(frame, pairs=pairs)
                if payload is not None:
                    self.affected += 1
                    msg = msg._replace(payload=payload)
            yield msg


@dataclass
class Reboot(Fault):
    name: ClassVar[str] = "reboot"
    summary: ClassVar[str] = ("nodes restart: silent while booting, then counters jump ahead "
                              "(the stored upper mark) and uptime restarts")
    gateway: ClassVar[str] = ("a gap while the node boots; afterwards accepted (a counter "
                              "jump forward is allowed)")
    needs_keys: ClassVar[bool] = True
    at_s: float = field(default=60.0, metadata={"help": "when, seconds after the first frame"})
    down_s: float = field(default=30.0, metadata={"help": "seconds the node is silent"})
    jump: int = field(default=1000, metadata={"help": "counters skipped after the boot"})

    def apply(self, stream, rng, ctx):
        uptime_id = metrics.BY_NAME["uptime_s"].id
        up_at = self.at_s + self.down_s
        for msg in stream:
            if self.selects(msg):
                offset = self.offset_ms(msg, ctx) / 1000
                if self.at_s <= offset < up_at:
                    self.affected += 1
                    continue
                frame = _frame_of(msg) if offset >= up_at else None
                if frame is not None:
                    pairs = frame.metrics
                    if frame.is_status:
                        boot_s = (ctx.start_ms or msg.t_ms) / 1000 + up_at
                        pairs = [(i, max(0, int(msg.t_ms / 1000 - boot_s)) if i == uptime_id
                                  else v) for i, v in pairs]
                    counter = min(protocol.U32_MAX, frame.counter + self.jump)
                    payload = ctx.rewrite(frame, counter=counter, pairs=pairs)
                    if payload is not None:
                        self.affected += 1
                        msg = msg._replace(payload=payload)
            yield msg


# -- outages (control events for the harness) -------------------------------------------------


@dataclass
class BrokerOutage(Fault):
    name: ClassVar[str] = "broker_outage"
    summary: ClassVar[str] = ("the broker is down: nodes keep their frames in their ring "
                              "buffers and send them, oldest first, once it is back")
    gateway: ClassVar[str] = ("everything is stored once the broker is back (late); frames "
                              "beyond a node's buffer are lost: a gap")
    at_s: float = field(default=60.0, metadata={"help": "when, seconds after the first frame"})
    duration_s: float = field(default=30.0, metadata={"help": "how long, seconds"})
    buffer_frames: int = field(default=1000, metadata={"help": "ring buffer size per node"})

    def apply(self, stream, rng, ctx):
        held: dict[str, deque] = {}
        order = 0
        state = "before"
        for msg in stream:
            offset = self.offset_ms(msg, ctx)
            start_ms = (ctx.start_ms or msg.t_ms) + int(self.at_s * 1000)
            end_ms = start_ms + int(self.duration_s * 1000)
            if state == "before" and offset >= self.at_s * 1000:
                state = "down"
                yield control(start_ms, "broker.stop", fault=self.name)
            if state == "down" and msg.t_ms >= end_ms:
                state = "after"
                yield from self._back(end_ms, held)
            if state == "down" and not msg.is_control:
                ring = held.setdefault(msg.topic, deque())
                if len(ring) >= self.buffer_frames:
                    ring.popleft()  # the ring buffer overwrites its oldest frame
                ring.append((order, msg))
                order += 1
                self.affected += 1
                continue
            yield msg
        if state == "down":
            end_ms = (ctx.start_ms or 0) + int((self.at_s + self.duration_s) * 1000)
            yield from self._back(end_ms, held)

    def _back(self, end_ms: int, held: dict[str, deque]) -> Iterator[Message]:
        yield control(end_ms, "broker.start", fault=self.name)
        for _, msg in sorted(item for ring in held.values() for item in ring):
            yield msg._replace(t_ms=end_ms)
        held.clear()


@dataclass
class GatewayOutage(Fault):
    name: ClassVar[str] = "gateway_outage"
    summary: ClassVar[str] = "the gateway is stopped and started again; the broker stays up"
    gateway: ClassVar[str] = ("the broker queues frames for the gateway's persistent session; "
                              "all are stored after the restart")
    at_s: float = field(default=60.0, metadata={"help": "when, seconds after the first frame"})
    duration_s: float = field(default=30.0, metadata={"help": "how long, seconds"})

    def apply(self, stream, rng, ctx):
        state = "before"
        for msg in stream:
            start_ms = (ctx.start_ms or msg.t_ms) + int(self.at_s * 1000)
            end_ms = start_ms + int(self.duration_s * 1000)
            if state == "before" and msg.t_ms >= start_ms:
                state = "down"
                yield control(start_ms, "gateway.stop", fault=self.name)
            if state == "down" and msg.t_ms >= end_ms:
                state = "after"
                yield control(end_ms, "gateway.start", fault=self.name)
            if state == "down" and not msg.is_control:
                self.affected += 1
            yield msg
        if state == "down":
            end_ms = (ctx.start_ms or 0) + int((self.at_s + self.duration_s) * 1000)
            yield control(end_ms, "gateway.start", fault=self.name)


FAULTS: dict[str, type[Fault]] = {f.name: f for f in (
    Drop, Duplicate, Reorder, Delay, Corrupt, ReplayAttack, ForgedTag, ClockDrift, Stuck,
    Spike, NaN, Missing, Reboot, BrokerOutage, GatewayOutage)}


def parameters(fault: type[Fault]) -> list[tuple[str, str, object, str]]:
    """(name, type, default, help) of a fault's parameters, for `dordt sim faults`."""
    out = []
    for f in dataclasses.fields(fault):
        if not f.init:
            continue
        kind = {float: "float", int: "int", str: "str"}.get(type(f.default), "nodes")
        out.append((f.name, kind, f.default, f.metadata.get("help", "")))
    return out


def parse_fault(spec: str) -> Fault:
    """A fault from its command-line form: "name" or "name:key=value,key=value" (nodes
    separated by +), e.g. "delay:p=0.1,delay_s=45" or "reboot:nodes=00010011+00010021"."""
    name, _, args = spec.partition(":")
    cls = FAULTS.get(name.strip().replace("-", "_"))
    if cls is None:
        import difflib

        near = difflib.get_close_matches(name, FAULTS, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise FaultError(f"unknown fault {name!r}; `dordt sim faults` lists them.{hint}")
    known = {p[0]: p for p in parameters(cls)}
    kwargs: dict[str, object] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise FaultError(f"{cls.name}: {item!r} is not key=value with a key of "
                             f"{', '.join(known)}")
        kind = known[key][1]
        try:
            kwargs[key] = (float(value) if kind == "float" else int(value) if kind == "int"
                           else value)
        except ValueError:
            raise FaultError(f"{cls.name}: {key} must be {kind}, got {value!r}") from None
    try:
        return cls(**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise FaultError(f"{cls.name}: {exc}") from None


class FaultPipeline:
    """Faults applied in order to a stream.  `keyring`: the keys for faults that re-sign
    (clock drift, sensor faults, reboots); without it those faults refuse to start."""

    def __init__(self, faults: Iterable[Fault | str], seed: int = 1,
                 keyring: Keyring | None = None):
        self.faults = [parse_fault(f) if isinstance(f, str) else f for f in faults]
        self.seed = seed
        self.keyring = keyring
        for f in self.faults:
            if f.needs_keys and keyring is None:
                raise FaultError(f"{f.name} changes frames and signs them again: it needs the "
                                 "fleet's keyring (--keyring)")

    def apply(self, source: Iterable[Message]) -> Iterator[Message]:
        ctx = _Context(self.keyring)
        stream: Iterator[Message] = _mark_start(iter(source), ctx)
        for position, fault in enumerate(self.faults):
            rng = random.Random(f"{self.seed}/{position}/{fault.name}")
            stream = fault.apply(stream, rng, ctx)
        return stream

    def report(self) -> dict[str, int]:
        return {f"{i}:{f.name}": f.affected for i, f in enumerate(self.faults)}

    def describe(self) -> list[dict]:
        """The faults and their parameters, for a recording's metadata."""
        return [{"fault": f.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                    dataclasses.asdict(f).items() if k != "affected"}}
                for f in self.faults]


def _mark_start(stream: Iterator[Message], ctx: _Context) -> Iterator[Message]:
    for msg in stream:
        if ctx.start_ms is None:
            ctx.start_ms = msg.t_ms
        yield msg

