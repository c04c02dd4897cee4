"""A simulated day of all three zones through a real Mosquitto into a real gateway, then
`dordt audit report` over everything it wrote: every requirement passes, the page renders
in headless chromium, the register exports validate and hold no secret, and a seeded
violation in a copy of the gateway's files fails exactly its requirement."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from audit.registers import ALGORITHM_FIELDS, SENSOR_FIELDS, validate
from dordt.cli import main
from gateway.forward.local import LocalStore
from gateway.logs import JsonFormatter
from gateway.pipeline import Gateway
from simulators import framegen
from simulators.recording import RecordingReader, RecordingWriter
from simulators.replay import BrokerRecorder, MqttPublisher, Replayer
from tests.fixtures.services import Mosquitto
from tests.helpers import wait_until

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
# The shipped defaults, with noise and an epsilon budget on in one zone so the accountant
# and the budget checks have something to recompute.
POLICY = """version = 1
[defaults]
crowd_min_count = 5
crowd_noise_epsilon = 0.0
daily_epsilon_budget = 0.0
crowd_time_resolution_s = 60
noise_time_resolution_s = 0
[zones.maasterras]
crowd_min_count = 10
crowd_noise_epsilon = 0.5
daily_epsilon_budget = 200.0
"""
AUDIT_TOML = (ROOT / "audit" / "audit.sample.toml").read_text().replace(
    '# legal_basis = "..."      # the public task',
    'legal_basis = "Gemeentewet art. 160 (test value)"  # the public task').replace(
    '# dpia = "..."', 'dpia = "DPIA 2026-04 (test value)"').replace(
    '# legal_basis = "..."', 'legal_basis = "Gemeentewet art. 160 (test value)"')


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-day")
    broker = Mosquitto(root / "mosquitto")
    broker.start()
    gen = framegen.FrameGenerator(seed=11, cadence_s=60, status_every=10)
    start = (int(time.time()) // 86400 - 1) * 86400  # yesterday, UTC: inside buffer max age
    recording = root / "day.dordtrec"
    count = framegen.record(gen, recording, start, start + 86400)
    keyring = root / "keyring.json"
    gen.keyring().save(keyring)
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    config = root / "audit.toml"
    config.write_text(AUDIT_TOML)
    log_path = root / "gateway.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    rootlog = logging.getLogger()
    old_level = rootlog.level
    rootlog.addHandler(handler)
    rootlog.setLevel(logging.DEBUG)  # every line the gateway could log
    data = root / "gw"
    store = root / "store.sqlite"
    gateway = Gateway(gen.keyring(), LocalStore(store), data, broker.url,
                      client_id="audit-day-gateway", policy_path=policy,
                      heartbeat_s=1.0)  # its health points reach the store too
    capture = root / "capture.dordtrec"  # what `dordt sim record --broker` captures
    recorder = BrokerRecorder(broker.url, RecordingWriter(capture, {"source": "broker"}),
                              client_id="audit-day-capture")
    assert recorder.start(10)
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        t = time.perf_counter()
        Replayer(MqttPublisher(broker.url, client_id="audit-day-replay")).run(
            RecordingReader(recording))
        wait_until(lambda: gateway.stats.accepted == count, 120, "the day to be accepted")
        wait_until(lambda: gateway.outbox.depth() == 0, 60, "the outbox to drain")
        through_s = time.perf_counter() - t
        recorder.run(30, max_messages=count)
    finally:
        recorder.close()
        gateway.stop()
        rootlog.removeHandler(handler)
        rootlog.setLevel(old_level)
        handler.close()
        broker.stop()
    yield SimpleNamespace(root=root, gen=gen, recording=recording, capture=capture,
                          keyring=keyring,
                          policy=policy, config=config, log=log_path, data=data, store=store,
                          frames=count, through_s=through_s)


def report_args(day, data=None, log=None, out=None, trials=200):
    return ["audit", "report", "--data-dir", str(data or day.data),
            "--store", f"sqlite:{day.store}", "--recording", str(day.recording),
            "--keyring", str(day.keyring), "--policy", str(day.policy),
            "--config", str(day.config), "--log", str(log or day.log), "--trials", str(trials),
            "--out", str(out or day.root / "report.html")]


@pytest.fixture(scope="module")
def day_report(day):
    """`dordt audit report` over the day, once: (exit code, printed lines, page)."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(report_args(day))
    return code, printed.getvalue(), day.root / "report.html"


def test_a_simulated_day_of_three_zones_passes_every_requirement(day, day_report):
    code, out, _page = day_report
    report = json.loads((day.root / "report.json").read_text())
    failing = [r for r in report["requirements"] if r["status"] != "pass"]
    assert code == 0 and not failing, (out, failing)
    assert len(report["requirements"]) == 13
    checks = report["checks"]
    assert checks["traffic"]["figures"]["frames"] == day.frames
    assert checks["store"]["figures"]["store_points"] > 0
    assert sqlite3.connect(day.store).execute(
        "SELECT count(*) FROM points WHERE measurement = 'gateway_health'").fetchone()[0] > 0
    # the day exercised what the requirements are about
    supp = report["charts"]["suppression"]
    assert set(supp) == {"spoorzone", "maasterras", "spuiboulevard"}
    assert any("small_count" in d for z in supp.values() for d in z.values())
    assert report["charts"]["epsilon_max_per_node"]["maasterras"]
    assert all(v <= 200 for v in report["charts"]["epsilon_max_per_node"]["maasterras"]
               .values())
    print(f"day through the gateway: {day.frames} frames in {day.through_s:.1f} s")


def test_a_capture_from_the_broker_passes_the_traffic_audit(day, capsys):
    code = main(["audit", "traffic", str(day.capture), "--keyring", str(day.keyring),
                 "--policy", str(day.policy)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"traffic: all holds (frames {day.frames}, nodes 27" in out
    # the seeded counterpart: a crowd frame with an extra metric among the captured ones
    from audit.manifest import load_manifest
    from audit.traffic import audit_traffic, open_recording
    from firmware import protocol
    from gateway.anonymise import load_policy
    from simulators.recording import Message

    node = next(n for n in day.gen.nodes if n.placement.kind == "crowd")
    extra = protocol.encode(node.key, 3, node.placement.node_id, 1, 1, 60,
                            [(0x60, 9), (0x67, 4242)])
    messages = [*open_recording(day.capture), Message(0, node.topic, extra)]
    result = audit_traffic(messages, load_manifest(), load_policy(day.policy))
    assert [f.where for f in result.findings] == [f"frame {day.frames}"]


def test_the_report_renders_in_headless_chromium_with_every_result(day_report, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.fixtures.browser import chromium_driver, console_errors

    page = day_report[2]
    with chromium_driver(tmp_path / "profile") as driver:
        driver.get(page.as_uri())
        assert driver.title == "Dordt privacy audit"
        assert "Every requirement holds: 13 of 13 pass" in driver.find_element(
            By.ID, "verdict").text
        rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 13
        assert {r.get_attribute("data-status") for r in rows} == {"pass"}
        for row in rows:
            assert row.find_element(By.TAG_NAME, "td").is_displayed()
            assert row.find_element(By.TAG_NAME, "td").text == "PASS"
        # the evidence is one click away
        row = driver.find_element(By.ID, "req-unlinkable")
        row.find_element(By.TAG_NAME, "summary").click()
        assert "attacker accuracy" in row.find_element(By.TAG_NAME, "details").text
        charts = driver.find_elements(By.CSS_SELECTOR, "figure svg")
        assert len(charts) == 2 and all(c.size["width"] > 100 for c in charts)
        assert console_errors(driver) == []


def test_a_ble_address_in_a_copy_of_the_gateway_log_fails_only_that_requirement(day, tmp_path,
                                                                                capsys):
    log = tmp_path / "gateway.log"
    log.write_text(day.log.read_text() + json.dumps(
        {"time": "2026-12-04T10:00:00Z", "level": "debug", "logger": "dordt.gateway.ble",
         "message": "foreign advertisement from 5A:10:C3:77:0B:E2"}) + "\n")
    code = main(report_args(day, log=log, out=tmp_path / "r.html", trials=20))
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1
    failing = {r["id"]: r for r in report["requirements"] if r["status"] != "pass"}
    assert list(failing) == ["no-identifier-at-gateway"]
    assert "shaped like a MAC or BLE address" in failing["no-identifier-at-gateway"][
        "findings"][0]["message"]
    assert "5A:10:C3:77:0B:E2" not in out + (tmp_path / "r.html").read_text()


def test_register_exports_validate_and_hold_no_key_or_secret(day, tmp_path, capsys):
    code = main(["audit", "registers", "--keyring", str(day.keyring), "--policy",
                 str(day.policy), "--config", str(day.config), "--out-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    doc = json.loads((tmp_path / "registers.json").read_text())
    assert validate(doc) == []
    assert [set(e) >= set(ALGORITHM_FIELDS) for e in doc["algorithm_register"]] == [True] * 2
    assert len(doc["sensor_register"]) == 27
    assert all(set(e) >= set(SENSOR_FIELDS) for e in doc["sensor_register"])
    spz = next(e for e in doc["sensor_register"] if e["site"] == "spz-01")
    assert spz["location_rd_new"]["x"] == pytest.approx(105443, abs=2)
    assert spz["location_rd_new"]["y"] == pytest.approx(424797, abs=2)
    exported = (tmp_path / "registers.json").read_text() + (tmp_path / "registers.md").read_text()
    secrets = [k.hex() for e in day.gen.keyring() for k in e.keys.values()]
    secrets += [(day.data / "gateway.key").read_text().splitlines()[1]]
    assert not [s for s in secrets if s in exported or s.upper() in exported]
    # a field the officer has not decided on is reported, never invented
    bare = tmp_path / "bare.toml"
    bare.write_text("[organisation]\norganisation = \"Gemeente Dordrecht\"\n")
    code = main(["audit", "registers", "--keyring", str(day.keyring), "--config", str(bare),
                 "--out-dir", str(tmp_path / "bare")])
    out = capsys.readouterr().out
    assert code == 1
    assert "algorithm register (crowd): legal_basis" in out and "is missing" in out
    md = (tmp_path / "bare" / "registers.md").read_text()
    assert "**legal basis**: **MISSING" in md
    doc = json.loads((tmp_path / "bare" / "registers.json").read_text())
    assert doc["algorithm_register"][0]["legal_basis"] is None


def test_each_seeded_violation_fails_the_report_naming_its_cause(day, tmp_path, capsys):
    """All of issue 11's seeded violations in one copy of the day, each in a different
    requirement: exactly those requirements fail, each with its cause."""
    from fractions import Fraction

    from firmware import metrics, protocol
    from gateway.anonymise import EpsilonAccountant
    from gateway.model import Reading
    from simulators.recording import Message, write_recording

    gen, M = day.gen, metrics.BY_NAME
    crowd = next(n for n in gen.nodes if n.placement.kind == "crowd"
                 and n.placement.zone == "spoorzone")
    noise = next(n for n in gen.nodes if n.placement.kind == "noise")
    last = max(m.t_ms for m in RecordingReader(day.recording)) // 1000
    bins = [(M[f"rssi_bin_{i}"].id, 2) for i in range(5)]

    def frame(node, t, pairs, window_s=60):
        return protocol.encode(node.key, metrics.KIND_IDS[node.placement.kind],
                               node.placement.node_id, 2 * t, t, window_s, pairs)

    seeded = [  # a firmware change: an extra metric; a hash in a count; bands every 100 ms
        Message(last * 1000 + 1, crowd.topic, frame(crowd, last + 1, [
            (M["crowd_count"].id, 10), *bins, (M["crowd_faults"].id, 0), (0x67, 31337)])),
        Message(last * 1000 + 2, crowd.topic, frame(crowd, last + 2, [
            (M["crowd_count"].id, 0xBEEF), *bins, (M["crowd_faults"].id, 0)])),
        *(Message(last * 1000 + 100 * i, noise.topic, frame(noise, last + 3, [
            (M["laeq_db"].id, 600), (M["band_1000hz_db"].id, 550)], window_s=0))
          for i in range(10)),
    ]
    recording = tmp_path / "seeded.dordtrec"
    write_recording(recording, [*RecordingReader(day.recording), *seeded], {}, gen.topics)
    data = tmp_path / "gw"
    shutil.copytree(day.data, data)
    store = tmp_path / "store.sqlite"
    shutil.copy(day.store, store)
    # a released crowd count of 3 (what a policy with k = 3 lets through)
    local = LocalStore(store)
    node = protocol.node_name(crowd.placement.node_id)
    local.write([Reading(node, "crowd", "spoorzone", crowd.placement.site, 1, last + 60, 60,
                         {"crowd_count": 3.0, "rssi_bin_2": 3.0, "crowd_faults": 0.0})])
    local.close()
    # an overspent budget: a maasterras node charged past the zone's 200
    spender = next(n for n in gen.nodes if n.placement.kind == "crowd"
                   and n.placement.zone == "maasterras")
    acct = EpsilonAccountant(data / "privacy.sqlite")
    acct.reserve([(protocol.node_name(spender.placement.node_id), last // 86400 - 1,
                   Fraction(250), Fraction(10_000))])
    acct.close()
    # a gateway log line with a phone's BLE address
    log = tmp_path / "gateway.log"
    log.write_text(day.log.read_text() + json.dumps({"level": "debug", "message":
                                                     "adv from 6E:21:9B:40:C8:17"}) + "\n")
    # a manifest that no longer matches the code
    manifest = json.loads((ROOT / "audit" / "manifest.json").read_text())
    manifest["firmware_files"]["measure/crowd.py"] = "0" * 64
    manifest["firmware_sha256"] = "f" * 64
    stale = tmp_path / "manifest.json"
    stale.write_text(json.dumps(manifest))

    args = ["audit", "report", "--data-dir", str(data), "--store", f"sqlite:{store}",
            "--recording", str(recording), "--keyring", str(day.keyring), "--policy",
            str(day.policy), "--config", str(day.config), "--log", str(log), "--manifest",
            str(stale), "--trials", "20", "--out", str(tmp_path / "r.html")]
    assert main(args) == 1
    capsys.readouterr()
    report = json.loads((tmp_path / "r.json").read_text())
    failing = {r["id"]: " ".join(f["message"] for f in r["findings"])
               for r in report["requirements"] if r["status"] != "pass"}
    causes = {
        "manifest-current": "no longer matches the code (changed: firmware/measure/crowd.py",
        "only-manifest-metrics": "sent metric 0x67, which the manifest does not allow",
        "no-identifier-in-traffic": "crowd_count 48879, more than its hash table can hold",
        "band-levels-1s": "band levels over a 0 s window",
        "no-identifier-at-gateway": "gateway.log line",
        "small-counts-withheld": f"node {node} released crowd_count 3 at",
        "epsilon-within-budget": "over its daily budget of 200",
    }
    assert set(failing) == set(causes), failing
    for rid, cause in causes.items():
        assert cause in failing[rid], (rid, failing[rid])
    assert "6E:21:9B:40:C8:17" not in (tmp_path / "r.html").read_text()
