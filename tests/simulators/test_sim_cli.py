"""`dordt sim ...` as a user runs it: record, inspect, replay, faults, plot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleet.keyring import Keyring
from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from simulators.faults import FAULTS
from simulators.recording import RecordingReader


def dordt(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dordt.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def new_year(tmp_path_factory):
    """New Year's night, recorded by the command line, with its keyring."""
    d = tmp_path_factory.mktemp("cli")
    r = dordt("sim", "record", str(d / "ny.rec"), "--start", "2025-12-31T22:00", "--hours",
              "4", "--cadence", "60", "--keyring-out", str(d / "keys.json"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "recorded 6588 frames of 27 nodes" in r.stdout  # 240 windows × 27 + status
    return d


def test_faults_lists_every_fault_with_its_parameters():
    r = dordt("sim", "faults")
    assert r.returncode == 0
    for name in FAULTS:
        assert f"\n{name}: " in r.stdout
    assert "delay_s=30.0" in r.stdout and "gateway: rejected as `bad_tag`" in r.stdout


def test_record_then_inspect_and_replay_into_mosquitto(new_year, mosquitto):
    r = dordt("sim", "inspect", str(new_year / "ny.rec"))
    assert r.returncode == 0 and "complete: yes" in r.stdout
    assert "6588 messages" in r.stdout and "2025-12-31 22:01 .. 2026-01-01 02:00" in r.stdout
    r = dordt("sim", "replay", str(new_year / "ny.rec"), "--broker", mosquitto.url,
              "--keyring", str(new_year / "keys.json"), "--speed", "max", "--fault",
              "drop:p=0.5", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    assert "replayed 1000 messages" in r.stdout
    r = dordt("sim", "replay", str(new_year / "ny.rec"), "--broker", mosquitto.url,
              "--speed", "0")
    assert r.returncode == 2 and "--speed 0" in r.stderr and "Traceback" not in r.stderr


def test_record_with_faults_needs_and_uses_the_keyring(tmp_path):
    r = dordt("sim", "record", str(tmp_path / "f.rec"), "--start", "2026-03-14", "--hours",
              "0.5", "--cadence", "60", "--fault", "nan:metric=pm25_ugm3", "--fault",
              "broker_outage:at_s=600,duration_s=300", "--fault", "dely")
    assert r.returncode == 2 and "unknown fault 'dely'" in r.stderr
    r = dordt("sim", "record", str(tmp_path / "f.rec"), "--start", "2026-03-14", "--hours",
              "0.5", "--cadence", "60", "--fault", "nan:metric=pm25_ugm3", "--fault",
              "broker_outage:at_s=600,duration_s=300")
    assert r.returncode == 0, r.stderr
    reader = RecordingReader(tmp_path / "f.rec")
    assert [m.topic for m in reader if m.is_control] == ["broker.stop", "broker.start"]
    assert [f["fault"] for f in reader.meta["faults"]] == ["nan", "broker_outage"]


def test_plot_a_day_from_a_recording_and_from_a_store(new_year, tmp_path):
    r = dordt("sim", "plot", "--recording", str(new_year / "ny.rec"), "--day", "2026-01-01",
              "--out", str(tmp_path / "ny.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same night through a gateway into a local store, plotted as HTML
    ring = Keyring.load(new_year / "keys.json")
    gateway = Gateway(ring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw")
    envelopes = [Envelope("mqtt", m.topic, m.payload, m.t_ms / 1000)
                 for m in RecordingReader(new_year / "ny.rec")]
    for i in range(0, len(envelopes), 500):
        gateway.process(envelopes[i:i + 500])
    while gateway.forwarder.drain_once():
        pass
    gateway.stop(drain_timeout_s=0)
    r = dordt("sim", "plot", "--store", str(tmp_path / "store.sqlite"), "--day", "2026-01-01",
              "--out", str(tmp_path / "ny.html"))
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "ny.html").read_text()
    assert "<svg" in page and "spuiboulevard" in page and "PM2.5" in page
    r = dordt("sim", "plot", "--store", str(tmp_path / "store.sqlite"), "--day", "2026-02-01",
              "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "no readings on 2026-02-01" in r.stderr
    assert "2026-01-01" in r.stderr
