"""The audit checks one by one, each against clean input and against the violation it
exists for (issue 11's seeded violations), through the library and the command line.
No services: recordings come from the frame generator, stores and accountants from the
gateway's own LocalStore, Anonymiser and EpsilonAccountant."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from audit import manifest as mf
from audit.store import audit_store
from audit.traffic import audit_traffic
from dordt.cli import main
from firmware import metrics, protocol
from gateway.anonymise import (
    Anonymiser,
    EpsilonAccountant,
    Policy,
    default_policy_path,
    load_policy,
)
from gateway.forward.local import LocalStore
from gateway.model import Reading
from simulators.framegen import FrameGenerator
from simulators.recording import Message, write_recording

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_790_000_000 // 3600 * 3600
M = metrics.BY_NAME


@pytest.fixture(scope="module")
def gen():
    return FrameGenerator(seed=7, cadence_s=60, status_every=10)


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["audit", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out + out.err


def node_of(gen, kind):
    return next(n for n in gen.nodes if n.placement.kind == kind)


def frame(node, t, pairs, window_s=60, counter=None):
    return protocol.encode(node.key, metrics.KIND_IDS[node.placement.kind],
                           node.placement.node_id, counter if counter is not None else t, t,
                           window_s, pairs)


def policy_from(text: str, tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


POLICY_NOISE = """version = 1
[defaults]
crowd_min_count = 5
crowd_noise_epsilon = 0.0
daily_epsilon_budget = 0.0
crowd_time_resolution_s = 60
noise_time_resolution_s = 0
[zones.maasterras]
crowd_noise_epsilon = 1.0
daily_epsilon_budget = 10.0
"""


# -- manifest -----------------------------------------------------------------------------------


def test_the_committed_manifest_matches_the_code(capsys):
    assert mf.compare(mf.load_manifest(), mf.build_manifest()).ok, \
        "firmware changed: review, then `dordt audit manifest --out audit/manifest.json`"
    code, out = run(capsys, "manifest", "--check")
    assert code == 0 and "manifest: all holds" in out


def test_the_manifest_lists_each_kinds_metrics_window_and_what_never_leaves(capsys):
    m = mf.build_manifest()
    crowd = m["kinds"]["crowd"]
    assert [r["name"] for r in crowd["metrics"]] == [
        "crowd_count", *(f"rssi_bin_{i}" for i in range(5)), "crowd_faults"]
    assert crowd["window"] == {"setting": "window_s", "default_s": 60, "min_s": 10,
                               "max_s": 3600, "fault_mask": 0x07,
                               "source": "firmware/measure/crowd.py"}
    assert any("hash" in line for line in crowd["never_leaves"])
    assert m["kinds"]["noise"]["window"]["min_s"] == 1
    assert {r["name"] for r in m["status"]["metrics"]} >= {"uptime_s", "firmware_version"}
    assert len(m["firmware_sha256"]) == 64
    code, out = run(capsys, "manifest", "--markdown")
    assert code == 0 and "| 0x60 | `crowd_count` | devices | 1 | 0 .. 65535 |" in out


def test_a_firmware_change_that_adds_a_metric_makes_the_manifest_stale(tmp_path, capsys):
    firmware = tmp_path / "firmware"
    shutil.copytree(ROOT / "firmware", firmware,
                    ignore=shutil.ignore_patterns("__pycache__"))
    reg = firmware / "metrics.py"
    row = "0x66 crowd_faults        bitmask  0   0      65535       crowd\n"
    assert row in reg.read_text()
    reg.write_text(reg.read_text().replace(
        row, row + "0x67 device_tag          hash     0   0      65535       crowd\n"))
    result = mf.compare(mf.load_manifest(), mf.build_manifest(firmware))
    text = "\n".join(f.message for f in result.findings)
    assert "no longer matches the code" in text and "firmware/metrics.py" in text
    assert "crowd nodes can now emit a metric the approved manifest does not list: " \
           "device_tag" in text
    code, out = run(capsys, "manifest", "--firmware", firmware, "--check")
    assert code == 1 and "device_tag" in out
    code, out = run(capsys, "manifest", "--firmware", tmp_path / "nowhere", "--check")
    assert code == 2 and "no such firmware folder" in out


# -- traffic ------------------------------------------------------------------------------------


def test_a_clean_hour_of_all_three_zones_passes_the_traffic_audit(gen, tmp_path, capsys):
    path = tmp_path / "hour.dordtrec"
    write_recording(path, gen.messages(T0, T0 + 3600), {"source": "test"}, gen.topics)
    keyring = tmp_path / "keyring.json"
    gen.keyring().save(keyring)
    code, out = run(capsys, "traffic", path, "--keyring", keyring)
    assert code == 0, out
    assert "traffic: all holds (frames 1782, nodes 27" in out  # 60 windows x 27 + status


def _violations(gen):
    crowd, noise = node_of(gen, "crowd"), node_of(gen, "noise")
    bins = [(M[f"rssi_bin_{i}"].id, 2) for i in range(5)]
    ok_crowd = [(M["crowd_count"].id, 10), *bins, (M["crowd_faults"].id, 0)]
    band = M["band_1000hz_db"].id
    return {
        "extra metric": ([Message(T0 * 1000, crowd.topic, frame(crowd, T0, [
            *ok_crowd, (0x67, 12345)]))],
            "sent metric 0x67, which the manifest does not allow in a crowd frame"),
        "metric of another kind": ([Message(T0 * 1000, crowd.topic, frame(crowd, T0, [
            *ok_crowd, (M["laeq_db"].id, 500)]))], "laeq_db (0x20), which the manifest"),
        "hash-like value": ([Message(T0 * 1000, crowd.topic, frame(crowd, T0, [
            (M["crowd_count"].id, 0xBEEF), *bins, (M["crowd_faults"].id, 0)]))],
            "could carry an identifier"),
        "bands every 100 ms": ([Message(T0 * 1000 + 100 * i, noise.topic, frame(
            noise, T0, [(M["laeq_db"].id, 600), (band, 550)], window_s=0, counter=T0 + i))
            for i in range(10)], "band levels must cover at least 1 s"),
        "short crowd windows": ([Message(T0 * 1000, crowd.topic, frame(crowd, T0, ok_crowd,
                                                                       window_s=10))],
                                "counted over 10 s windows, shorter than the 60 s"),
        "garbage payload": ([Message(T0 * 1000, crowd.topic, b"\x01" + bytes(60))],
                            "not a well-formed frame"),
    }


@pytest.mark.parametrize("case", ["extra metric", "metric of another kind", "hash-like value",
                                  "bands every 100 ms", "short crowd windows",
                                  "garbage payload"])
def test_seeded_traffic_violations_fail_naming_frame_node_and_cause(gen, tmp_path, capsys,
                                                                    case):
    messages, cause = _violations(gen)[case]
    clean = list(gen.messages(T0 - 600, T0 - 60))
    path = tmp_path / "bad.dordtrec"
    write_recording(path, clean + messages, {"source": "test"}, gen.topics)
    code, out = run(capsys, "traffic", path)
    assert code == 1
    assert cause in out
    node = protocol.node_name(protocol.decode(messages[0].payload).node_id) \
        if case != "garbage payload" else messages[0].topic.split("/")[3]
    assert f"frame {len(clean)}: " in out or f"frame {len(clean) + 1}: " in out
    assert node in out


def test_band_levels_every_second_pass_even_when_delivered_back_to_back(gen):
    noise = node_of(gen, "noise")
    band = M["band_1000hz_db"].id
    # a node emptying its ring buffer: 1 s windows, all arriving in the same millisecond
    messages = [Message(T0 * 1000, noise.topic, frame(
        noise, T0 + i, [(M["laeq_db"].id, 600), (band, 550)], window_s=1)) for i in range(30)]
    result = audit_traffic(messages, mf.load_manifest(), load_policy(default_policy_path()))
    assert result.ok, result.lines()
    twice = messages + [Message(T0 * 1000, noise.topic, frame(
        noise, T0 + 29, [(M["laeq_db"].id, 600), (band, 551)], window_s=1, counter=T0 + 99))]
    result = audit_traffic(twice, mf.load_manifest(), load_policy(default_policy_path()))
    assert "sent band levels for the same second twice" in result.findings[0].message


def test_bad_input_exits_2_with_a_sentence(tmp_path, capsys):
    not_a_recording = tmp_path / "x.dordtrec"
    not_a_recording.write_text("hello")
    bad_toml = tmp_path / "audit.toml"
    bad_toml.write_text("[legal]\nbasis = 1\n")
    for argv, says in [
        (("traffic", tmp_path / "missing.dordtrec"), "no such recording"),
        (("traffic", not_a_recording), "not a readable recording"),
        (("store", tmp_path / "nowhere"), "no such gateway data directory"),
        (("store", tmp_path, "--store", "ftp://x"), "give sqlite:PATH or http://HOST:PORT"),
        (("store", tmp_path, "--config", bad_toml), "[legal] is not an audit.toml table"),
        (("registers", "--keyring", tmp_path / "none.json"), "none.json"),
        (("store", tmp_path, "--policy", tmp_path / "none.toml"), "none.toml"),
    ]:
        code, out = run(capsys, *argv)
        assert code == 2, (argv, out)
        assert says in out and "Traceback" not in out


# -- store ---------------------------------------------------------------------------------------


def crowd_reading(gen, t, count, zone=None, bins=None):
    node = node_of(gen, "crowd")
    p = node.placement
    fields = {"crowd_count": float(count), "crowd_faults": 0.0}
    for i, b in enumerate(bins or [0, 0, count, 0, 0]):
        fields[f"rssi_bin_{i}"] = float(b)
    return Reading(protocol.node_name(p.node_id), "crowd", zone or p.zone, p.site, t, t, 60,
                   fields)


def test_a_gateway_log_line_with_a_phones_ble_address_fails_the_store_audit(tmp_path, capsys):
    data = tmp_path / "gw"
    data.mkdir()
    log = data / "gateway.log"
    log.write_text(
        json.dumps({"time": "2026-12-04T10:00:00Z", "level": "info", "logger": "dordt.gateway",
                    "message": "connected to broker 127.0.0.1:1883"}) + "\n"
        + json.dumps({"time": "2026-12-04T10:00:01Z", "level": "debug", "logger": "x",
                      "message": "heard 4C:57:A9:12:EF:03 at -71 dBm"}) + "\n")
    code, out = run(capsys, "store", data)
    assert code == 1
    assert "gateway.log line 2 holds something shaped like a MAC or BLE address" in out
    assert "4C:57:A9:12:EF:03" not in out  # the report does not leak it again
    log.write_text(log.read_text().splitlines()[0] + "\n")
    code, out = run(capsys, "store", data)
    assert code == 0, out


def test_a_hash_in_a_file_or_a_watched_address_in_any_form_is_found(tmp_path):
    import hashlib

    data = tmp_path / "gw"
    data.mkdir()
    addr = bytes.fromhex("d2a1b3c4e5f6")
    policy = load_policy(default_policy_path())
    (data / "notes.txt").write_text("seen " + hashlib.sha256(b"x").hexdigest()[:16] + "\n")
    assert "16-digit hex value" in audit_store(data, None, policy).findings[0].message
    (data / "notes.txt").write_text("nothing here\n")
    watch = ["D2:A1:B3:C4:E5:F6"]
    assert audit_store(data, None, policy, watch=watch).ok
    for form in (addr[::-1].hex(), hashlib.sha1(addr).hexdigest()[:16],
                 hashlib.sha256(b"D2:A1:B3:C4:E5:F6").hexdigest()):
        (data / "state.bin").write_bytes(b"\x00k=" + form.encode())
        found = audit_store(data, None, policy, watch=watch)
        assert any("non-fleet radio address" in f.message for f in found.findings), form
    (data / "state.bin").write_bytes(b"\x00\x01" + addr + b"\x02")
    assert not audit_store(data, None, policy, watch=watch).ok


def test_a_policy_that_releases_a_crowd_count_of_3_fails(gen, tmp_path, capsys):
    lenient = policy_from(POLICY_NOISE.replace("crowd_min_count = 5", "crowd_min_count = 3")
                          .split("[zones")[0], tmp_path)
    policy = load_policy(lenient)
    store = LocalStore(tmp_path / "store.sqlite")
    anonymiser = Anonymiser(policy)
    store.write(anonymiser.apply([crowd_reading(gen, T0 + 60 * i, c, bins=[0, 0, c, 0, 0])
                                  for i, c in enumerate([0, 3, 12])]))
    store.close()
    data = tmp_path / "gw"
    data.mkdir()
    code, out = run(capsys, "store", data, "--store", f"sqlite:{tmp_path / 'store.sqlite'}",
                    "--policy", lenient)
    assert code == 1
    assert "released crowd_count 3 at" in out and "below k = 5" in out
    assert "release crowd counts from 3 devices; the required minimum is k = 5" in out
    # the shipped policy withholds the same count, and the audit agrees
    store2 = LocalStore(tmp_path / "store2.sqlite")
    store2.write(Anonymiser(load_policy(default_policy_path())).apply(
        [crowd_reading(gen, T0 + 60 * i, c) for i, c in enumerate([0, 3, 12])]))
    store2.close()
    code, out = run(capsys, "store", data, "--store", f"sqlite:{tmp_path / 'store2.sqlite'}")
    assert code == 0, out


def test_an_overspent_epsilon_budget_fails(gen, tmp_path, capsys):
    policy_path = policy_from(POLICY_NOISE, tmp_path)
    policy = load_policy(policy_path)
    data = tmp_path / "gw"
    data.mkdir()
    node = protocol.node_name(node_of(gen, "crowd").placement.node_id)
    day = T0 // 86400
    acct = EpsilonAccountant(data / "privacy.sqlite")
    acct.reserve([(node, day, Fraction(1), Fraction(10))] * 8)  # within budget: 8 of 10
    acct.close()
    zone = "maasterras"
    store = LocalStore(tmp_path / "s.sqlite")
    store.write([crowd_reading(gen, T0 + 60 * i, 20, zone) for i in range(8)])
    store.close()
    spec = f"sqlite:{tmp_path / 's.sqlite'}"
    code, out = run(capsys, "store", data, "--store", spec, "--policy", policy_path)
    assert code == 0, out
    acct = EpsilonAccountant(data / "privacy.sqlite")
    acct.reserve([(node, day, Fraction(1), Fraction(1000))] * 7)  # a budget not the policy's
    acct.close()
    code, out = run(capsys, "store", data, "--store", spec, "--policy", policy_path)
    assert code == 1
    assert f"node {node} spent epsilon 15 on" in out and "over its daily budget of 10" in out
    # released counts the accountant never paid for: noise was not drawn
    store = LocalStore(tmp_path / "s.sqlite")
    store.write([crowd_reading(gen, T0 + 86400 + 60 * i, 20, zone) for i in range(3)])
    store.close()
    code, out = run(capsys, "store", data, "--store", spec, "--policy", policy_path)
    assert "noise was not drawn for every release" in out
    assert isinstance(policy, Policy)


def test_batches_made_under_another_policy_are_named(tmp_path):
    data = tmp_path / "gw"
    data.mkdir()
    rec = {"gateway": "g", "seq": 4, "policy_version": 1, "policy_hash": "ab" * 32,
           "digest": "cd" * 32, "signature": "ef" * 64}
    (data / "audit.log").write_text(json.dumps({"at_s": 1.0, "record": rec,
                                                "prev": "0" * 64}) + "\n")
    result = audit_store(data, None, load_policy(default_policy_path()))
    assert [f.message for f in result.findings] == [
        "1 batches (seq 4..4) were anonymised under policy 1/abababababab, not under the "
        f"policy given ({load_policy(default_policy_path()).id}): audit them with that "
        "policy file"]


def test_traffic_audit_runs_on_messages_in_memory(gen):
    result = audit_traffic(gen.messages(T0, T0 + 600), mf.load_manifest(),
                           load_policy(default_policy_path()), gen.keyring())
    assert result.ok and result.figures["nodes"] == 27


@pytest.mark.services
def test_an_http_time_series_store_is_audited_too(gen, victoriametrics_factory, tmp_path):
    from gateway.forward.influx import InfluxStore

    vm = victoriametrics_factory()
    t = (int(__import__("time").time()) // 3600 - 2) * 3600  # inside the store's retention
    policy = load_policy(default_policy_path())
    store = InfluxStore(vm.url)
    store.write(Anonymiser(policy).apply([crowd_reading(gen, t + 60 * i, c)
                                          for i, c in enumerate([0, 3, 12, 40])]))
    vm.flush()
    result = audit_store(None, vm.url, policy)
    assert result.ok, result.lines()
    assert result.figures["crowd_points"] == 4
    store.write([crowd_reading(gen, t + 600, 3)])  # a count the policy never released
    store.close()
    vm.flush()
    result = audit_store(None, vm.url, policy)
    assert [f.message.split(" at ")[0] for f in result.findings] == [
        f"node {protocol.node_name(node_of(gen, 'crowd').placement.node_id)} released "
        "crowd_count 3", f"node {protocol.node_name(node_of(gen, 'crowd').placement.node_id)}"
        " released rssi_bin_2 = 3"]
