"""InfluxStore against a real VictoriaMetrics, and against a loopback stub for the answers
VictoriaMetrics never gives (429, 503, 413, 4xx, slow replies).

What VictoriaMetrics 1.79 (Debian) does with `/api/v2/write`, as these tests pin down:

- Series names: `<measurement>_<field>` (-influxMeasurementFieldSeparator "_"), e.g.
  `air_pm25_ugm3`, `node_status_uptime_s`; the tags become labels as they are (escaped
  characters unescaped); timestamps are kept in milliseconds.
- `bucket` and `org` are ignored: no label records them, so every bucket lands in one
  namespace.  Only a `db` query argument (not sent by influxdb-client) adds a `db` label
  (-influxDBLabel).  A twin that separates data by bucket must do it with a tag.
- It answers 204 to every parseable request: a line it cannot parse is logged and
  skipped, a NaN value is dropped, ±inf is stored as ±Inf, a string field becomes 0.  Only
  an unreadable body (e.g. broken gzip) gets a 400.  InfluxDB answers 400 to such lines, so
  InfluxStore refuses non-finite values itself (PermanentStoreError) before sending.
- Without `-dedup.minScrapeInterval` it keeps a second copy of a re-sent point; the
  fixture sets it to 1ms, as a twin on VictoriaMetrics must, to match InfluxDB's
  "same series and time overwrites".
"""

from __future__ import annotations

import email.utils
import gzip
import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.forward import PermanentStoreError, RetryableStoreError, line_protocol
from gateway.forward.influx import InfluxStore, PayloadTooLargeError, parse_retry_after
from gateway.model import Reading
from tests.fixtures.services import VictoriaMetrics

T0 = 1_700_000_000
TOKEN = "s3cret-t0ken-value"

READINGS = [
    Reading(
        node="0a0b0c01", kind="air", zone="spoorzone", site="Station Noord", counter=1,
        time_s=T0, window_s=60,
        fields={"temperature_c": 21.25, "humidity_pct": 55.5, "pm25_ugm3": 12.3,
                "gas_resistance_ohm": 152000.0},
    ),
    Reading(
        node="0a0b0c02", kind="noise", zone="maasterras", site="kade,3=b", counter=7,
        time_s=T0 + 1, window_s=60,
        fields={"laeq_db": 61.4, "lamax_db": 78.9, "la90_db": 44.0, "band_31_5hz_db": 30.1},
    ),
    Reading(
        node="0a0b0c03", kind="crowd", zone="spuiboulevard", site="plein", counter=3,
        time_s=T0 + 2, window_s=300,
        fields={"crowd_count": 42.0, "rssi_bin_0": 5.0, "rssi_bin_4": 0.0},
    ),
    Reading(
        node="0a0b0c01", kind="air", zone="spoorzone", site="Station Noord", counter=2,
        time_s=T0 + 3, window_s=0, status=True,
        fields={"uptime_s": 86400.0, "free_heap_bytes": 123456.0, "firmware_version": 10203.0},
    ),
]  # fmt: skip


def expected_series(readings: list[Reading]) -> list[dict]:
    out = []
    for r in readings:
        for name, value in r.fields.items():
            out.append({
                "metric": {"__name__": f"{r.measurement}_{name}", **r.tags},
                "values": [value],
                "timestamps": [r.time_s * 1000],
            })  # fmt: skip
    return sorted(out, key=lambda s: sorted(s["metric"].items()))


@pytest.fixture
def vm(victoriametrics_factory) -> VictoriaMetrics:
    # A VictoriaMetrics of our own: the shared one also holds other tests' air_* series.
    return victoriametrics_factory()


@pytest.fixture
def store_for():
    stores: list[InfluxStore] = []

    def make(url: str, **options) -> InfluxStore:
        s = InfluxStore(url, **options)
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


# -- against VictoriaMetrics ----------------------------------------------------------------


@pytest.mark.services
def test_every_kind_and_status_land_as_named_series_with_tags_values_and_times(vm, store_for):
    store_for(vm.url, token=TOKEN).write(READINGS)
    assert vm.export('{__name__=~".+"}') == expected_series(READINGS)


@pytest.mark.services
def test_bucket_and_org_are_not_labels_in_victoriametrics(vm, store_for):
    one = READINGS[2]
    store_for(vm.url, org="city", bucket="twin").write([one])
    [series] = vm.export('{__name__="crowd_crowd_count"}')
    assert series["metric"] == {"__name__": "crowd_crowd_count", **one.tags}
    assert "db" not in series["metric"]


@pytest.mark.services
def test_writing_the_same_readings_twice_leaves_one_point_each(vm, store_for):
    store = store_for(vm.url)
    store.write(READINGS)
    vm.flush()
    store.write(READINGS)
    store.write(READINGS[1:3])
    assert vm.export('{__name__=~".+"}') == expected_series(READINGS)


@pytest.mark.services
def test_a_stopped_store_is_retryable_fast_and_the_same_store_recovers(vm, store_for):
    store = store_for(vm.url, timeout_s=5)
    store.write(READINGS[:1])  # a pooled keep-alive connection exists now
    vm.stop()
    start = time.monotonic()
    with pytest.raises(RetryableStoreError, match="cannot write to http://127.0.0.1") as err:
        store.write(READINGS[1:])
    assert time.monotonic() - start < 2
    assert err.value.retry_after_s is None
    vm.start()
    store.write(READINGS[1:])
    assert vm.export('{__name__=~".+"}') == expected_series(READINGS)


@pytest.mark.services
def test_non_finite_values_are_refused_before_sending(vm, store_for):
    bad = Reading(
        node="0a0b0c09", kind="air", zone="spoorzone", site="x", counter=1, time_s=T0,
        window_s=60, fields={"temperature_c": float("nan"), "humidity_pct": 50.0},
    )  # fmt: skip
    with pytest.raises(PermanentStoreError, match="0a0b0c09.*temperature_c=nan"):
        store_for(vm.url).write([READINGS[0], bad])
    assert vm.export('{__name__=~".+"}') == []  # nothing of the batch was sent


@pytest.mark.services
def test_what_victoriametrics_answers_to_malformed_line_protocol(vm):
    # Written down because it differs from InfluxDB (which answers 400): VictoriaMetrics
    # takes the request (204), logs and skips what it cannot parse, and drops NaN.
    lines = [
        "m_nan,node=a f=nan 1700000000",
        "m_inf,node=a f=inf 1700000000",
        'm_str,node=a f="text" 1700000000',
        "this is not line protocol",
        "m_badtime,node=a f=1 yesterday",
        "m_ok,node=a f=1 1700000000",
    ]
    status = _post(vm.url + "/api/v2/write?precision=s", "\n".join(lines).encode())
    assert status == (204, "")
    names = {s["metric"]["__name__"]: s["values"] for s in vm.export('{__name__=~"m_.*"}')}
    assert names == {"m_inf_f": [float("inf")], "m_str_f": [0.0], "m_ok_f": [1.0]}
    assert "cannot unmarshal InfluxDB line" in vm.log_text()
    # Only a body it cannot read at all is refused.
    code, body = _post(
        vm.url + "/api/v2/write?precision=s", b"not gzip", {"Content-Encoding": "gzip"}
    )
    assert code == 400 and "cannot read gzipped" in body


# -- against a stub: answers VictoriaMetrics never gives ------------------------------------


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0


@dataclass
class Stub:
    url: str
    answer: Answer
    requests: list[dict]


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub(url="", answer=Answer(), requests=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            gz = self.headers.get("Content-Encoding") == "gzip"
            state.requests.append({
                "path": self.path,
                "headers": dict(self.headers),
                "body": (gzip.decompress(raw) if gz else raw).decode(),
            })  # fmt: skip
            a = state.answer
            time.sleep(a.delay_s)
            self.send_response(a.status)
            for k, v in a.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(a.body)))
            self.end_headers()
            self.wfile.write(a.body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_request_is_one_gzipped_second_precision_write(stub, store_for):
    store_for(stub.url, token=TOKEN, org="city", bucket="twin").write(READINGS)
    [req] = stub.requests
    path, _, query = req["path"].partition("?")
    assert path == "/api/v2/write"
    assert urllib.parse.parse_qs(query) == {
        "org": ["city"], "bucket": ["twin"], "precision": ["s"],
    }  # fmt: skip
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert req["headers"]["Authorization"] == f"Token {TOKEN}"
    assert req["body"].split("\n") == [line_protocol(r) for r in READINGS]


HTTP_DATE_IN_2_MIN = "in 120 s"  # replaced by a real HTTP-date when the test runs


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after_s"),
    [
        (429, {"Retry-After": "7"}, RetryableStoreError, 7.0),
        (503, {"Retry-After": HTTP_DATE_IN_2_MIN}, RetryableStoreError, 120.0),
        (503, {}, RetryableStoreError, None),
        (500, {"Retry-After": "soon"}, RetryableStoreError, None),
        (502, {}, RetryableStoreError, None),
        (408, {}, RetryableStoreError, None),
        (413, {}, PayloadTooLargeError, None),
        (400, {}, PermanentStoreError, None),
        (422, {}, PermanentStoreError, None),
        (401, {}, RetryableStoreError, None),
        (404, {}, RetryableStoreError, None),
    ],
)
def test_http_answers_map_to_error_types(stub, store_for, status, headers, error, retry_after_s):
    if headers.get("Retry-After") == HTTP_DATE_IN_2_MIN:
        headers = {"Retry-After": email.utils.formatdate(time.time() + 120, usegmt=True)}
    stub.answer = Answer(status, headers, b'{"code":"x","message":"from the stub"}')
    with pytest.raises(error) as err:
        store_for(stub.url, token=TOKEN).write(READINGS)
    assert type(err.value) is error
    assert f"HTTP {status}" in str(err.value) and "from the stub" in str(err.value)
    if retry_after_s is None or isinstance(err.value, PermanentStoreError):
        assert getattr(err.value, "retry_after_s", None) is None
    else:
        assert err.value.retry_after_s == pytest.approx(retry_after_s, abs=2)
    assert len(stub.requests) == 1  # the client did not retry on its own


def test_413_is_permanent_so_a_forwarder_splits_the_batch(stub, store_for):
    stub.answer = Answer(413, body=b"request entity too large")
    with pytest.raises(PermanentStoreError, match="a batch of 4 lines; split it"):
        store_for(stub.url).write(READINGS)


def test_the_token_never_appears_in_an_error(stub, store_for):
    echo = json.dumps({"message": f"bad token {TOKEN}"}).encode()
    stub.answer = Answer(401, {"X-Echo": TOKEN}, echo)
    with pytest.raises(RetryableStoreError, match="check the token") as err:
        store_for(stub.url, token=TOKEN).write(READINGS)
    assert TOKEN not in str(err.value) and TOKEN not in repr(err.value.args)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_slow_store_times_out_as_retryable_without_hidden_retries(stub, store_for):
    stub.answer = Answer(204, delay_s=2.0)
    start = time.monotonic()
    with pytest.raises(RetryableStoreError, match="ReadTimeoutError"):
        store_for(stub.url, timeout_s=0.3).write(READINGS)
    assert time.monotonic() - start < 1.5
    assert len(stub.requests) == 1


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now_s=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=now) == 0.0


def test_the_constructor_names_bad_options():
    with pytest.raises(ValueError, match="url must start with http:// or https://"):
        InfluxStore("127.0.0.1:8086")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        InfluxStore("http://127.0.0.1:8086", timeout_s=0)


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
