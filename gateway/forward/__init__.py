"""Forward: buffered readings → the time-series store.

The store back-ends share one small interface, `Store`:

- `write(readings)` stores every reading or raises; it is synchronous, so when it returns
  the store has the data.  A reading's series (measurement + tags) and timestamp are
  derived only from the frame, so writing the same reading twice leaves one point
  (at-least-once delivery without duplicates).
- It raises `RetryableStoreError` for faults that may pass (network, 5xx, 408, 429, and
  401/403/404, which a fixed token or bucket cures; with `retry_after_s` when the store
  said so) and `PermanentStoreError` for a batch the store will never take as it is
  (malformed; 413, as `PayloadTooLargeError`, which the forwarder answers by splitting).
- `close()` is called once, after the last write has returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from firmware import metrics
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

    def write_lines(self, lines: Sequence[str]) -> None:
        """Store line-protocol text (second precision), as `line_protocol` and
        `line_head` make it: each item one or more complete lines, separated by "\n" (a
        batch's readings come as one text); same errors as write()."""
        ...

    def close(self) -> None: ...


def line_head(reading) -> str:
    """A reading's line-protocol line without its timestamp: `measurement,tags fields`.
    The outbox keeps this text, so draining it formats nothing (docs/protocol.md §7)."""
    if type(reading) is Reading:  # a node's series prefix never changes: build it once
        if reading.head is not None:  # formatted by verify, on the way
            return reading.head
        series = (reading.status, reading.zone, reading.site, reading.node, reading.kind)
        prefix = _PREFIXES.get(series)
        if prefix is None:
            prefix = _PREFIXES[series] = line_series(reading)
            if len(_PREFIXES) > 100_000:
                _PREFIXES.clear()
        # A node's values are fixed-point (raw x 10^exp, docs/protocol.md §7): written as
        # the nearest double to that, whatever arithmetic made them, so the text is the
        # canonical one the provenance digest covers (provenance.canonical_line).
        # Readings the anonymiser withheld share a few field sets: each is formatted once.
        items = tuple(reading.fields.items())
        text = _FIELD_TEXTS.get(items)
        if text is None:
            text = ",".join([f"{k}={fixed_point(k, v)!r}" for k, v in sorted(items)])
            # equal values print alike, except 0.0 and -0.0 where fixed_point keeps the sign
            if all(v != 0 or k in _SCALE for k, v in items):
                if len(_FIELD_TEXTS) > 10_000:
                    _FIELD_TEXTS.clear()
                _FIELD_TEXTS[items] = text
        return prefix + text
    else:  # gap records, heartbeats, provenance points: few, and their tags vary
        prefix = line_series(reading)
    fields = reading.fields
    if len(fields) == 1:
        ((k, v),) = fields.items()
        return f"{prefix}{k}={float(v)!r}"
    return prefix + ",".join([f"{k}={float(v)!r}" for k, v in sorted(fields.items())])


def line_series(reading) -> str:
    """The start of a reading's line head: measurement and tags, then a space."""
    # keys escaped as values are: parse_line unescapes both (found by fuzz/fuzz_lines.py)
    tags = ",".join(f"{_escape_tag(k)}={_escape_tag(str(v))}"
                    for k, v in sorted(reading.tags.items()))
    return f"{_escape_measurement(reading.measurement)},{tags} "


def line_protocol(reading) -> str:
    """One InfluxDB line-protocol line, second precision (docs/protocol.md §7)."""
    return f"{line_head(reading)} {reading.time_s}"


_PREFIXES: dict[tuple, str] = {}
_FIELD_TEXTS: dict[tuple, str] = {}  # a Reading's fields, in their order -> their text
# registry metric name -> 10**-exp (values are raw / that)
_SCALE = {m.name: 10 ** -m.exp for m in metrics.BY_ID.values() if m.exp <= 0}


def fixed_point(name: str, value: float) -> float:
    """`value` of metric `name` as the nearest double to its fixed-point step (raw /
    10**-exp, raw rounded half away from zero, as metrics.to_raw_exp); other names, and
    values that are not finite, as they are."""
    scale = _SCALE.get(name)
    if scale is None:
        return float(value)
    x = value * scale
    if not -1e15 < x < 1e15:  # NaN or infinite: refused at commit, by the stores
        return float(value)
    return (int(x + 0.5) if x >= 0 else -int(-x + 0.5)) / scale


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_measurement(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace(" ", r"\ ")


_TOKEN = re.compile(r"(?:\\.|[^,\\])+")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text) if "\\" in text else text


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float], int]:
    """(measurement, tags, fields, time_s) of a line `line_protocol` wrote: the inverse,
    for the stores that are not line-protocol servers and for people.  Raises ValueError
    on anything else."""
    try:
        series, fields_text, time_text = line.rsplit(" ", 2)
        head, *tag_parts = _TOKEN.findall(series)
        tags = {}
        for part in tag_parts:
            key, _, value = re.split(r"(?<!\\)(=)", part, maxsplit=1)
            tags[_unescape(key)] = _unescape(value)
        fields = {}
        for part in fields_text.split(","):
            key, _, value = part.partition("=")
            fields[key] = float(value)
        return _unescape(head), tags, fields, int(time_text)
    except ValueError as exc:
        raise ValueError(f"not a line this gateway writes: {line[:200]!r} ({exc})") from None


def open_store(spec: str, **options) -> Store:
    """The store a config or command line names.

    - "sqlite:PATH", or a bare PATH ending in .sqlite or .db → `LocalStore(PATH)`;
    - "http://…" or "https://…" → `InfluxStore(url)`, with `token` (default: the
      DORDT_INFLUX_TOKEN environment variable), `org` and `bucket` (default "dordt"), and
      `timeout_s` from `options`.

    Other `options` go to the store's constructor; anything else raises ValueError.
    """
    import os

    text = spec.strip()
    if text.startswith(("http://", "https://")):
        from gateway.forward.influx import InfluxStore

        options.setdefault("token", os.environ.get("DORDT_INFLUX_TOKEN", ""))
        options.setdefault("org", "dordt")
        options.setdefault("bucket", "dordt")
        return InfluxStore(text, **options)
    path = None
    if text.startswith("sqlite:"):
        # "sqlite:///abs/path", as in SQLAlchemy URLs, means /abs/path too
        path = text[len("sqlite:") :].removeprefix("//")
    elif text.lower().endswith((".sqlite", ".db")):
        path = text
    if path:
        from gateway.forward.local import LocalStore

        return LocalStore(path, **options)
    raise ValueError(
        f"unknown store {spec!r}: use sqlite:PATH, a PATH ending in .sqlite or .db,"
        " or an http:// or https:// URL of an InfluxDB /api/v2/write endpoint"
    )
