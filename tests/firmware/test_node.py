"""The node's boot and main loop (firmware/node.py) on a simulated clock: status frames,
time (unsynced until NTP or the gateway's time message), safe mode, the counter across
restarts, sampler faults, the watchdog; on CPython and under real MicroPython."""

import json
import math
from pathlib import Path

import pytest

from firmware import counter as counter_mod
from firmware import metrics, node, protocol
from firmware.uplink.mqtt import encode_time, topic_down
from simulators import node_host

REPO = Path(__file__).resolve().parents[2]
NODE = 0x0D0A0005
KEY = bytes(range(0x80, 0xA0))
ZONE = "spuiboulevard"
M = metrics.BY_NAME
STATUS_IDS = {m.id for m in metrics.BY_ID.values() if m.group == metrics.GROUP_STATUS}


class FakeSampler:
    """A crowd-kind sampler whose readings a test decides (the sampler contract)."""

    KIND = "crowd"
    script = None  # callable(n) -> dict, or an exception to raise

    def __init__(self, hw, config):
        self.clock = hw.clock
        self.window_ms = config.get("window_s", 60) * 1000
        self.end = self.clock.ticks_add(self.clock.ticks_ms(), self.window_ms)
        self.n = 0

    def poll(self, now_ms):
        if self.clock.ticks_diff(now_ms, self.end) < 0:
            return None
        self.end = self.clock.ticks_add(self.end, self.window_ms)
        self.n += 1
        script = type(self).script
        if script is None:
            return {"crowd_count": 10 + self.n, "crowd_faults": 0}
        return script(self.n)

    def wait_ms(self, now_ms):
        return max(0, self.clock.ticks_diff(self.end, now_ms))


def make_node(tmp_path, enrol=True, clock=None, **sections):
    clock = clock or node_host.SimClock(start_ticks=(1 << 30) - 90_000)  # wraps in 90 s
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    hw = node_host.host_hardware(str(tmp_path), clock=clock, reset_cause=3)
    if enrol:
        doc = node_host.enrol(hw.flash, NODE, "crowd", ZONE, "spui-9", KEY,
                              sampler={"window_s": 60})
        doc.update(sections)  # overrides, good or bad
        hw.flash.replace("config.json", json.dumps(doc).encode())
    return hw


def frames(hw):
    return [protocol.open_frame(p, KEY) for p in hw.broker.payloads()]


def test_status_frames_at_boot_and_every_n_measurements(tmp_path, capsys):
    hw = make_node(tmp_path, intervals={"status_every": 4})
    node.run(hw, max_ms=10 * 60_000 + 500, sampler_factory=FakeSampler)
    got = frames(hw)
    status = [f for f in got if f.is_status]
    measure = [f for f in got if not f.is_status]
    assert len(measure) == 10 and len(status) == 1 + 2  # boot, after 4 and after 8
    assert [f.counter for f in got] == sorted(f.counter for f in got)
    for f in got:
        assert f.kind == metrics.KIND_CROWD and f.node_id == NODE
        ids = {i for i, _ in f.metrics}
        assert (ids <= STATUS_IDS) == f.is_status and (not ids & STATUS_IDS) != f.is_status
    boot = dict(status[0].metrics)
    assert status[0].window_s == 0 and status[0].flags & protocol.FLAG_STATUS
    assert boot == {M["uptime_s"].id: 0, M["free_heap_bytes"].id: node_host.host_free_heap(),
                    M["reset_cause"].id: 3, M["firmware_version"].id: 100,
                    M["error_count"].id: 0, M["dropped_frames"].id: 0}
    later = dict(status[2].metrics)
    assert later[M["uptime_s"].id] == 480  # after the 8th 60 s window
    assert measure[0].window_s == 60 and dict(measure[0].metrics)[0x60] == 11
    assert "dordt node firmware 0.1.0" in capsys.readouterr().out


def test_frames_before_time_is_known_are_flagged_and_count_from_boot(tmp_path):
    hw = make_node(tmp_path)  # no NTP host: time only from the gateway
    n = node.Node(hw, sampler_factory=FakeSampler)
    state = {"sent": False}

    def gateway_answers(t0, t1):  # at 150 s the gateway's time message arrives
        if t0 < 150_000 <= t1 and not state["sent"]:
            state["sent"] = True
            last = protocol.decode(hw.broker.payloads()[-1]).counter
            hw.broker.deliver(topic_down(ZONE, NODE),
                              encode_time(KEY, NODE, last, hw.clock.true_time()))

    hw.clock.on_advance(gateway_answers)
    n.run(max_ms=5 * 60_000 + 500)
    got = frames(hw)
    unsynced = [f for f in got if not f.time_synced]
    synced = [f for f in got if f.time_synced]
    assert [f.timestamp for f in unsynced] == [0, 60, 120]  # boot status, two windows
    # the time message was made at 149 s and applied a second later: 1 s off at most
    for f, at_s in zip(synced, (180, 240, 300)):
        assert abs(f.timestamp - (hw.clock.unix_start + at_s)) <= 1
    assert len(synced) == 3 and n.time_source == "gateway"


def test_ntp_sets_the_clock_before_the_first_frame_and_failures_fall_back(tmp_path):
    hw = make_node(tmp_path, time={"ntp_host": "pool.ntp.org"})
    node.run(hw, max_ms=120_500, sampler_factory=FakeSampler)
    got = frames(hw)
    assert all(f.time_synced for f in got) and len(got) == 3
    assert got[0].timestamp == hw.clock.unix_start

    hw2 = make_node(tmp_path / "b", time={"ntp_host": "pool.ntp.org"})
    hw2.net.ntp_ok = False
    n = node.run(hw2, max_ms=185_000, sampler_factory=FakeSampler)
    assert not any(f.time_synced for f in frames(hw2))
    assert hw2.net.ntp_requests >= 3  # retried every minute
    assert n.time_source is None


def test_safe_mode_without_config_sends_nothing_and_waits_for_provisioning(tmp_path, capsys):
    hw = make_node(tmp_path, enrol=False)
    state = {}

    def provision(t0, t1):  # a technician writes the config after 5 minutes
        if t0 < 300_000 <= t1:
            node_host.enrol(hw.flash, NODE, "crowd", ZONE, "spui-9", KEY,
                            sampler={"window_s": 60})
            state["at"] = len(hw.broker.published)

    hw.clock.on_advance(provision)
    n = node.run(hw, max_ms=10 * 60_000, sampler_factory=FakeSampler)
    out = capsys.readouterr().out
    assert "SAFE MODE, no frames are sent" in out
    assert "[config.json] not found on flash" in out
    assert "waiting for provisioning" in out
    assert "dordt: safe mode: [config.json] not found" in out  # reminded every minute
    assert state["at"] == 0  # nothing at all while in safe mode
    assert "the config is valid now; leaving safe mode" in out
    assert n.safe_problems is None and len(frames(hw)) >= 5
    assert hw.wdt.max_gap_ms <= 1000 and hw.wdt.feeds > 500


@pytest.mark.parametrize("problem,expected", [
    ({"zone": "Spui Boulevard"}, "[zone] 'Spui Boulevard' is not a zone name"),
    ({"broker": {"host": "gw", "prot": 1883}}, "[prot] is an invalid option for [broker]. "
                                               "Did you mean [port]?"),
    ({"sampler": {"window_s": 5}}, "[sampler.window_s] must be an integer in 10..3600"),
])
def test_an_invalid_config_means_safe_mode_saying_why(tmp_path, capsys, problem, expected):
    hw = make_node(tmp_path, **problem)
    n = node.run(hw, max_ms=120_000)  # the real crowd sampler checks its own section
    out = capsys.readouterr().out
    assert "SAFE MODE" in out and expected in out
    assert hw.broker.published == [] and hw.net.clients == []
    assert n.safe_problems
    # the counter is touched only once the node's own config is valid
    assert hw.flash.exists("counter") == ("sampler" in problem)


def test_the_counter_carries_on_across_restarts_and_the_gateway_accepts_it_all(tmp_path):
    hw = make_node(tmp_path, intervals={"counter_reserve": 5})
    window = protocol.ReplayWindow()
    seen = []
    for restart in range(4):
        hw.broker.published.clear()
        node.run(hw, max_ms=3 * 60_000 + 500, sampler_factory=FakeSampler)
        for f in frames(hw):
            assert window.check(f.counter) is None, (restart, f.counter)
            window.accept(f.counter)
            seen.append(f.counter)
    assert seen == sorted(set(seen)) and len(seen) == 16
    assert counter_mod.decode_mark(hw.flash.read("counter")) > seen[-1]


def test_sampler_faults_are_counted_and_good_values_still_leave(tmp_path, capsys):
    def script(n):
        if n == 2:
            raise OSError(5)  # a bus error in one window
        return {"crowd_count": 7, "rssi_bin_0": 70000,  # above the registry's range
                "laeq_db": 55.0,  # not a crowd metric
                "rssi_bin_1": math.nan, "rssi_bin_2": None, "crowd_faults": 1}

    FakeSampler.script = staticmethod(script)
    try:
        hw = make_node(tmp_path, intervals={"status_every": 3})
        n = node.run(hw, max_ms=4 * 60_000 + 500, sampler_factory=FakeSampler)
    finally:
        FakeSampler.script = None
    got = frames(hw)
    measure = [dict(f.metrics) for f in got if not f.is_status]
    assert measure == [{0x60: 7, 0x66: 1}] * 3
    status = [dict(f.metrics) for f in got if f.is_status]
    assert status[-1][M["error_count"].id] == n.errors == 1 + 3 * 3
    out = capsys.readouterr().out
    assert "sampler poll: OSError" in out and "rssi_bin_0=70000 is outside 0..65535" in out


def test_a_sampler_that_cannot_start_is_retried_and_status_frames_go_on(tmp_path):
    attempts = []

    def broken(hw, config):
        attempts.append(hw.clock.elapsed_ms)
        if len(attempts) < 3:
            raise OSError(19)  # no such device
        return FakeSampler(hw, config)

    hw = make_node(tmp_path, intervals={"status_every": 1})
    n = node.run(hw, max_ms=5 * 60_000 + 500, sampler_factory=broken)
    assert attempts == [0, 60_000, 120_000]
    got = frames(hw)
    assert got[0].is_status and dict(got[0].metrics)[M["error_count"].id] == 1
    assert sum(not f.is_status for f in got) == 3  # from 120 s: windows at 180, 240, 300
    assert n.errors == 2


def test_an_exhausted_counter_stops_the_node(tmp_path, capsys):
    hw = make_node(tmp_path)
    hw.flash.write("counter", counter_mod.encode_mark(0xFFFFFFFF))
    n = node.run(hw, max_ms=5 * 60_000, sampler_factory=FakeSampler)
    assert [f.counter for f in frames(hw)] == [0xFFFFFFFF]  # the boot status, then nothing
    assert n.safe_problems and "re-enrol" in capsys.readouterr().out


# -- under MicroPython ---------------------------------------------------------------------

_MP = r"""
import json
from firmware import node, protocol
from simulators import node_host

KEY = bytes(range(0x80, 0xA0))
out = {}

hw = node_host.host_hardware("/flash-a", clock=node_host.SimClock(start_ticks=(1 << 30) - 5000))
n = node.run(hw, max_ms=70000)
out["safe"] = n.safe_problems
out["safe_published"] = len(hw.broker.published)


class Fake:
    KIND = "crowd"

    def __init__(self, hw, config):
        self.clock = hw.clock
        self.end = self.clock.ticks_add(self.clock.ticks_ms(), 60000)

    def poll(self, now_ms):
        if self.clock.ticks_diff(now_ms, self.end) < 0:
            return None
        self.end = self.clock.ticks_add(self.end, 60000)
        return {"crowd_count": 42, "crowd_faults": 0}

    def wait_ms(self, now_ms):
        return max(0, self.clock.ticks_diff(self.end, now_ms))


import os
os.mkdir("/flash-b")
hw = node_host.host_hardware("/flash-b", clock=node_host.SimClock(start_ticks=(1 << 30) - 5000),
                             reset_cause=5)
node_host.enrol(hw.flash, 0x0D0A0005, "crowd", "spuiboulevard", "spui-9", KEY,
                intervals={"status_every": 2})
n = node.run(hw, max_ms=4 * 60000 + 500, sampler_factory=Fake)
got = []
for payload in hw.broker.payloads():
    f = protocol.open_frame(payload, KEY)
    got.append([f.counter, f.flags, f.timestamp, f.window_s, f.metrics])
out["frames"] = got
out["topics"] = list(set(hw.broker.topics()))
out["wdt_gap"] = hw.wdt.max_gap_ms
print(json.dumps(out))
"""


def mp_files():
    return {"/lib/simulators/__init__.py": "",
            "/lib/simulators/node_host.py": (REPO / "simulators" / "node_host.py").read_text()}


@pytest.mark.micropython
def test_the_node_loop_under_micropython(micropython):
    out = micropython.run_json(_MP, files=mp_files(), timeout_s=120)
    assert out["safe"] and "[config.json] not found" in out["safe"][0]
    assert out["safe_published"] == 0
    assert out["topics"] == ["dordt/v1/spuiboulevard/0d0a0005/up"]
    frames_ = out["frames"]
    assert [f[0] for f in frames_] == list(range(len(frames_)))
    status = [f for f in frames_ if f[1] & protocol.FLAG_STATUS]
    measure = [f for f in frames_ if not f[1] & protocol.FLAG_STATUS]
    assert len(measure) == 4 and len(status) == 3  # boot, after 2, after 4
    assert all(f[1] & protocol.FLAG_TIME_UNSYNCED for f in frames_)
    assert [f[2] for f in measure] == [60, 120, 180, 240]
    assert [f[3] for f in measure] == [60] * 4
    assert all(f[4] == [[0x60, 42], [0x66, 0]] for f in measure)
    boot = dict(map(tuple, status[0][4]))
    assert boot[M["reset_cause"].id] == 5 and boot[M["firmware_version"].id] == 100
    assert boot[M["free_heap_bytes"].id] > 0  # MicroPython's own gc.mem_free()
    assert out["wdt_gap"] <= 1000


def test_the_board_module_and_the_entry_point_import_on_a_host():
    # board.py only runs on a board; here it must import and do nothing (main.py likewise:
    # the node starts only when MicroPython runs it as /main.py)
    from firmware import board, main

    assert callable(board.build) and callable(main.start)
    clock = board.BoardClock()
    assert clock.time() is None  # the RTC is not trusted until NTP or the gateway set it
