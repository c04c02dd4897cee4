"""The forwarder: oldest buffered readings → Store, in batches, until the outbox is empty.

Synchronous writes of our own batches (`influxdb-client`'s batching writer loses data on
exit and on errors).  A batch leaves the outbox only after the store took it; a store
fault keeps it and backs off (exponential, with jitter, honouring Retry-After); a batch
the store refuses for good is split until the bad readings are found and quarantined, so
one bad reading never blocks the queue.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.buffer import Item, Outbox
from gateway.forward import PermanentStoreError, RetryableStoreError, Store, line_protocol
from gateway.provenance import (
    BATCH_FIELD,
    AuditLog,
    GatewayIdentity,
    ProvenanceRecord,
    make_record,
)

BATCH_MAX = 5000  # lines per write: the InfluxDB guidance for batch size
# batches the forwarder's thread sends back to back before it looks at gap records and
# heartbeats again (and at stop()): 80,000 readings, a second or two of a backlog
DRAIN_BATCHES = 16


@dataclass
class Provenance:
    """What the forwarder needs to sign batches: the gateway's key, its audit log, and the
    anonymisation policy readings went through when the buffer does not know it (policy
    version 0: readings committed without one)."""

    identity: GatewayIdentity
    audit: AuditLog
    policy_version: int = 0
    policy_hash: bytes = bytes(32)

    def record(self, seq: int, lines: list[str], first_s: int, last_s: int,
               policy_version: int | None = None,
               policy_hash: bytes | None = None) -> ProvenanceRecord:
        if policy_version is None or policy_hash is None:
            policy_version, policy_hash = self.policy_version, self.policy_hash
        return make_record(self.identity, seq, lines, first_s, last_s, policy_version,
                           policy_hash)


@dataclass
class _Batch:
    """An opened batch, ready to send."""

    seq: int
    record: ProvenanceRecord
    first_id: int
    last_id: int
    count: int  # readings (lines holds them and the provenance point)
    lines: list[str]  # line-protocol text for Store.write_lines (an item may hold many lines)


def _batch_field(seq: int) -> str:
    return f",{BATCH_FIELD}={float(seq)!r}"


class _Call:
    """`fn(*args)` on a thread of its own (a store write: it waits on the network with the
    GIL released, so the caller can work meanwhile); join(), then result() returns or
    raises what it did."""

    def __init__(self, fn, *args):
        self._result = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="store-write",
                                        daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        store: Store,
        batch_max: int = BATCH_MAX,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        provenance: Provenance | None = None,
    ):
        self.outbox = outbox
        self.store = store
        self.batch_max = batch_max
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.provenance = provenance
        self.failures = 0  # consecutive retryable failures
        self._policies: dict[int, bytes] = {}
        self._ahead: _Batch | None = None  # the next batch, opened while one was written
        self.last_success_s: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def drain_once(self) -> int:
        """Send one batch.  Returns how many readings left the outbox (0: empty).
        Raises RetryableStoreError when the store is unavailable."""
        return self.drain(1)

    def drain(self, max_batches: int = DRAIN_BATCHES) -> int:
        """Send up to `max_batches` signed batches back to back (a backlog), then the
        gap records and heartbeats waiting; as drain_once() otherwise.  While the store
        takes one batch, the next is opened; as soon as the store has a batch, the next
        one's write starts, and only then is the first closed: the store is never left
        waiting on the gateway's own bookkeeping."""
        if self.provenance is not None:
            sent = self._send_signed(max_batches)
        else:
            span = self.outbox.span(self.batch_max)
            items = self.outbox.span_items(span[0], span[1]) if span else []
            self._send(items)
            sent = len(items)
        points = self.outbox.peek_points(self.batch_max)
        if points:  # gap records and heartbeats: not readings, so not in signed batches
            try:
                self.store.write([p for _, p in points])
            except PermanentStoreError as exc:
                for item in points:
                    self.outbox.quarantine_point(item, str(exc), self.clock())
            else:
                self.outbox.remove_points([i for i, _ in points])
        self.failures = 0
        self.last_error = None
        self.last_success_s = self.clock()
        return sent + len(points)

    def _send_signed(self, max_batches: int = 1) -> int:
        """The oldest open batch (one a crash, a stop or a failed write left behind), else a
        new one; while the store takes it, the next batch is opened and made ready, so the
        gateway's work and the store's overlap.  Then, up to `max_batches`, the next."""
        assert self.provenance is not None
        first = self._first_batch()
        if first is None:
            return 0
        batch, writing = first
        sent = 0
        for n in range(max_batches):
            try:
                if batch.count == self.batch_max and self._ahead is None:  # more behind it
                    span = self.outbox.span(self.batch_max, self.outbox.open_batches_last_id())
                    if span is not None:
                        self._ahead = self._open_span(span)
            finally:
                writing.join()
            try:
                writing.result()
            except PermanentStoreError as exc:
                self.outbox.abandon_batch(batch.seq)
                self._split(self.outbox.span_items(batch.first_id, batch.last_id), exc)
                return sent + batch.count
            # The store has `batch`.  The next write starts before `batch` is closed, when
            # the batch opened ahead is the next open one (after a failed write, older
            # open batches go first, from pending_batch()).
            following = None
            ahead = self._ahead
            if (n + 1 < max_batches and ahead is not None and not self._stop.is_set()
                    and self.outbox.open_batches()[:2] == [batch.seq, ahead.seq]):
                self._ahead = None
                following = (ahead, _Call(self._write_and_log, ahead))
            try:
                sent += self.outbox.close_batch(batch.seq, batch.first_id, batch.last_id)
            except BaseException:
                if following is not None:  # it stays open and goes again: no harm
                    following[1].join()
                raise
            if following is None:
                return sent
            batch, writing = following
        return sent

    def _first_batch(self) -> tuple[_Batch, _Call] | None:
        """The batch to send first, its write started."""
        ahead, self._ahead = self._ahead, None
        pending = self.outbox.pending_batch()
        if pending is not None:
            seq, record, first_id, last_id = pending
            if ahead is not None and ahead.seq == seq:
                batch = ahead
            else:
                batch = self._ready_span(seq, record, first_id, last_id)
                if batch.count == 0:
                    self.outbox.abandon_batch(seq)
                    return None
        else:
            span = self.outbox.span(self.batch_max)
            if span is None:
                return None
            batch = self._open_span(span)
        return batch, _Call(self._write_and_log, batch)

    def _write_and_log(self, batch: _Batch) -> None:
        """The store takes the batch, then the audit log records it (fsync'd) before the
        batch is closed: on the writing thread, beside the next batch's preparation."""
        assert self.provenance is not None
        self.store.write_lines(batch.lines)
        self.provenance.audit.append(batch.record, self.clock())

    def _open_span(self, span: tuple[int, int, int, int, int, int]) -> _Batch:
        """_open() for a span of the outbox, with the per-reading work done by SQLite."""
        assert self.provenance is not None
        first_id, last_id, _, first_s, last_s, policy_version = span
        lines = self.outbox.span_lines(first_id, last_id)
        policy = self._policy(policy_version)
        seq, record = self.outbox.open_batch(first_id, last_id, lambda seq: json.dumps(
            self.provenance.record(seq, lines, first_s, last_s,
                                   *(policy or (None, None))).to_json()))
        return self._ready_span(seq, record, first_id, last_id)

    def _ready_span(self, seq: int, record_json: str, first_id: int, last_id: int) -> _Batch:
        record = ProvenanceRecord.from_json(json.loads(record_json))
        # The outbox's lines are the canonical lines (provenance.canonical_line), so the
        # batch field goes in only here, on the way out.  One text for the readings, as
        # SQLite made it: never split into lines and joined again.
        body = self.outbox.span_body(first_id, last_id, _batch_field(seq))
        count = body.count("\n") + 1 if body else 0
        lines = [body, line_protocol(record.to_point())] if body else []
        return _Batch(seq, record, first_id, last_id, count, lines)

    def _open(self, items: list[Item]) -> _Batch:
        """Number a new batch of `items` and fix its signed record in the outbox, before
        sending: a batch re-sent after a crash is then the same batch."""
        policy = self._policy(items[0][2])  # outside open_batch: it holds the outbox
        seq, record_json = self.outbox.open_batch(
            items[0][0], items[-1][0],
            lambda seq: json.dumps(self._record(seq, items, policy).to_json()))
        record = ProvenanceRecord.from_json(json.loads(record_json))
        batch = _batch_field(seq) + " "
        lines = [f"{head}{batch}{t}" for _, t, _, head in items]
        lines.append(line_protocol(record.to_point()))
        return _Batch(seq, record, items[0][0], items[-1][0], len(items), lines)

    def _send(self, items: list[Item]) -> None:
        """A batch of `items` now, synchronously (a split's halves, or no provenance)."""
        if not items:
            return
        if self.provenance is None:
            try:
                self.store.write_lines([f"{head} {t}" for _, t, _, head in items])
            except PermanentStoreError as exc:
                self._split(items, exc)
                return
            self.outbox.remove([item[0] for item in items])
            return
        batch = self._open(items)
        try:
            self.store.write_lines(batch.lines)
        except PermanentStoreError as exc:
            self.outbox.abandon_batch(batch.seq)
            self._split(items, exc)
            return
        self.provenance.audit.append(batch.record, self.clock())
        self.outbox.close_batch(batch.seq, batch.first_id, batch.last_id)

    def _policy(self, version: int) -> tuple[int, bytes] | None:
        """The version and hash of the policy buffered readings went through, or None
        when they were committed without one the buffer knows (version 0)."""
        digest = self._policies.get(version)
        if digest is None:
            self._policies = self.outbox.policies()
            digest = self._policies.get(version)
        return None if digest is None else (version, digest)

    def _record(self, seq: int, items: list[Item],
                policy: tuple[int, bytes] | None) -> ProvenanceRecord:
        assert self.provenance is not None
        times = [t for _, t, _, _ in items]
        return self.provenance.record(seq, [f"{h} {t}" for _, t, _, h in items], min(times),
                                      max(times), *(policy or (None, None)))

    def _split(self, items: list[Item], exc: PermanentStoreError) -> None:
        if len(items) == 1:
            self.outbox.quarantine(items[0], str(exc), self.clock())
            return
        half = len(items) // 2
        self._send(items[:half])
        self._send(items[half:])

    def backoff_s(self, retry_after_s: float | None) -> float:
        """Full-jitter exponential backoff, never shorter than the store's Retry-After."""
        cap = min(self.backoff_max_s, self.backoff_min_s * (2 ** min(self.failures, 20)))
        delay = self.rng.uniform(self.backoff_min_s, cap)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    # -- background thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.drain()
            except RetryableStoreError as exc:
                self.failures += 1
                self.last_error = str(exc)
                self._stop.wait(self.backoff_s(exc.retry_after_s))
                continue
            if sent == 0:
                self._wake.wait(0.5)
                self._wake.clear()

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop the thread; with a timeout, first give the outbox that long to empty."""
        deadline = time.monotonic() + drain_timeout_s
        while drain_timeout_s and time.monotonic() < deadline and self.outbox.depth():
            self.wake()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
