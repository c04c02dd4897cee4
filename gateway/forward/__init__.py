"""Forward: buffered readings → the time-series store.

The store back-ends share one small interface, `Store`:

- `write(readings)` stores every reading or raises; it is synchronous, so when it returns
  the store has the data.  A reading's series (measurement + tags) and timestamp are
  derived only from the frame, so writing the same reading twice leaves one point
  (at-least-once delivery without duplicates).
- It raises `RetryableStoreError` for faults that may pass (network, 5xx, 429; with
  `retry_after_s` when the store said so) and `PermanentStoreError` for a batch the store
  will never take (malformed, 4xx other than 408/413/429).
- `close()` is called once, after the last write has returned.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from gateway.model import Reading


class StoreError(Exception):
    """A write the store did not take."""


class RetryableStoreError(StoreError):
    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentStoreError(StoreError):
    pass


class Store(Protocol):
    def write(self, readings: Sequence[Reading]) -> None: ...

    def close(self) -> None: ...


def line_protocol(reading: Reading) -> str:
    """One InfluxDB line-protocol line, second precision (docs/protocol.md §7)."""
    tags = ",".join(f"{k}={_escape_tag(v)}" for k, v in sorted(reading.tags.items()))
    fields = ",".join(f"{k}={_float(v)}" for k, v in sorted(reading.fields.items()))
    return f"{reading.measurement},{tags} {fields} {reading.time_s}"


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _float(value: float) -> str:
    return repr(float(value))
