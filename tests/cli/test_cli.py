"""The `dordt` command line as a user runs it: real processes, real output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fleet.keyring import Keyring

ZONES = ("spoorzone", "maasterras", "spuiboulevard")
KINDS = ("air", "noise", "crowd")


def dordt(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dordt.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_demo_stored_everything(out: str, data_dir):
    line = next(x for x in out.splitlines() if x.startswith("rejected by reason: "))
    reasons = dict(part.split() for part in line.removeprefix("rejected by reason: ").split(", "))
    assert set(reasons) == {"bad_tag", "replay", "truncated", "unknown_node"}
    assert len(set(reasons.values())) == 1  # one of each per faulty round
    q = dordt("gateway", "query", "--store", str(data_dir / "store.sqlite"), "--json")
    assert q.returncode == 0, q.stderr
    rows = [json.loads(line) for line in q.stdout.splitlines()]
    assert {(r["zone"], r["kind"]) for r in rows} == {(z, k) for z in ZONES for k in KINDS}
    assert len({r["node"] for r in rows}) == 27


def test_demo_on_embedded_defaults(tmp_path):
    r = dordt("demo", "--duration", "5", "--interval", "1", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    for zone in ZONES:
        assert zone in r.stdout
    assert "gateway query --store" in r.stdout
    assert_demo_stored_everything(r.stdout, tmp_path)


@pytest.mark.services
def test_demo_on_real_broker_and_store(tmp_path, mosquitto, victoriametrics_factory):
    vm = victoriametrics_factory()
    r = dordt("demo", "--duration", "4", "--interval", "1", "--data-dir", str(tmp_path),
              "--broker", mosquitto.url, "--store", vm.url)
    assert r.returncode == 0, r.stdout + r.stderr
    series = vm.export('{__name__=~"(air|noise|crowd)_.*"}')
    assert {(s["metric"]["zone"], s["metric"]["kind"]) for s in series} == {
        (z, k) for z in ZONES for k in KINDS}


def test_gateway_and_sim_commands_against_mosquitto(tmp_path, mosquitto):
    ring = tmp_path / "keyring.json"
    store = tmp_path / "store.sqlite"
    gw = dordt("gateway", "run", "--broker", mosquitto.url, "--keyring", str(ring),
               "--store", f"sqlite:{store}", "--data-dir", str(tmp_path / "gw"),
               "--duration", "1")
    err = gw.stderr
    assert gw.returncode == 2 and "keyring not found" in err and "Traceback" not in err
    sim = dordt("sim", "run", "--broker", mosquitto.url, "--duration", "0.5", "--interval",
                "1", "--keyring-out", str(ring))
    assert sim.returncode == 0, sim.stderr
    assert len(Keyring.load(ring)) == 27
    # the broker kept nothing for a gateway session that did not exist yet; publish again
    gw = subprocess.Popen(
        [sys.executable, "-m", "dordt.cli", "gateway", "run", "--broker", mosquitto.url,
         "--keyring", str(ring), "--store", f"sqlite:{store}", "--data-dir",
         str(tmp_path / "gw"), "--duration", "6"], stdout=subprocess.PIPE, text=True)
    assert gw.stdout.readline().startswith("gateway: 27 nodes")
    sim = dordt("sim", "run", "--broker", mosquitto.url, "--duration", "0.5", "--interval",
                "1", "--seed", "1")
    assert sim.returncode == 0
    out, _ = gw.communicate(timeout=60)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["accepted"] == 27 and stats["rejected"] == {}


def test_bad_arguments_say_what_to_do():
    r = dordt("demo", "--duration", "0")
    assert r.returncode == 2 and "dordt: --duration 0" in r.stderr
    r = dordt("fleet", "enrol", "--keyring", "/tmp/x.json", "--node", "XYZ", "--kind", "air",
              "--zone", "z", "--site", "s")
    assert r.returncode == 2 and "8 lower-case hex digits" in r.stderr
    r = dordt("fleet", "enrol", "--keyring", "/tmp/x.json", "--node", "0001001a", "--kind",
              "air", "--zone", "rotterdam", "--site", "nowhere")
    assert r.returncode == 2 and "zone 'rotterdam' is not in the zones file" in r.stderr
    r = dordt("fleet", "enrol", "--keyring", "/tmp/x.json", "--node", "0001001a", "--kind",
              "air", "--zone", "spoorzone", "--site", "spz-1")
    assert r.returncode == 2 and "Did you mean 'spz-01'?" in r.stderr


def test_fleet_commands_never_print_keys(tmp_path):
    ring = tmp_path / "k.json"
    assert dordt("fleet", "enrol", "--keyring", str(ring), "--node", "0001001a", "--kind",
                 "air", "--zone", "spoorzone", "--site", "spz-01").returncode == 0
    key = Keyring.load(ring).get(0x0001001A).keys[0].hex()
    ls = dordt("fleet", "list", "--keyring", str(ring))
    assert "0001001a" in ls.stdout and key not in ls.stdout + ls.stderr
    assert dordt("fleet", "revoke", "--keyring", str(ring), "--node", "0001001a").returncode == 0
    assert Keyring.load(ring).get(0x0001001A).revoked
