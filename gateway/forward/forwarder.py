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

from gateway.buffer import Outbox
from gateway.forward import PermanentStoreError, RetryableStoreError, Store
from gateway.model import Reading
from gateway.provenance import (
    BATCH_FIELD,
    AuditLog,
    GatewayIdentity,
    ProvenanceRecord,
    make_record,
)

BATCH_MAX = 5000  # lines per write: the InfluxDB guidance for batch size


@dataclass
class Provenance:
    """What the forwarder needs to sign batches: the gateway's key, its audit log, and the
    anonymisation policy the readings went through."""

    identity: GatewayIdentity
    audit: AuditLog
    policy_version: int = 0
    policy_hash: bytes = bytes(32)

    def record(self, seq: int, readings: list[Reading]) -> ProvenanceRecord:
        return make_record(self.identity, seq, readings, self.policy_version,
                           self.policy_hash)


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
        self.last_success_s: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def drain_once(self) -> int:
        """Send one batch.  Returns how many readings left the outbox (0: empty).
        Raises RetryableStoreError when the store is unavailable."""
        pending = self.outbox.pending_batch()
        if pending is not None:  # opened before a stop or crash: send exactly that again
            seq, record, items = pending
            self._send(items, (seq, record))
        else:
            items = self.outbox.peek(self.batch_max)
            self._send(items)
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
        return len(items) + len(points)

    def _send(self, items, opened: tuple[int, str] | None = None) -> None:
        if not items:
            if opened is not None:
                self.outbox.abandon_batch(opened[0])
            return
        if self.provenance is None:
            try:
                self.store.write([r for _, r in items])
            except PermanentStoreError as exc:
                self._split(items, exc)
                return
            self.outbox.remove([i for i, _ in items])
            return
        seq, record_json = opened or self.outbox.open_batch(
            items[0][0], items[-1][0],
            lambda seq: json.dumps(self.provenance.record(seq, [r for _, r in items]).to_json()))
        record = ProvenanceRecord.from_json(json.loads(record_json))
        points = []
        for _, r in items:  # fresh objects from the outbox: adding the field in place is safe
            r.fields[BATCH_FIELD] = float(seq)
            points.append(r)
        try:
            self.store.write([*points, record.to_point()])
        except PermanentStoreError as exc:
            self.outbox.abandon_batch(seq)
            self._split(items, exc)
            return
        self.provenance.audit.append(record, self.clock())
        self.outbox.close_batch(seq, [i for i, _ in items])

    def _split(self, items, exc: PermanentStoreError) -> None:
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
                sent = self.drain_once()
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
