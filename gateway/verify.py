"""Verify: Envelope → Reading | Rejected.

In:  raw frames with the topic they came on.  Out: a `Reading` whose node, key, tag,
counter, kind and metrics all check out, or a `Rejected` naming the reason (one of
REASONS, in the order they are applied; docs/protocol.md §6).  Never raises for any
input bytes: a hostile frame costs a counter increment, nothing else.

Replay windows advance as frames are accepted.  The pipeline persists them in the same
transaction as the readings (buffer.Outbox.commit) and calls `restore()` if that commit
fails, so a reading that never became durable is not later refused as a replay.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from hmac import compare_digest as _compare_digest
from struct import Struct

from firmware import metrics, protocol
from firmware.protocol import FrameError, ReplayWindow
from fleet.keyring import Keyring
from gateway.forward import line_series
from gateway.model import Envelope, Reading, Rejected

_unpack_header = Struct(protocol._HEADER).unpack_from
_VERSION, _MIN_FRAME, _MAX_FRAME = protocol.VERSION, protocol.MIN_FRAME, protocol.MAX_FRAME
_HEADER_LEN, _TAG_LEN, _MAX_METRICS = protocol.HEADER_LEN, protocol.TAG_LEN, protocol.MAX_METRICS
_FLAGS_KNOWN, _FLAG_STATUS = protocol.FLAGS_KNOWN, protocol.FLAG_STATUS
_FLAG_TIME_UNSYNCED = protocol.FLAG_TIME_UNSYNCED

REASONS = (
    protocol.MALFORMED,
    protocol.TRUNCATED,
    protocol.OVERSIZED,
    protocol.BAD_VERSION,
    "topic_mismatch",
    "unknown_node",
    "revoked",
    "unknown_key",
    protocol.BAD_TAG,
    protocol.REPLAY,
    protocol.TOO_OLD,
    "kind_mismatch",
    "metric",
)


class Verifier:
    def __init__(
        self,
        keyring: Keyring,
        windows: dict[int, ReplayWindow] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.keyring = keyring
        self.windows: dict[int, ReplayWindow] = windows if windows is not None else {}
        self.clock = clock
        self.dirty: set[int] = set()  # nodes whose window moved since the last commit
        self._prepared: dict[tuple[int, int], protocol.PreparedKey] = {}
        self._topics: dict[str, int] = {}  # uplink topic -> its node id (-1: not one)
        self._nodes: dict[int, tuple] = {}  # node << 8 | key id -> the fast path's (_prepare)

    def check(self, env: Envelope) -> Reading | Rejected:
        if _verify_c is not None:  # _fast, compiled; None when anything is not plain
            fast = _verify_c(env, self._nodes, self.windows, self._topics, self.dirty)
            if fast is not None:
                return fast
        fast = self._fast(env)
        if fast is not None:
            return fast
        try:
            return self._check(env)
        except FrameError as exc:
            return Rejected(exc.reason, exc.message, env.source)

    def _fast(self, env: Envelope) -> Reading | None:
        """The path of a good frame, in one function: a Reading when every check passes,
        else None and nothing changed, for `_check` (the reference path, built on
        firmware/protocol.py) to find and name what is wrong.  Same checks, same result,
        without the Frame object, the calls per metric and the error bookkeeping that a
        rejection needs (docs/protocol.md §6)."""
        data = env.payload
        if type(data) is not bytes:
            return None
        n = len(data)
        if n > _MAX_FRAME or n < _MIN_FRAME or data[0] != _VERSION:
            return None
        _, kind, flags, key_id, node_id, counter, ts, window_s, count = _unpack_header(data)
        if flags & ~_FLAGS_KNOWN or not 0 < count <= _MAX_METRICS:
            return None
        cached = self._nodes.get(node_id << 8 | key_id)
        if cached is None:
            cached = self._prepare(node_id, key_id)
            if cached is None:
                return None
        inner, outer, entry, node, kind_id, tables, _, prefixes = cached
        if kind != kind_id or entry.revoked:  # revoke() marks the entry in place
            return None
        topic = env.topic
        if topic and self._topics.get(topic) != node_id:
            return None  # a topic not seen yet, or another node's: _check parses it
        # metrics: ascending ids, minimal zigzag varints, each allowed and in range
        allowed, table_c = tables[flags & _FLAG_STATUS]
        end = n - _TAG_LEN
        if table_c is not None:  # the same, compiled, with the fields' line-protocol text
            got = _metrics_c(data, count, table_c)
            if got is None:
                return None
            fields, text = got
            head = prefixes[flags & _FLAG_STATUS] + text
        else:
            head = None
            pos = _HEADER_LEN
            last = -1
            fields = {}
            for _ in range(count):
                if pos + 1 >= end:
                    return None
                metric_id = data[pos]
                if metric_id <= last:
                    return None
                last = metric_id
                b = data[pos + 1]
                pos += 2
                if b < 0x80:
                    z = b
                elif pos < end and 0 < data[pos] < 0x80:  # two bytes: most values
                    z = (b & 0x7F) | data[pos] << 7
                    pos += 1
                else:
                    z = b & 0x7F
                    shift = 7
                    while True:
                        if pos >= end or shift > 28:
                            return None
                        b = data[pos]
                        pos += 1
                        z |= (b & 0x7F) << shift
                        if b < 0x80:
                            if b == 0 or (shift == 28 and b > 0x0F):
                                return None
                            break
                        shift += 7
                raw = -((z + 1) >> 1) if z & 1 else z >> 1
                spec = allowed.get(metric_id)
                if spec is None:
                    return None
                metric_name, divisor, lo, hi = spec
                if not lo <= raw <= hi:
                    return None
                fields[metric_name] = raw / divisor
            if pos != end:
                return None
        # the tag, then the replay window
        h = inner.copy()
        h.update(data[:end])
        tag = outer.copy()
        tag.update(h.digest())
        if not _compare_digest(tag.digest()[:_TAG_LEN], data[end:]):
            return None
        window = self.windows.get(node_id)
        if window is None:
            return None
        # ReplayWindow.check and .accept, inline (firmware/protocol.py has the reasons)
        highest = window.highest
        if counter > highest:
            shift = counter - highest
            window.seen = 1 if highest < 0 or shift >= window.size else (
                (window.seen << shift) | 1) & ((1 << window.size) - 1)
            window.highest = counter
        else:
            behind = highest - counter
            if behind >= window.size or (window.seen >> behind) & 1:
                return None
            window.seen |= 1 << behind
        self.dirty.add(node_id)
        synced = not flags & _FLAG_TIME_UNSYNCED
        return Reading(node, entry.kind, entry.zone, entry.site, counter,
                       ts if synced else int(env.received_s or self.clock()), window_s, fields,
                       bool(flags & _FLAG_STATUS), not synced, head)

    def _prepare(self, node_id: int, key_id: int):
        """What the fast path needs of a (node, key id), when the node may send."""
        entry = self.keyring.get(node_id)
        if entry is None or entry.revoked or key_id not in entry.keys:
            return None
        key = protocol.PreparedKey(entry.keys[key_id])
        if key._inner is None:
            return None
        kind_id = entry.kind_id
        node = protocol.node_name(node_id)
        tables = {0: _TABLES[(kind_id, False)], _FLAG_STATUS: _TABLES[(kind_id, True)]}
        # a line head starts with the series: measurement and tags (forward.line_head)
        prefixes = {status: line_series(Reading(node, entry.kind, entry.zone, entry.site, 0, 0,
                                                0, {}, bool(status)))
                    for status in (0, _FLAG_STATUS)}
        # the same, for the compiled path (the key with its pads hashed, the C tables)
        plain_c, status_c = tables[0][1], tables[_FLAG_STATUS][1]
        compiled = _speedups.key(key.key, plain_c, status_c, prefixes[0],
                                 prefixes[_FLAG_STATUS]) if (
            _verify_c is not None and plain_c is not None and status_c is not None) else None
        cached = (key._inner, key._outer, entry, node, kind_id, tables, compiled, prefixes)
        if len(self._nodes) < 100_000:
            self._nodes[node_id << 8 | key_id] = cached
        return cached

    def _check(self, env: Envelope) -> Reading | Rejected:
        frame = protocol.decode(env.payload)
        node = protocol.node_name(frame.node_id)

        def reject(reason: str, detail: str) -> Rejected:
            return Rejected(reason, detail, env.source, node)

        if env.topic:
            topic_node = self._topics.get(env.topic)
            if topic_node is None:  # topics repeat: parse each once
                parsed = protocol.parse_topic_up(env.topic)
                topic_node = parsed[1] if parsed is not None else -1
                if len(self._topics) < 100_000:
                    self._topics[env.topic] = topic_node
            if topic_node != frame.node_id:
                return reject("topic_mismatch", f"frame of node {node} on topic {env.topic!r}")
        entry = self.keyring.get(frame.node_id)
        if entry is None:
            return reject("unknown_node", f"node {node} is not in the keyring")
        if entry.revoked:
            return reject("revoked", f"node {node} is revoked")
        key = self._prepared.get((frame.node_id, frame.key_id))
        if key is None:
            raw_key = entry.keys.get(frame.key_id)
            if raw_key is None:
                return reject("unknown_key", f"node {node} has no key id {frame.key_id}")
            key = self._prepared[(frame.node_id, frame.key_id)] = protocol.PreparedKey(raw_key)
        if not protocol.verify(frame, key):
            return reject(protocol.BAD_TAG, f"tag does not verify for node {node}")
        window = self.windows.get(frame.node_id)
        if window is None:
            window = self.windows[frame.node_id] = ReplayWindow()
        replay = window.check(frame.counter)
        if replay is not None:
            return reject(replay, f"node {node} counter {frame.counter} ({replay})")
        if frame.kind != entry.kind_id:
            return reject(
                "kind_mismatch",
                f"node {node} is enrolled as {entry.kind}, frame says kind {frame.kind}",
            )
        fields: dict[str, float] = {}
        allowed = _ALLOWED[(frame.kind, frame.is_status)]
        for metric_id, raw in frame.metrics:
            spec = allowed.get(metric_id)
            if spec is None or not spec[2] <= raw <= spec[3]:
                problem = _metric_problem(metrics.BY_ID.get(metric_id), metric_id, raw, frame,
                                          entry.kind_id)
                return reject("metric", f"node {node}: {problem}")
            fields[spec[0]] = raw / spec[1]
        window.accept(frame.counter)
        self.dirty.add(frame.node_id)
        synced = frame.time_synced
        return Reading(
            node=node,
            kind=entry.kind,
            zone=entry.zone,
            site=entry.site,
            counter=frame.counter,
            time_s=frame.timestamp if synced else int(env.received_s or self.clock()),
            window_s=frame.window_s,
            fields=fields,
            status=frame.is_status,
            time_estimated=not synced,
        )

    def use_keyring(self, keyring: Keyring) -> None:
        """Switch to a re-read keyring (enrolments, revocations, rotated keys)."""
        self.keyring = keyring
        self._prepared = {}
        self._nodes = {}

    def take_dirty(self) -> dict[int, ReplayWindow]:
        """The windows that moved since the last call, for the buffer to persist."""
        moved = {n: self.windows[n] for n in self.dirty}
        self.dirty = set()
        return moved

    def restore(self, windows: dict[int, ReplayWindow]) -> None:
        """Go back to the durable windows after a failed commit."""
        self.windows = windows
        self.dirty = set()


def _allowed_table(kind_id: int, status: bool) -> dict[int, tuple[str, float, int, int]]:
    """metric id -> (name, divisor, raw_min, raw_max) for what a frame of this kind and
    type may carry: the hot path's one lookup per metric."""
    table = {}
    for m in metrics.BY_ID.values():
        if metrics.allowed_for(kind_id, m) and (m.group == metrics.GROUP_STATUS) == status:
            assert m.exp <= 0, "value = raw / 10**-exp needs exp <= 0"
            table[m.id] = (m.name, float(10 ** -m.exp), m.raw_min, m.raw_max)
    return table


_ALLOWED = {(kind, status): _allowed_table(kind, status)
            for kind in range(256) for status in (False, True)}

# The compiled path (gateway/_speedups.c), when the install could build it: verify() is
# Verifier._fast in one call, metrics() its metric loop.  Python does the same where it is
# missing.  DORDT_PURE_PYTHON=1 turns it off.
try:
    if os.environ.get("DORDT_PURE_PYTHON"):
        raise ImportError("DORDT_PURE_PYTHON is set")
    from gateway import _speedups

    # bind() refuses a Reading or frame layout other than the one it was compiled for (a
    # stale build): then Python runs, and tests/gateway/test_verify.py says why
    _speedups.bind(Reading, (_VERSION, _MIN_FRAME, _MAX_FRAME, _FLAGS_KNOWN, _FLAG_STATUS,
                             _FLAG_TIME_UNSYNCED, _HEADER_LEN, _TAG_LEN, _MAX_METRICS))
    _metrics_c = _speedups.metrics
    _verify_c = _speedups.verify
    SPEEDUPS_PROBLEM = None
except (ImportError, TypeError, ValueError, AttributeError) as exc:
    _speedups = None
    _metrics_c = None
    _verify_c = None
    SPEEDUPS_PROBLEM = f"{type(exc).__name__}: {exc}"


def _c_table(allowed):
    if _speedups is None:
        return None
    return _speedups.table([(i, name, div, lo, hi) for i, (name, div, lo, hi) in allowed.items()])


# (kind id, status) -> (the Python table, the compiled one or None), built on first use
class _Tables(dict):
    def __missing__(self, key):
        allowed = _ALLOWED[key]
        value = self[key] = (allowed, _c_table(allowed))
        return value


_TABLES = _Tables()


def _metric_problem(metric, metric_id: int, raw: int, frame, kind_id: int) -> str | None:
    if metric is None:
        return f"unknown metric id 0x{metric_id:02x}"
    if not metrics.allowed_for(kind_id, metric):
        return f"metric {metric.name} is not sent by {metrics.KIND_NAMES[kind_id]} nodes"
    if (metric.group == metrics.GROUP_STATUS) != frame.is_status:
        where = "a status" if frame.is_status else "a measurement"
        return f"metric {metric.name} does not belong in {where} frame"
    if not metric.raw_min <= raw <= metric.raw_max:
        return f"{metric.name} raw value {raw} outside {metric.raw_min}..{metric.raw_max}"
    return None
