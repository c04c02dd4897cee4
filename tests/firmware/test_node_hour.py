"""Air and noise nodes run their main loop (firmware/node.py, the real samplers) on emulated
hardware and emit signed frames the gateway accepts (issue 3, acceptance "a simulated
hour").  The crowd node's hour is in test_crowd.py
(test_an_hour_of_a_crowd_node_on_mosquitto_accepted_by_the_gateway), with its MicroPython
run of full windows at real advertising rates.

CPython, real Mosquitto, the gateway of the foundation issue (keyring entry with the node's
key, pass-through policy, LocalStore), every frame accepted, none rejected:

- Air: one simulated hour, 60 windows of 60 s at the real rates (PMS5003 frames once a
  second on a real pty while awake, duty-cycled; five BME680 forced measurements per
  window on the register emulator), 60 + 7 status frames; the stored values match the
  emulators' truth (+-0.1 degC, +-0.5 hPa, +-0.5 %RH, +-1 % gas; PM +-1 ug/m3, the
  PMS5003's whole-ug/m3 resolution).
- Noise: at the full 32 kHz (the sampler refuses less), pink noise whose level changes
  every minute, for NOISE_MINUTES simulated minutes: the hour by default (115 million
  samples, 60 + 31 frames; ~5 min under CPython, where the pure-Python reference kernel
  gets through audio at ~12x real time; MicroPython-WebAssembly manages ~2x, so the hour
  would take ~30 min there).  `make test` runs the suite on both cores (pytest-xdist), so
  this test runs beside the others.  `DORDT_NOISE_MINUTES=5` shortens it for a quick
  local run.  Each interval's LAeq is the pink noise's exact LAeq +- 0.5 dB.

Real MicroPython (no pty, broker or gateway there): node.run itself, on node_host's
simulated clock (ticks wrapping mid-run) and in-memory broker, with fake buses fed bytes
the emulators made on the host; the frames verify with the node key under MicroPython and
again here, through the gateway's own Verifier, and carry only the kind's and status
metrics.

- Air: four 60-s windows at real rates (SDS011 frames once a second while awake, five
  BME680 measurements per window), status every 2 windows.
- Noise: three intervals at the full 32 kHz, with interval_s = 10 (60-s intervals would
  take ~90 s of this file's budget); the sampler alone runs three 10-s intervals at 32 kHz
  in test_noise.py (test_three_full_intervals_at_32_khz_under_micropython).

Ticks wrap in every run, CPython or MicroPython: firmware/ticks.py gives CPython
MicroPython's tick arithmetic, so the same code meets the wrap on both.
"""

import io
import json
import os
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from firmware import metrics, node, protocol
from simulators import node_host
from simulators.emulators import i2s
from simulators.emulators.bme680 import BME680Emulator, Noise
from simulators.emulators.pm import PMS5003Emulator, PtyLink
from tests.data import PASSTHROUGH
from tests.firmware.test_air import bme_truth, pm_truth, scenario

REPO = Path(__file__).resolve().parents[2]
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
ZONE = "maasterras"
SITE = "mst-01"
# hardware/data/zones.toml: zone 2 << 16 | site 1 << 4 | kind
AIR_NODE = 0x00020011
NOISE_NODE = 0x00020012
AIR_KEY = bytes(range(0x20, 0x40))
NOISE_KEY = bytes(range(0x40, 0x60))
FS = 32000
NOISE_MINUTES = int(os.environ.get("DORDT_NOISE_MINUTES", "60"))
PINK_DB = 70.0  # the pink noise's (unweighted) level at gain 0
LEVEL_STEPS_DB = (0.0, -12.0, -6.0)  # gain of the pink noise, interval by interval (cyclic)


def ids_of(group):
    return {m.id for m in metrics.BY_ID.values() if m.group == group}


STATUS_IDS = ids_of(metrics.GROUP_STATUS)


# -- the gateway, on real Mosquitto --------------------------------------------------------


class HourRun:
    """What a node run left behind: the node, the gateway's counters and its store."""

    def __init__(self, node_, stats, store, console, real_s):
        self.node = node_
        self.stats = stats
        self.store = store
        self.console = console
        self.real_s = real_s


def run_with_gateway(mosquitto, tmp_path, hw, node_id, kind, key, max_ms):
    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.pipeline import Gateway

    keyring = Keyring([NodeEntry(node_id, kind, ZONE, SITE, {0: key})])
    store_path = tmp_path / "store.sqlite"
    gateway = Gateway(keyring, LocalStore(store_path), tmp_path / "gw", mosquitto.url,
                      client_id=kind + "-hour-gw", policy_path=PASSTHROUGH)
    gateway.start()
    console = io.StringIO()
    started = time.monotonic()
    try:
        assert gateway.ingest.wait_connected(10)
        with redirect_stdout(console):
            n = node.run(hw, max_ms=max_ms)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and gateway.stats.received < n.uplink.sent:
            time.sleep(0.05)
    finally:
        gateway.stop()  # drains the outbox into the store, then closes it
    real_s = time.monotonic() - started
    return HourRun(n, gateway.stats, LocalStore(store_path, create=False), console.getvalue(),
                   real_s)


def check_accepted(run, hw, measurements, status):
    """Every frame made was sent, accepted and stored; nothing was rejected or dropped."""
    n = run.node
    assert n.errors == 0, run.console
    assert n.frames_made == n.uplink.sent == measurements + status
    assert n.status_frames == status and n.uplink.dropped == 0
    assert run.stats.accepted == run.stats.received == n.uplink.sent
    assert not run.stats.rejected, run.stats.rejected_by_node
    assert hw.wdt.max_gap_ms <= 1000
    node_name = protocol.node_name(n.cfg.node_id)
    kind = n.cfg.kind
    stored = run.store.count_by(("node", "kind"))
    assert stored == {(node_name, kind): measurements}
    assert run.store.count_by(("node",), status=True) == {(node_name,): status}
    uptimes = [p.value for p in run.store.points("node_status", "uptime_s", node_name)]
    assert uptimes[0] == 0 and uptimes == sorted(uptimes)


def sim_clock():
    """Ticks that wrap 90 s into the run, as a board's do every 12.4 days (firmware/ticks.py
    gives CPython the same arithmetic); the simulated wall clock ends about now, so the
    gateway's buffer age bound keeps every reading."""
    return node_host.SimClock(start_ticks=(1 << 30) - 90_000,
                              unix_start=int(time.time()) - HOUR_MS // 1000)


def elapsed_ms(point, clock):
    """Simulated ms since boot at a stored point's timestamp (the node's clock was set from
    the simulation's NTP at boot, so every frame is time-synced)."""
    return (point.time_s - clock.unix_start) * 1000


# -- air, CPython: an hour -----------------------------------------------------------------


@pytest.mark.services
def test_an_hour_of_an_air_node_on_mosquitto_accepted_by_the_gateway(mosquitto, tmp_path):
    clock = sim_clock()
    chip = BME680Emulator(noise=Noise(2, 2, 2, 1), seed=1, clock=lambda: clock.elapsed_ms)
    pm = PMS5003Emulator(pm_truth, noise_pct=1, seed=2)
    link = PtyLink(pm)

    def world(t0, t1):
        link.pump(t0)  # commands the sampler wrote at t0 reach the sensor at t0
        link.pump(t1)  # the frames due by t1 are on the line when the clock shows t1
        chip.truth = bme_truth(t1)

    clock.on_advance(world)
    flash = tmp_path / "flash"
    flash.mkdir()
    try:
        hw = node_host.host_hardware(str(flash), clock=clock, seed=11,
                                     mqtt=node_host.paho_client, i2c=chip, uart=link.uart())
        node_host.enrol(hw.flash, AIR_NODE, "air", ZONE, SITE, AIR_KEY,
                        broker={"host": mosquitto.host, "port": mosquitto.port},
                        time={"ntp_host": "ntp.local"}, sampler={"pm_sensor": "pms5003"})
        run = run_with_gateway(mosquitto, tmp_path, hw, AIR_NODE, "air", AIR_KEY,
                               HOUR_MS + 500)
    finally:
        link.close()
    try:
        # 60 windows; status frames at boot and after every 10th window
        check_accepted(run, hw, 60, 7)
        name = protocol.node_name(AIR_NODE)

        def series(field):
            return run.store.points("air", field, name)

        faults = series("air_faults")
        assert len(faults) == 60 and all(p.value == 0 for p in faults)
        assert [elapsed_ms(p, clock) for p in faults] == [
            (k + 1) * MINUTE_MS for k in range(60)]
        # each window's values against the truth of its sampling phase (its last 7 s)
        for field, attr, tol in (("temperature_c", "temperature_c", 0.1),
                                 ("pressure_hpa", "pressure_hpa", 0.5),
                                 ("humidity_pct", "humidity_pct", 0.5)):
            points = series(field)
            assert len(points) == 60
            for p in points:
                truth = getattr(bme_truth(elapsed_ms(p, clock) - 5000), attr)
                assert abs(p.value - truth) <= tol, (field, p, truth)
        for p in series("gas_resistance_ohm"):
            truth = bme_truth(elapsed_ms(p, clock) - 5000).gas_ohm
            assert p.value == pytest.approx(truth, rel=0.01), p
        for field in ("pm1_ugm3", "pm25_ugm3", "pm10_ugm3"):
            points = series(field)
            assert len(points) == 60
            for p in points:
                truth = getattr(pm_truth(elapsed_ms(p, clock) - 5000), field.split("_")[0])
                assert abs(p.value - truth) <= 1.0, (field, p, truth)
        # at the real rates: duty-cycled PM sensor, five heater cycles per window
        assert [name for _, name in pm.commands].count("wake") == 60
        assert 34 * 60 <= len(pm.sent) <= 38 * 60
        assert chip.measurements == 5 * 60
    finally:
        run.store.close()
    print(f"\nair hour: {len(pm.sent)} PM frames, {chip.measurements} BME680 measurements, "
          f"{run.node.uplink.sent} frames, {run.real_s:.1f} s real time")


# -- noise, CPython: NOISE_MINUTES at 32 kHz -----------------------------------------------


class SteppedPcm(i2s.PcmLoop):
    """PCM loops rendered on the host, switched every `step_samples` (a PcmLoop, so the
    I2S emulator copies bytes instead of rendering floats per sample)."""

    def __init__(self, pcms, step_samples):
        self.loops = [memoryview(p) for p in pcms]
        self.step_samples = step_samples
        super().__init__(pcms[0])

    def copy_into(self, dst, sample_start, nbytes, bps):
        self.pcm = self.loops[(sample_start // self.step_samples) % len(self.loops)]
        super().copy_into(dst, sample_start, nbytes, bps)


_PINK = {}


def pink():
    """Pink noise at PINK_DB (one 2.048-s period, a multisine whose LAeq is exact) and its
    PCM at each gain of LEVEL_STEPS_DB; made once (the inverse FFT takes a second)."""
    if not _PINK:
        source = i2s.PinkNoise(PINK_DB, FS, seed=7)
        _PINK["laeq_db"] = source.laeq_db()
        # a gain of g dB is the same sound from a microphone g dB more sensitive
        _PINK["pcms"] = [i2s.render_pcm(source, 0, source.period, FS, 32, -26.0 + g)
                         for g in LEVEL_STEPS_DB]
    return _PINK


def interval_truth_db(k):
    return pink()["laeq_db"] + LEVEL_STEPS_DB[k % len(LEVEL_STEPS_DB)]


@pytest.mark.services
@pytest.mark.timeout(1200)  # the simulated hour at 32 kHz takes ~5 min of CPU
def test_noise_node_at_32_khz_on_mosquitto_accepted_by_the_gateway(mosquitto, tmp_path):
    clock = sim_clock()
    mic = i2s.I2SEmulator(SteppedPcm(pink()["pcms"], 60 * FS), clock, FS)
    flash = tmp_path / "flash"
    flash.mkdir()
    hw = node_host.host_hardware(str(flash), clock=clock, seed=12, mqtt=node_host.paho_client,
                                 i2s=mic)
    node_host.enrol(hw.flash, NOISE_NODE, "noise", ZONE, SITE, NOISE_KEY,
                    broker={"host": mosquitto.host, "port": mosquitto.port},
                    time={"ntp_host": "ntp.local"}, intervals={"status_every": 2},
                    sampler={"interval_s": 60, "sample_rate": FS})
    run = run_with_gateway(mosquitto, tmp_path, hw, NOISE_NODE, "noise", NOISE_KEY,
                           NOISE_MINUTES * MINUTE_MS + 500)
    try:
        check_accepted(run, hw, NOISE_MINUTES, 1 + NOISE_MINUTES // 2)
        name = protocol.node_name(NOISE_NODE)

        def series(field):
            return {elapsed_ms(p, clock): p.value
                    for p in run.store.points("noise", field, name)}

        laeq = series("laeq_db")
        assert sorted(laeq) == [(k + 1) * MINUTE_MS for k in range(NOISE_MINUTES)]
        levels = {f: series(f) for f in ("lamax_db", "la10_db", "la50_db", "la90_db")}
        assert all(v == 0 for v in series("noise_faults").values())
        for k, t in enumerate(sorted(laeq)):
            assert laeq[t] == pytest.approx(interval_truth_db(k), abs=0.5), (k, laeq[t])
            lamax, la10, la50, la90 = (levels[f][t] for f in levels)
            assert lamax >= la10 >= la50 >= la90 and lamax >= laeq[t]
        # every sample of the run was heard, none lost to a DMA overrun
        assert mic.dropped_samples == 0
        assert mic.delivered >= NOISE_MINUTES * 60 * FS
    finally:
        run.store.close()
    print(f"\nnoise: {NOISE_MINUTES} min at {FS} Hz ({mic.delivered} samples), "
          f"{run.node.uplink.sent} frames, {run.real_s:.1f} s real time")


# -- under MicroPython: node.run on fake buses fed with emulator bytes ----------------------


def mp_files(emulators=False):
    files = {"/lib/simulators/__init__.py": "",
             "/lib/simulators/node_host.py": (REPO / "simulators" / "node_host.py").read_text()}
    if emulators:
        files["/lib/simulators/emulators/__init__.py"] = ""
        files["/lib/simulators/emulators/i2s.py"] = (
            REPO / "simulators" / "emulators" / "i2s.py").read_text()
    return files


_MP_REPORT = r"""
frames = 0
for payload in hw.broker.payloads():
    protocol.open_frame(payload, KEY)  # FrameError unless the tag verifies, here
    frames += 1
print(json.dumps({"payloads": [binascii.hexlify(p).decode() for p in hw.broker.payloads()],
                  "topics": list(set(hw.broker.topics())), "verified": frames,
                  "errors": n.errors, "status_frames": n.status_frames,
                  "dropped": n.uplink.dropped, "wdt_gap": hw.wdt.max_gap_ms,
                  "unix_start": clock.unix_start, "extra": extra}))
"""

# Fake buses for MicroPython, which can run neither the register emulator (dataclasses)
# nor a pty: they serve the bytes the emulators made on the host (air_data()).  Also used
# by bench/firmware_memory.py.
MP_AIR_BUSES = r"""
import binascii


class FakeI2C:
    # the BME680's registers; each forced-mode trigger loads the next data field that the
    # register emulator made on the host
    def __init__(self, regs, fields):
        self.regs = bytearray(binascii.unhexlify(regs))
        self.fields = fields
        self.triggers = 0

    def readfrom_mem_into(self, addr, reg, buf):
        if addr != 0x77:
            raise OSError(19)
        for i in range(len(buf)):
            buf[i] = self.regs[(reg + i) & 0xFF]

    def writeto_mem(self, addr, reg, buf):
        if addr != 0x77:
            raise OSError(19)
        pairs = bytes([reg]) + bytes(buf)
        for i in range(0, len(pairs) - 1, 2):
            r, v = pairs[i], pairs[i + 1]
            if 0x50 <= r <= 0x75:
                self.regs[r] = v
            if r == 0x74 and v & 3 == 1:
                self.regs[0x1D:0x1D + 17] = binascii.unhexlify(self.fields[self.triggers])
                self.triggers += 1


class FakeUART:
    # the PM sensor's bytes by simulated time; none while it sleeps
    def __init__(self, chunks, clock, sensor):
        self.chunks = chunks
        self.k = 0
        self.clock = clock
        self.buf = b""
        self.awake = True
        self.cmd = b""
        self.sleep_cmd = sensor.SLEEP
        self.wake_cmd = sensor.WAKE
        self.wakes = 0

    def _pump(self):
        while self.k < len(self.chunks) and self.chunks[self.k][0] <= self.clock.elapsed_ms:
            if self.awake:
                self.buf += binascii.unhexlify(self.chunks[self.k][1])
            self.k += 1

    def any(self):
        self._pump()
        return len(self.buf)

    def readinto(self, b, nbytes=None):
        n = min(len(b) if nbytes is None else nbytes, len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def write(self, data):
        self._pump()
        self.cmd = (self.cmd + bytes(data))[-32:]
        if self.cmd.endswith(self.sleep_cmd):
            self.awake = False
        elif self.cmd.endswith(self.wake_cmd):
            self.awake = True
            self.wakes += 1
        return len(data)
"""

_MP_AIR = MP_AIR_BUSES + r"""
import json, os
from firmware import node, protocol
from firmware.drivers import pm as pmdrv
from simulators import node_host

data = json.loads(open("/data/air.json").read())
KEY = binascii.unhexlify(data["key"])
os.mkdir("/flash")
clock = node_host.SimClock(start_ticks=(1 << 30) - 90000)  # ticks wrap 90 s in
hw = node_host.host_hardware("/flash", clock=clock, seed=3)
hw.i2c = FakeI2C(data["regs"], data["fields"])
hw.uart = FakeUART(data["chunks"], clock, pmdrv.SENSORS[data["pm_sensor"]])
node_host.enrol(hw.flash, data["node"], "air", data["zone"], data["site"], KEY,
                time={"ntp_host": "ntp.local"}, intervals={"status_every": 2},
                sampler={"pm_sensor": data["pm_sensor"]})
n = node.run(hw, max_ms=data["windows"] * 60000 + 500)
extra = {"bme_measurements": hw.i2c.triggers, "pm_wakes": hw.uart.wakes}
""" + _MP_REPORT


def through_the_gateway(payloads, topic, node_id, kind, key):
    """Each frame verified with the node key here too, then checked by the gateway's
    verify stage as if it had come over MQTT; returns the Readings, in order."""
    from fleet.keyring import Keyring, NodeEntry
    from gateway.model import Envelope, Reading
    from gateway.verify import Verifier

    allowed = ids_of(kind)
    verifier = Verifier(Keyring([NodeEntry(node_id, kind, ZONE, SITE, {0: key})]))
    readings = []
    for payload in payloads:
        frame = protocol.open_frame(payload, key)
        ids = {i for i, _ in frame.metrics}
        assert ids <= (STATUS_IDS if frame.is_status else allowed), frame
        assert frame.kind == metrics.KIND_IDS[kind] and frame.time_synced
        reading = verifier.check(Envelope("mqtt", topic, payload, time.time()))
        assert isinstance(reading, Reading), reading
        readings.append(reading)
    return readings


def run_node_under_micropython(micropython, code, files, node_id, kind, key, timeout_s):
    out = micropython.run_json(code, files=files, timeout_s=timeout_s)
    topic = protocol.topic_up(ZONE, node_id)
    assert out["topics"] == [topic]
    assert out["errors"] == 0 and out["dropped"] == 0 and out["wdt_gap"] <= 1000
    payloads = [bytes.fromhex(p) for p in out["payloads"]]
    assert out["verified"] == len(payloads)
    readings = through_the_gateway(payloads, topic, node_id, kind, key)
    return out, [r for r in readings if not r.status], [r for r in readings if r.status]


def air_data(windows):
    """For MP_AIR_BUSES: the BME680 emulator's registers and its data fields (five per
    window, in trigger order) and the SDS011 emulator's bytes by time, for `windows`
    windows of 60 s at test_air.py's truth (bme_truth, pm_truth); and the node's identity."""
    data = scenario("mp-air", "sds011", windows)
    data.update(key=AIR_KEY.hex(), node=AIR_NODE, zone=ZONE, site=SITE, pm_sensor="sds011")
    return data


def test_air_node_runs_full_windows_at_real_rates_under_micropython(micropython):
    windows = 4
    files = dict(mp_files(), **{"/data/air.json": json.dumps(air_data(windows))})
    out, measure, status = run_node_under_micropython(micropython, _MP_AIR, files, AIR_NODE,
                                                      "air", AIR_KEY, timeout_s=120)
    assert len(measure) == windows and len(status) == out["status_frames"] == 3
    assert out["extra"] == {"bme_measurements": 5 * windows, "pm_wakes": windows}
    for k, r in enumerate(measure):
        t_ms = (r.time_s - out["unix_start"]) * 1000
        assert t_ms == (k + 1) * MINUTE_MS and r.window_s == 60
        truth, pm = bme_truth(t_ms - 5000), pm_truth(t_ms - 5000)
        f = r.fields
        assert f["air_faults"] == 0
        assert abs(f["temperature_c"] - truth.temperature_c) <= 0.1
        assert abs(f["pressure_hpa"] - truth.pressure_hpa) <= 0.5
        assert abs(f["humidity_pct"] - truth.humidity_pct) <= 0.5
        assert f["gas_resistance_ohm"] == pytest.approx(truth.gas_ohm, rel=0.01)
        assert abs(f["pm25_ugm3"] - pm.pm25) <= 0.5 and abs(f["pm10_ugm3"] - pm.pm10) <= 0.5
        assert "pm1_ugm3" not in f  # the SDS011 does not measure it


# The I2S emulator under MicroPython, with PCM rendered on the host (also used by
# bench/firmware_memory.py).
MP_NOISE_MIC = r"""
from simulators.emulators.i2s import I2SEmulator, PcmLoop


class SteppedPcm(PcmLoop):
    # PCM loops rendered on the host, switched every `step` samples
    def __init__(self, pcms, step):
        self.loops = [memoryview(p) for p in pcms]
        self.step = step
        super().__init__(pcms[0])

    def copy_into(self, dst, sample_start, nbytes, bps):
        self.pcm = self.loops[(sample_start // self.step) % len(self.loops)]
        super().copy_into(dst, sample_start, nbytes, bps)


class Elapsed:
    # the I2S emulator counts samples from plain ms differences: give it ms that never wrap
    def __init__(self, clock):
        self.clock = clock

    def ticks_ms(self):
        return self.clock.elapsed_ms
"""

_MP_NOISE = MP_NOISE_MIC + r"""
import binascii, json, os
from firmware import node, protocol
from simulators import node_host

data = json.loads(open("/data/noise.json").read())
KEY = binascii.unhexlify(data["key"])
os.mkdir("/flash")
clock = node_host.SimClock(start_ticks=(1 << 30) - 15000)  # ticks wrap 15 s in
fs = data["fs"]
pcms = [open(path, "rb").read() for path in data["pcm"]]
hw = node_host.host_hardware("/flash", clock=clock, seed=4)
hw.i2s = I2SEmulator(SteppedPcm(pcms, data["interval_s"] * fs), Elapsed(clock), fs)
node_host.enrol(hw.flash, data["node"], "noise", data["zone"], data["site"], KEY,
                time={"ntp_host": "ntp.local"}, intervals={"status_every": 2},
                sampler={"interval_s": data["interval_s"], "sample_rate": fs})
n = node.run(hw, max_ms=data["intervals"] * data["interval_s"] * 1000 + 500)
extra = {"delivered": hw.i2s.delivered, "dropped_samples": hw.i2s.dropped_samples}
""" + _MP_REPORT


def test_noise_node_runs_full_intervals_at_32_khz_under_micropython(micropython):
    intervals, interval_s = 3, 10
    data = {"key": NOISE_KEY.hex(), "node": NOISE_NODE, "zone": ZONE, "site": SITE, "fs": FS,
            "interval_s": interval_s, "intervals": intervals,
            "pcm": [f"/pcm/{i}.raw" for i in range(len(LEVEL_STEPS_DB))]}
    files = dict(mp_files(emulators=True), **{"/data/noise.json": json.dumps(data)})
    files.update(zip(data["pcm"], pink()["pcms"]))
    started = time.monotonic()
    out, measure, status = run_node_under_micropython(
        micropython, _MP_NOISE, files, NOISE_NODE, "noise", NOISE_KEY, timeout_s=150)
    real_s = time.monotonic() - started
    assert len(measure) == intervals and len(status) == out["status_frames"] == 2
    # every sample at the full rate was read and processed, none lost to an overrun
    assert out["extra"]["dropped_samples"] == 0
    assert out["extra"]["delivered"] >= intervals * interval_s * FS
    for k, r in enumerate(measure):
        t_ms = (r.time_s - out["unix_start"]) * 1000
        assert t_ms == (k + 1) * interval_s * 1000 and r.window_s == interval_s
        f = r.fields
        assert f["noise_faults"] == 0
        assert f["laeq_db"] == pytest.approx(interval_truth_db(k), abs=0.5), (k, f)
        assert f["lamax_db"] >= f["la10_db"] >= f["la50_db"] >= f["la90_db"]
    print(f"\nMicroPython noise node: {intervals} x {interval_s} s at {FS} Hz in "
          f"{real_s:.1f} s")
