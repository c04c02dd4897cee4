"""InfluxStore: readings → an InfluxDB 2.x/3.x `/api/v2/write` endpoint (or anything that
speaks it, e.g. VictoriaMetrics), with the official `influxdb-client`.

In: a sequence of `Reading`s.  Out: one gzipped, second-precision line-protocol request per
`write()` call, sent synchronously — when `write()` returns, the store has answered 2xx.
The client's batching writer is never used: it buffers in a background thread and loses
data on exit and on errors.  The client does no retries of its own (`retries=False`):
retrying, with backoff and Retry-After, is the forwarder's job, so a write fails fast.

On failure (what a forwarder should do):

- `RetryableStoreError`: network errors and timeouts, 408, 429, 5xx (`retry_after_s` from
  the Retry-After header when sent), and 401/403/404 — a wrong token, org or bucket is a
  configuration fault that rejects every batch, so the data must stay buffered until an
  operator fixes it rather than be quarantined reading by reading.
- `PayloadTooLargeError` (a `PermanentStoreError`), 413: this batch, as sent, will never be
  taken, yet the readings in it are fine; split it and send the halves.  It is permanent
  rather than retryable so that the forwarder's split-on-permanent path handles it without
  special code, and so that a single reading too large to ever fit is quarantined instead
  of being retried forever.  Re-sending the same batch (the retryable path) never helps.
- `PermanentStoreError`: any other 4xx (malformed line protocol), and readings with a
  non-finite field value, refused before sending: InfluxDB answers 400 to `nan`/`inf`,
  while VictoriaMetrics answers 204 and silently drops NaN (see tests/gateway/
  test_store_influx.py), so checking here gives the same outcome on both.

The token never appears in an error message.
"""

from __future__ import annotations

import email.utils
import gzip
import math
import sys
import time
import urllib.parse
from collections.abc import Sequence

import urllib3

from gateway.forward import PermanentStoreError, RetryableStoreError, line_protocol
from gateway.model import Reading

# influxdb-client imports numpy whenever it is installed, only to serialise numpy values
# and DataFrames, which the gateway never writes: kept out, that is ~10 MB less resident
# memory and a faster start on a Pi.  Only while the client is imported, and only when
# nothing has imported numpy yet; later imports of numpy work as usual.
_keep_numpy_out = "numpy" not in sys.modules
if _keep_numpy_out:
    sys.modules["numpy"] = None  # type: ignore[assignment]  # import raises ImportError
try:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.rest import ApiException
    from influxdb_client.service.write_service import WriteService
finally:
    if _keep_numpy_out:
        del sys.modules["numpy"]

# 408 Request Timeout, 429 Too Many Requests, and every 5xx may pass; 401/403/404 are
# configuration faults that must not cost data (see the module docstring).
_RETRYABLE_4XX = frozenset({408, 429})
_CONFIG_4XX = {
    401: "check the token",
    403: "check the token's permissions",
    404: "check the org and bucket",
}
_BODY_MAX_CHARS = 300


class PayloadTooLargeError(PermanentStoreError):
    """The store refused the request as too large (HTTP 413): split the batch and retry the
    halves.  Only a single reading that still gets this is really permanent."""


class InfluxStore:
    """A `Store` writing to `url`'s `/api/v2/write` (bucket, org, precision=s, gzip)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        org: str = "dordt",
        bucket: str = "dordt",
        timeout_s: float = 10,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"InfluxStore url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0:
            raise ValueError(f"InfluxStore timeout_s must be > 0, got {timeout_s!r}")
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self._token = token
        self._where = f"{_redact_url(self.url)} (org {org!r}, bucket {bucket!r})"
        self._client = InfluxDBClient(
            url=self.url,
            token=token,
            org=org,
            timeout=int(timeout_s * 1000),  # milliseconds, connect and read each
            enable_gzip=False,  # we gzip ourselves, at level 1 (see write_lines)
            retries=False,  # no hidden retries: the forwarder owns backoff
        )
        # The write API's own service: the same synchronous POST /api/v2/write that
        # write_api(SYNCHRONOUS).write() makes, given a body we compressed.
        self._write_service = WriteService(self._client.api_client)

    def write(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            _check_finite(reading)
        self.write_lines([line_protocol(r) for r in readings])

    def write_lines(self, lines: Sequence[str]) -> None:
        """One request with every line, gzip level 1: the client's enable_gzip uses level
        9, which costs ~6x the CPU for ~1.5x smaller bodies (11 ms against 1.8 ms for a
        5,000-line batch on a Pi-class core), the wrong trade on a gateway whose network
        is a local link or LTE with more bandwidth than its CPU can fill."""
        if not lines:
            return
        body = gzip.compress("\n".join(lines).encode(), compresslevel=1, mtime=0)
        try:
            self._write_service.post_write(
                org=self.org, bucket=self.bucket, body=body, precision=WritePrecision.S,
                content_encoding="gzip", content_type="text/plain; charset=utf-8",
            )
        except ApiException as exc:
            raise self._http_error(exc, sum(text.count("\n") + 1 for text in lines)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # With retries=False urllib3 raises the underlying error: NewConnectionError,
            # ConnectTimeoutError, ReadTimeoutError, ProtocolError (connection reset) ...
            raise RetryableStoreError(
                f"cannot write to {self._where}: {type(exc).__name__}: {exc}"
            ) from None

    def close(self) -> None:
        self._client.close()

    def _http_error(self, exc: ApiException, n_lines: int) -> Exception:
        status = int(exc.status or 0)
        body = self._scrub(_body_text(exc.body))  # a server may echo what it was sent
        what = f"{self._where} answered HTTP {status} {exc.reason or ''}".rstrip()
        detail = f": {body}" if body else ""
        if status == 413:
            return PayloadTooLargeError(f"{what} to a batch of {n_lines} lines; split it{detail}")
        if status in _CONFIG_4XX:
            return RetryableStoreError(f"{what}; {_CONFIG_4XX[status]}{detail}")
        if status in _RETRYABLE_4XX or status >= 500 or status == 0:
            retry_after_s = parse_retry_after(_header(exc.headers, "Retry-After"))
            return RetryableStoreError(f"{what}{detail}", retry_after_s)
        return PermanentStoreError(
            f"{what}; the store refuses this batch of {n_lines} lines{detail}"
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110
    §10.2.3).  None when absent or unreadable; a date in the past gives 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def _check_finite(reading: Reading) -> None:
    for name, value in reading.fields.items():
        if not math.isfinite(value):
            raise PermanentStoreError(
                f"reading from node {reading.node} at {reading.time_s} has field {name}={value};"
                " line protocol has no NaN or infinity"
            )


def _header(headers: object, name: str) -> str | None:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None:  # a plain dict from some urllib3 versions is case-sensitive
        for key, val in dict(headers).items():
            if key.lower() == name.lower():
                return val
    return value


def _body_text(body: object) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = " ".join(text.split())
    if len(text) > _BODY_MAX_CHARS:
        text = text[:_BODY_MAX_CHARS] + "…"
    return text


def _redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
