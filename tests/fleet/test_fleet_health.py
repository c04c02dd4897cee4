"""`dordt fleet health` on what real gateways wrote: two gateways (their own verify, buffer
and forwarder, fed signed status frames of simulated nodes) forward node_status,
gateway_health, provenance and ota points into a local store and into a real
VictoriaMetrics; the summary, the terminal tables, --json, and the HTML page in headless
chromium (rows, chart series, an injected <script> that must not run) are checked on both.
"""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest

from dordt.cli import main
from firmware import protocol
from fleet.fleet_health import fleet_health, parse_duration_s, summarise
from fleet.health_page import to_html
from fleet.keyring import Keyring, NodeEntry
from fleet.offers import OTA_STATES
from gateway.forward.influx import InfluxStore
from gateway.forward.local import LocalStore
from gateway.model import Envelope, Point, Reading
from gateway.pipeline import Gateway
from hardware.sites import load_placements
from simulators.fleet import SimNode
from tests.data import PASSTHROUGH
from tests.fixtures.services import free_port

ROUNDS = 36  # status every 5 min for 3 h
STEP_S = 300
SEED = 21


def _nodes():
    by_site = {(p.site, p.kind): p for p in load_placements()}
    want = {"air_spz": ("spz-01", "air"), "noise_spz": ("spz-01", "noise"),
            "crowd_spz": ("spz-01", "crowd"), "air_mst": ("mst-01", "air"),
            "noise_mst": ("mst-01", "noise")}
    return {name: SimNode(by_site[key], SEED) for name, key in want.items()}


def _status(name: str, r: int) -> dict | None:
    """What each simulated node reports at round r (None: it is silent)."""
    uptime, cause, fw, errors, dropped = 600 + r * STEP_S, 1, 100, 0, 0
    heap = 120_000 - (900 * r if name == "air_spz" else 50 * (r % 3))
    if name == "noise_spz":  # the watchdog bit it twice
        boot = 0 if r < 12 else 12 if r < 24 else 24
        uptime, cause = (r - boot) * STEP_S + 5, 1 if boot == 0 else 3
    if name == "crowd_spz" and r > 12:
        return None  # went quiet two hours ago
    if name.endswith("_mst"):
        fw, errors, dropped = 200, 3, 7
    return {"uptime_s": uptime, "free_heap_bytes": heap, "reset_cause": cause,
            "firmware_version": fw, "error_count": errors, "dropped_frames": dropped,
            "supply_mv": 5010}


def write_fleet(make_store, root, now_s: int) -> SimpleNamespace:
    """Three hours of status frames from five nodes through two real gateways into the
    store `make_store()` opens for each."""
    nodes = _nodes()
    t0 = now_s - ROUNDS * STEP_S
    gateways = {}
    for gw_id, zone in (("gw-spz", "spoorzone"), ("gw-mst", "maasterras")):
        served = {k: n for k, n in nodes.items() if n.placement.zone == zone}
        keyring = Keyring([NodeEntry(n.node_id, n.placement.kind, n.placement.zone,
                                     n.placement.site, {0: n.key}) for n in served.values()])
        gw = Gateway(keyring, make_store(), root / gw_id, gateway_id=gw_id,
                     policy_path=PASSTHROUGH)
        gateways[gw_id] = (gw, served)
    for r in range(ROUNDS + 1):
        t = t0 + r * STEP_S
        for gw_id, (gw, served) in gateways.items():
            envs = []
            for name, node in served.items():
                values = _status(name, r)
                if values is not None:
                    envs.append(Envelope("mqtt", node.topic, node.encode(
                        values, t, 60, protocol.FLAG_STATUS), t))
            gw.process(envs)
            gw.health.clock = lambda t=t: t
            if gw_id == "gw-mst" and r == ROUNDS:
                gw.alerts["disk_full"] = t  # degraded at its last heartbeat
            gw.outbox.add_point(gw.health.heartbeat_point())
            if gw_id == "gw-mst" and r == ROUNDS - 1:  # the gateway's OTA server's record
                node = served["noise_mst"]
                gw.outbox.add_point(Point("ota", {"zone": "maasterras",
                                                  "node": f"{node.node_id:08x}",
                                                  "gateway": gw_id},
                                          {"serial": 7.0,
                                           "state": float(OTA_STATES["confirmed"]),
                                           "version": 200.0}, t))
            # the store is reachable now and then (each gateway's own rhythm)
            every = 4 if gw_id == "gw-spz" else 3
            if r % every == every - 1 or r == ROUNDS:
                while gw.forwarder.drain_once():
                    pass
    return SimpleNamespace(nodes={k: f"{n.node_id:08x}" for k, n in nodes.items()},
                           keys=[n.key.hex() for n in nodes.values()], t0=t0, now=now_s,
                           root=root)


@pytest.fixture(scope="module")
def sqlite_fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("health-sqlite")
    store = root / "store.sqlite"
    fleet = write_fleet(lambda: LocalStore(store), root, int(time.time()))
    fleet.spec = f"sqlite:{store}"
    return fleet


@pytest.fixture(scope="module")
def vm_fleet(tmp_path_factory):
    from tests.fixtures.services import VictoriaMetrics

    root = tmp_path_factory.mktemp("health-vm")
    vm = VictoriaMetrics(root / "vm")
    vm.start()
    try:
        fleet = write_fleet(lambda: InfluxStore(vm.url), root, int(time.time()))
        vm.flush()
        fleet.spec = vm.url
        fleet.vm = vm
        yield fleet
    finally:
        vm.stop()


def by_node(report, fleet):
    names = {v: k for k, v in fleet.nodes.items()}
    return {names.get(n["node"], n["node"]): n for n in report.nodes}


def check_fleet(report, fleet):
    nodes = by_node(report, fleet)
    assert set(nodes) == set(fleet.nodes)
    a, b, c, d, e = (nodes[k] for k in ("air_spz", "noise_spz", "crowd_spz", "air_mst",
                                         "noise_mst"))
    assert a["zone"] == "spoorzone" and a["site"] == "spz-01" and a["kind"] == "air"
    assert a["gateway"] == "gw-spz" and d["gateway"] == e["gateway"] == "gw-mst"
    assert a["age_s"] <= 1 and not a["stale"] and a["status_points"] == ROUNDS + 1
    assert a["free_heap_bytes"] == 120_000 - 900 * ROUNDS == a["free_heap_min_bytes"]
    assert b["reset_causes"] == {"power_on": 1, "watchdog": 2}
    assert a["reset_causes"] == {"power_on": 1}
    assert c["stale"] and c["age_s"] == (ROUNDS - 12) * STEP_S
    assert c["gateway"] == "gw-spz"  # from its last status's signed batch
    assert a["firmware"] == "0.1.0" and d["firmware"] == "0.2.0"
    assert (d["dropped_frames"], d["error_count"], d["supply_mv"]) == (7, 3, 5010)
    assert e["ota"] == {"state": "confirmed", "serial": 7, "version": "0.2.0",
                        "time_s": fleet.now - STEP_S}
    assert a["ota"] is None
    gws = {g["gateway"]: g for g in report.gateways}
    assert set(gws) == {"gw-spz", "gw-mst"}
    assert gws["gw-spz"]["status"] == "ok" and gws["gw-mst"]["status"] == "degraded"
    assert gws["gw-spz"]["heartbeats"] == ROUNDS + 1
    assert gws["gw-spz"]["nodes"] == 3 and gws["gw-mst"]["nodes"] == 2
    # readings pile up between drains (3 nodes x 4 rounds) and the heartbeat shows it
    assert gws["gw-spz"]["buffer_readings_max"] == 12
    assert max(v for _t, v in report.buffer_series["gw-spz"]) == 12
    assert min(v for _t, v in report.buffer_series["gw-spz"]) == 2  # crowd_spz went quiet
    zones = {z["zone"]: z for z in report.zones}
    assert zones["spoorzone"] == {"zone": "spoorzone", "nodes": 3, "nodes_seen": 2,
                                  "nodes_stale": 1, "nodes_never_seen": 0,
                                  "firmware": {"0.1.0": 3}, "gateways": ["gw-spz"]}
    assert zones["maasterras"]["firmware"] == {"0.2.0": 2}
    assert len(report.heap_series[fleet.nodes["air_spz"]]) == ROUNDS + 1


def test_the_summary_of_a_local_store_written_by_two_gateways(sqlite_fleet):
    report = fleet_health(sqlite_fleet.spec, 24 * 3600, now_s=sqlite_fleet.now)
    check_fleet(report, sqlite_fleet)
    assert not report.empty


@pytest.mark.services
def test_the_summary_of_victoriametrics_matches_the_local_store(vm_fleet, sqlite_fleet):
    report = fleet_health(vm_fleet.spec, 24 * 3600, now_s=vm_fleet.now)
    check_fleet(report, vm_fleet)
    local = fleet_health(sqlite_fleet.spec, 24 * 3600, now_s=sqlite_fleet.now)
    strip = {"last_seen_s", "age_s", "time_s"}  # the two runs started a moment apart

    def rows(rep, fleet):
        out = []
        for name, n in sorted(by_node(rep, fleet).items()):
            n = {k: v for k, v in n.items() if k not in strip and k != "node"}
            if n["ota"]:
                n["ota"] = {k: v for k, v in n["ota"].items() if k not in strip}
            out.append((name, n))
        return out

    assert rows(report, vm_fleet) == rows(local, sqlite_fleet)
    assert report.zones == local.zones


def test_a_short_window_and_the_stale_thresholds(sqlite_fleet):
    report = fleet_health(sqlite_fleet.spec, 3600, now_s=sqlite_fleet.now,
                          node_stale_s=3 * 3600)
    nodes = by_node(report, sqlite_fleet)
    assert "crowd_spz" not in nodes  # silent for the whole hour
    assert nodes["noise_spz"]["reset_causes"] == {"watchdog": 1}
    report = fleet_health(sqlite_fleet.spec, 24 * 3600, now_s=sqlite_fleet.now,
                          node_stale_s=3 * 3600, gateway_stale_s=1)
    assert not by_node(report, sqlite_fleet)["crowd_spz"]["stale"]
    assert all(not g["stale"] for g in report.gateways)  # age 0 is not > 1
    late = fleet_health(sqlite_fleet.spec, 24 * 3600, now_s=sqlite_fleet.now + 600,
                        gateway_stale_s=300)
    assert all(g["stale"] for g in late.gateways)


def test_cli_tables_fit_80_columns_and_json_has_the_documented_keys(sqlite_fleet, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["fleet", "health", "--store", sqlite_fleet.spec]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for node in sqlite_fleet.nodes.values():
        assert node in out
    assert "pwr 1, wdt 2" in out and "gw-mst" in out and "degraded" in out
    assert "Updates (last OTA state)" in out and "confirmed" in out
    assert main(["fleet", "health", "--store", sqlite_fleet.spec, "--json",
                 "--zones", "hardware/data/zones.toml"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"format", "version", "generated_s", "since_s", "store",
                        "node_stale_s", "gateway_stale_s", "nodes", "gateways", "zones"}
    assert doc["format"] == "dordt-fleet-health" and doc["version"] == 1
    assert set(doc["nodes"][0]) == {
        "node", "zone", "site", "kind", "gateway", "last_seen_s", "age_s", "stale",
        "firmware", "uptime_s", "free_heap_bytes", "free_heap_min_bytes", "reset_causes",
        "dropped_frames", "error_count", "supply_mv", "status_points", "ota"}
    assert set(doc["gateways"][0]) == {
        "gateway", "last_seen_s", "age_s", "stale", "status", "buffer_readings",
        "buffer_readings_max", "buffer_oldest_age_s", "rejected", "evicted", "nodes",
        "heartbeats"}
    # the zones file adds the 22 placed nodes that never reported, zone by zone
    assert len(doc["nodes"]) == 27
    zones = {z["zone"]: z for z in doc["zones"]}
    assert [z["zone"] for z in doc["zones"]] == ["spoorzone", "maasterras", "spuiboulevard"]
    assert (zones["spoorzone"]["nodes_never_seen"], zones["spuiboulevard"]["nodes"]) == (6, 9)
    never = [n for n in doc["nodes"] if n["last_seen_s"] is None]
    assert len(never) == 22 and all(n["stale"] and n["age_s"] is None for n in never)


def test_empty_store_says_so_in_one_line(tmp_path, capsys):
    LocalStore(tmp_path / "empty.sqlite").close()
    assert main(["fleet", "health", "--store", f"sqlite:{tmp_path / 'empty.sqlite'}",
                 "--html", str(tmp_path / "p.html")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no node_status or gateway_health points in sqlite:")
    assert "widen --since" in out[0] and out[1] == f"wrote {tmp_path / 'p.html'}"
    assert 'id="empty"' in (tmp_path / "p.html").read_text()
    assert main(["fleet", "health", "--store", f"sqlite:{tmp_path / 'empty.sqlite'}",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["nodes"], doc["gateways"]) == ([], [])


@pytest.mark.parametrize("args, code, message", [
    (["--store", "sqlite:/nonexistent/store.sqlite"], 1, "no such file"),
    (["--store", "ftp://x"], 2, "give sqlite:PATH or http://HOST:PORT"),
    (["--store", "x.sqlite", "--since", "yesterday"], 2, "--since: 'yesterday' is not a"),
    (["--store", "x.sqlite", "--node-stale", "0"], 2, "--node-stale"),
    (["--store", "x.sqlite", "--zones", "/nonexistent.toml"], 2, "--zones"),
])
def test_operator_mistakes_get_one_line_and_their_exit_code(args, code, message, capsys):
    assert main(["fleet", "health", *args]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_not_a_store_and_an_unreachable_store_exit_1_without_the_password(tmp_path, capsys):
    (tmp_path / "notes.db").write_text("not sqlite\n" * 100)
    assert main(["fleet", "health", "--store", str(tmp_path / "notes.db")]) == 1
    err = capsys.readouterr().err
    assert "not a readable local store" in err and "Traceback" not in err
    port = free_port()  # nothing listens there
    assert main(["fleet", "health", "--store", f"http://ops:s3cret@127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"store http://127.0.0.1:{port} did not answer" in err
    assert "s3cret" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_no_node_key_or_gateway_key_in_any_output(sqlite_fleet, tmp_path, capsys):
    page = tmp_path / "health.html"
    assert main(["fleet", "health", "--store", sqlite_fleet.spec, "--html", str(page)]) == 0
    assert main(["fleet", "health", "--store", sqlite_fleet.spec, "--json"]) == 0
    out = capsys.readouterr().out + page.read_text()
    secrets = list(sqlite_fleet.keys)
    for gw in ("gw-spz", "gw-mst"):
        pem = (sqlite_fleet.root / gw / "gateway.key").read_text()
        secrets += [line for line in pem.splitlines() if "-----" not in line]
    assert secrets and not [s for s in secrets if s in out or s.upper() in out]


def test_duration_parsing():
    assert [parse_duration_s(s) for s in ("90s", "30m", "24h", "7d", "2w", "45", "1.5h")] == \
        [90, 1800, 86400, 604800, 1209600, 45, 5400]
    for bad in ("", "h", "-1h", "0", "1y", "1 hour"):
        with pytest.raises(ValueError):
            parse_duration_s(bad)


# -- the page in a real browser ----------------------------------------------------------------

HOSTILE_ZONE = "<script>document.title='pwned';window.__pwned=1</script>"
HOSTILE_SITE = '"><img src=x onerror="window.__pwned=2">'
HOSTILE_GW = "gw-<svg onload=window.__pwned=3>"


def hostile_store(path, now_s: int) -> str:
    """A store someone with write access filled with markup in every tag it could."""
    store = LocalStore(path)
    store.write([Reading("</td><script>window.__pwned=4</script>", "air", HOSTILE_ZONE,
                         HOSTILE_SITE, 1, now_s - 60, 60,
                         {"uptime_s": 5.0, "free_heap_bytes": 99_000.0, "reset_cause": 3.0,
                          "firmware_version": 10203.0}, status=True)])
    store.write([Point("gateway_health", {"gateway": HOSTILE_GW},
                       {"buffer_readings": 4.0, "status": 0.0}, now_s - 30)])
    store.close()
    return f"sqlite:{path}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.fixtures.browser import chromium_driver

    with chromium_driver(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def test_the_page_renders_in_headless_chromium_with_rows_and_chart_series(
        sqlite_fleet, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.fixtures.browser import console_errors

    page = tmp_path / "health.html"
    assert main(["fleet", "health", "--store", sqlite_fleet.spec, "--html", str(page),
                 "--json"]) == 0
    html = page.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    browser.get(page.as_uri())
    assert browser.title == "Dordt fleet health"
    rows = browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    assert sorted(r.get_attribute("data-node") for r in rows) == sorted(
        sqlite_fleet.nodes.values())
    stale = [r.get_attribute("data-node") for r in rows if r.get_attribute("data-stale") == "true"]
    assert stale == [sqlite_fleet.nodes["crowd_spz"]]
    b = next(r for r in rows if r.get_attribute("data-node") == sqlite_fleet.nodes["noise_spz"])
    assert "power_on 1, watchdog 2" in b.text and "gw-spz" in b.text
    gws = browser.find_elements(By.CSS_SELECTOR, "#gateways tbody tr")
    assert sorted(r.get_attribute("data-gateway") for r in gws) == ["gw-mst", "gw-spz"]
    zones = browser.find_elements(By.CSS_SELECTOR, "#zones tbody tr")
    assert [r.get_attribute("data-zone") for r in zones] == ["maasterras", "spoorzone"]
    buffer = browser.find_elements(By.CSS_SELECTOR, "#chart-buffer svg polyline")
    assert sorted(p.get_attribute("data-series") for p in buffer) == ["gw-mst", "gw-spz"]
    assert all(len(p.get_attribute("points").split()) == ROUNDS + 1 for p in buffer)
    heap = browser.find_elements(By.CSS_SELECTOR, "#chart-heap svg polyline")
    assert sorted(p.get_attribute("data-series") for p in heap) == sorted(
        sqlite_fleet.nodes.values())
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-firmware svg rect[data-series]")
    assert sorted((r.get_attribute("data-zone"), r.get_attribute("data-series"))
                  for r in bars) == [("maasterras", "0.2.0"), ("spoorzone", "0.1.0")]
    for svg in browser.find_elements(By.CSS_SELECTOR, "figure svg"):
        assert svg.size["width"] > 300 and svg.size["height"] > 50
    # the heap chart's line of the leaking node falls from left to right
    leak = next(p for p in heap if p.get_attribute("data-series") == sqlite_fleet.nodes[
        "air_spz"])
    ys = [float(xy.split(",")[1]) for xy in leak.get_attribute("points").split()]
    assert ys == sorted(ys)  # SVG y grows downwards
    assert console_errors(browser) == []


def test_markup_from_the_store_is_shown_as_text_and_never_runs(browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    from tests.fixtures.browser import console_errors

    spec = hostile_store(tmp_path / "store.sqlite", int(time.time()))
    page = tmp_path / "health.html"
    assert main(["fleet", "health", "--store", spec, "--html", str(page)]) == 0
    terminal = capsys.readouterr().out
    assert "<script>" in terminal  # printed as text: rich parsed no markup out of it
    html = page.read_text()
    assert "<script" not in html.replace("&lt;script", "") and "<img" not in html
    browser.get(page.as_uri())
    assert browser.title == "Dordt fleet health"
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('script, img').length") == 0
    row = browser.find_element(By.CSS_SELECTOR, "#nodes tbody tr")
    assert row.get_attribute("data-node") == "</td><script>window.__pwned=4</script>"
    assert HOSTILE_ZONE in row.text and "1.2.3" in row.text
    assert browser.find_element(By.CSS_SELECTOR, "#gateways tbody tr").get_attribute(
        "data-gateway") == HOSTILE_GW
    series = browser.find_element(By.CSS_SELECTOR, "#chart-buffer polyline")
    assert series.get_attribute("data-series") == HOSTILE_GW
    bar = browser.find_element(By.CSS_SELECTOR, "#chart-firmware rect[data-zone]")
    assert bar.get_attribute("data-zone") == HOSTILE_ZONE
    assert console_errors(browser) == []


def test_terminal_escape_sequences_from_the_store_are_not_printed(tmp_path, capsys):
    store = LocalStore(tmp_path / "store.sqlite")
    now = int(time.time())
    store.write([Reading("0001001a", "air", "spoorzone\x1b[2J\x07", "[bold]x[/bold]", 1,
                         now - 60, 60, {"uptime_s": 1.0}, status=True)])
    store.close()
    assert main(["fleet", "health", "--store", f"sqlite:{tmp_path / 'store.sqlite'}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "spoorzone\ufffd[2J" in out


def test_long_series_are_thinned_keeping_the_extremes():
    from gateway.provenance import StoredReading

    now = 1_800_000_000
    points = [StoredReading("gateway_health", {"gateway": "gw-a"}, now - 86400 + 10 * i,
                            {"buffer_readings": float(5000 if i == 4321 else i % 7)})
              for i in range(8640)]
    report = summarise(points, now, now - 86400)
    html = to_html(report)
    coords = re.search(r'data-series="gw-a" points="([^"]+)"', html).group(1).split()
    assert len(coords) <= 240
    assert min(float(c.split(",")[1]) for c in coords) == pytest.approx(10.0)  # the peak
    assert report.gateways[0]["buffer_readings_max"] == 5000


def test_a_web_server_that_is_not_victoriametrics_gets_one_line(tmp_path, capsys):
    import http.server
    import threading

    class NoExport(http.server.BaseHTTPRequestHandler):  # answers every GET with 501
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoExport)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["fleet", "health", "--store", url]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"store {url} answered HTTP 501" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_odd_values_in_the_store_are_shown_not_fatal():
    from gateway.provenance import StoredReading

    now = 1_800_000_000
    tags = {"zone": "spoorzone", "site": "spz-01", "node": "00010011", "kind": "air"}
    points = [
        StoredReading("node_status", tags, now - 20, {"uptime_s": float("nan"),
                                                      "reset_cause": float("inf"),
                                                      "firmware_version": -3.0}),
        StoredReading("node_status", tags, now - 10, {"reset_cause": 77.0,
                                                      "firmware_version": 10_000_000.0,
                                                      "free_heap_bytes": 1e30}),
        StoredReading("gateway_health", {"gateway": "gw-a"}, now, {"status": 9.0}),
        StoredReading("ota", {"node": "00010011"}, now, {"state": 99.0}),
        StoredReading("provenance", {"gateway": "gw-a"}, now, {"seq": 1.0}),  # no range
    ]
    report = summarise(points, now, now - 3600)
    node = report.nodes[0]
    assert node["firmware"] == "?10000000" and node["reset_causes"] == {"cause_77": 1}
    assert node["ota"]["state"] == "state_99" and node["gateway"] is None
    assert report.gateways[0]["status"] == "status_9"
    assert "?10000000" in to_html(report)


@pytest.mark.services
def test_a_running_gateway_fed_over_mqtt_by_simulated_nodes(mosquitto, tmp_path, capsys):
    """The whole path in real time: SimFleet's status frames published at QoS 1 to a real
    Mosquitto, a started gateway (its ingest thread, heartbeats every 0.2 s), its store."""
    from simulators.fleet import SimFleet
    from tests.fixtures.services import publish_qos1
    from tests.helpers import wait_until

    sim = SimFleet(seed=4, status_every=2)  # every other frame a status frame
    store = tmp_path / "store.sqlite"
    gw = Gateway(sim.keyring(), LocalStore(store), tmp_path / "gw", mosquitto.url,
                 client_id="health-e2e", gateway_id="gw-e2e", policy_path=PASSTHROUGH,
                 heartbeat_s=0.2, housekeeping_s=0.1)
    gw.start()
    try:
        assert gw.ingest.wait_connected(10)
        now = int(time.time())
        frames = [f for t in (now - 20, now - 10) for f in sim.tick(t)]
        publish_qos1(mosquitto.host, mosquitto.port, frames, client_id="health-e2e-nodes")
        wait_until(lambda: gw.stats.accepted == len(frames), 30, "the frames to be accepted")
        wait_until(lambda: gw.outbox.depth() == 0, 30, "the outbox to drain")
        # heartbeats are keyed by the second: wait for one from a second wholly after the
        # drain (earlier ones may show readings still buffered)
        drained_s = int(time.time())
        reader = LocalStore(store, create=False)
        wait_until(lambda: reader.points("gateway_health", "status", since_s=drained_s + 1),
                   10, "a heartbeat after the drain in the store")
        reader.close()
    finally:
        gw.stop(0)
    assert main(["fleet", "health", "--store", f"sqlite:{store}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["nodes"]) == 27
    assert {n["gateway"] for n in doc["nodes"]} == {"gw-e2e"}
    assert {n["firmware"] for n in doc["nodes"]} == {"0.1.0"}
    assert all(not n["stale"] and n["free_heap_bytes"] > 100_000 for n in doc["nodes"])
    [gateway] = doc["gateways"]
    assert gateway["gateway"] == "gw-e2e" and gateway["status"] == "ok"
    assert gateway["heartbeats"] >= 1 and gateway["nodes"] == 27
    assert gateway["buffer_readings"] == 0
    assert [z["nodes_seen"] for z in doc["zones"]] == [9, 9, 9]


def test_a_gateway_with_readings_but_no_heartbeat_and_a_clock_ahead(tmp_path):
    """A node whose batches a gateway signed, that gateway silent on heartbeats; another
    node whose clock runs ten minutes ahead."""
    sim = SimNode(load_placements()[0], SEED)
    store = tmp_path / "store.sqlite"
    gw = Gateway(Keyring([NodeEntry(sim.node_id, sim.placement.kind, sim.placement.zone,
                                    sim.placement.site, {0: sim.key})]),
                 LocalStore(store), tmp_path / "gw", gateway_id="gw-quiet",
                 policy_path=PASSTHROUGH)
    now = int(time.time())
    gw.process([Envelope("mqtt", sim.topic, sim.encode(
        {"uptime_s": 10, "free_heap_bytes": 100_000}, now + 600, 60, protocol.FLAG_STATUS),
        now + 600)])
    while gw.forwarder.drain_once():
        pass
    report = fleet_health(f"sqlite:{store}", 3600, now_s=now)
    [node] = report.nodes
    assert node["gateway"] == "gw-quiet" and node["age_s"] == 0 and not node["stale"]
    [row] = report.gateways
    assert row["gateway"] == "gw-quiet" and row["last_seen_s"] is None and row["stale"]
    assert row["heartbeats"] == 0 and row["nodes"] == 1
    assert 'data-gateway="gw-quiet" data-stale="true"><td>gw-quiet</td><td>never</td>' in \
        to_html(report)


def test_long_names_fold_but_numbers_are_never_cut_on_80_columns():
    import io

    from rich.console import Console

    from fleet.cli_health import print_tables
    from gateway.provenance import StoredReading

    now = 1_800_000_000
    points = []
    for i in range(3):
        gw = f"gw-spuiboulevard-{i:02d}"
        points += [
            StoredReading("gateway_health", {"gateway": gw}, now - 5,
                          {"buffer_readings": 1234567.0, "status": 1.0}),
            StoredReading("provenance", {"gateway": gw}, now - 5,
                          {"seq": 1000.0 + i, "first_s": now - 100.0, "last_s": now - 5.0}),
            StoredReading("node_status", {"zone": "spuiboulevard", "site": "spb-01",
                                          "node": f"000300{i:02x}", "kind": "crowd"},
                          now - 50, {"uptime_s": 0.0, "reset_cause": 3.0,
                                     "firmware_version": 121314.0, "free_heap_bytes": 123456.0,
                                     "error_count": 7654321.0, "dropped_frames": 99999.0,
                                     "batch": 1000.0 + i})]
    report = summarise(points, now, now - 86400)
    out = io.StringIO()
    print_tables(report, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    node_rows = [line for line in lines if line.startswith(" 000300")]
    assert len(node_rows) == 3
    assert all("12.13.14" in r and "99999" in r and r.rstrip().endswith("7654321")
               for r in node_rows)
    assert sum(line.count("1234567") for line in lines) == 6  # buffered and max, 3 gateways
