"""Chaos soak: a simulated fleet of the three zones → real Mosquitto → the gateway (its
own process) → VictoriaMetrics, for a bounded time, with faults drawn at random.

    .venv/bin/python bench/soak.py [--faults 100] [--seed 1] [--max-s 900]

Faults (each drawn with equal weight until --faults are done; the frame faults happen
per frame at the same time):

- gateway_sigkill: SIGKILL of the gateway, restarted at once (tests/gateway/
  test_crash_durability.py's technique);
- broker_restart: Mosquitto stopped (gracefully, so it saves its queues) and started again
  on the same port;
- store_down / store_429 / store_503: the store behind tests/fixtures/faultproxy.py refuses
  everything for 1-4 s, or answers the next writes 429 or 503 with Retry-After;
- disk_full: the gateway's data folder is a 64 MiB tmpfs (root only, as
  tests/gateway/test_disk_full.py) and another file fills it to the last byte for 1-3 s;
- clock_jump: the gateway's wall clock jumps 1-3 hours forward or back for a few seconds,
  then returns: the gateway process starts with a sitecustomize (written by this script,
  on PYTHONPATH) that adds an offset read from a file to time.time() and time.time_ns().
  libfaketime was tried first: with Python 3.11 its clock_nanosleep makes time.sleep fail
  (EINVAL) or hang after a jump, which is a fault of the tool, not of the gateway;
- duplicated / delayed / forged frames: simulators/faults.py's Duplicate, Delay (within
  the replay window) and ForgedTag stages on the published stream.

At the end the gateway drains and the store is read back.  Every frame the broker
acknowledged (and that carries its node's real tag) must be in the store exactly once with
the values it carried (the passthrough privacy policy changes nothing); no forged frame
may be; `dordt gateway verify` must verify every batch's provenance and the audit log.
Prints one JSON line: faults_by_kind, frames, lost, duplicated_in_store, wrong_values,
forged_in_store, provenance_ok, wall_s (and a few more figures).  Exit 0 only when all
of those hold.  Needs the [test] extra (the fixtures), mosquitto, victoria-metrics and,
no root for anything but disk_full.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402

from firmware import metrics, protocol  # noqa: E402
from simulators.faults import Delay, Duplicate, FaultPipeline, ForgedTag  # noqa: E402
from simulators.fleet import SimFleet  # noqa: E402
from simulators.recording import Message  # noqa: E402
from tests.fixtures.faultproxy import FaultProxy  # noqa: E402
from tests.fixtures.services import Mosquitto, VictoriaMetrics  # noqa: E402

INFRA = ["gateway_sigkill", "broker_restart", "store_down", "store_429", "store_503",
         "disk_full", "clock_jump"]
FRAME = {"duplicated": "duplicate", "delayed": "delay", "forged": "forged_tag"}
# The gateway's wall clock, offset by the seconds in $DORDT_SOAK_CLOCK_FILE (read at most
# twice a second); monotonic time is left alone, as a real clock step leaves it.
CLOCK_HOOK = """
import os, time
_real, _real_ns, _mono = time.time, time.time_ns, time.monotonic
_path = os.environ["DORDT_SOAK_CLOCK_FILE"]
_state = [0.0, 0.0]
def _offset():
    now = _mono()
    if now >= _state[1]:
        _state[1] = now + 0.5
        try:
            with open(_path) as f:
                _state[0] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
    return _state[0]
time.time = lambda: _real() + _offset()
time.time_ns = lambda: _real_ns() + int(_offset() * 1e9)
"""
GATEWAY_ID = "gw-soak"
TICK_S = 0.2  # wall seconds between the fleet's 10 s windows
MEASUREMENTS = ("node_status", "air", "noise", "crowd")


class Publisher(threading.Thread):
    """Publishes the fleet's frames (through the frame faults) at QoS 1; remembers each
    frame the broker acknowledged."""

    def __init__(self, fleet: SimFleet, broker: Mosquitto, t0: int, seed: int,
                 p_frame: float):
        super().__init__(daemon=True, name="publisher")
        self.fleet, self.t0 = fleet, t0
        self.acked: list[bytes] = []
        self.published: list[bytes] = []  # everything sent, acknowledged or not
        self.stop_flag = threading.Event()
        self.pipeline = FaultPipeline(
            [ForgedTag(p=p_frame), Duplicate(p=p_frame, gap_s=20.0),
             Delay(p=p_frame, delay_s=30.0)], seed=seed, keyring=fleet.keyring())
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-fleet")
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    def _messages(self):
        t = self.t0
        while not self.stop_flag.is_set():
            for topic, frame in self.fleet.tick(t):
                yield Message(t * 1000, topic, frame, 1)
            t += 10

    def run(self) -> None:
        pending = []
        last_tick = None
        for msg in self.pipeline.apply(self._messages()):
            if msg.t_ms != last_tick:  # a new window: pace, and collect the acks
                last_tick = msg.t_ms
                self._collect(pending)
                pending = []
                time.sleep(TICK_S)
            info = self.client.publish(msg.topic, msg.payload, qos=1)
            self.published.append(msg.payload)
            pending.append((msg.payload, info))
        self._collect(pending)

    def _collect(self, pending) -> None:
        for payload, info in pending:
            try:
                info.wait_for_publish(30)
            except (RuntimeError, ValueError):
                continue
            if info.is_published():
                self.acked.append(payload)

    def close(self) -> None:
        self.stop_flag.set()
        self.join(120)
        self.client.disconnect()
        self.client.loop_stop()


class GatewayProcess:
    """`dordt gateway run --config` as its own process, its wall clock under the soak's
    control (CLOCK_HOOK)."""

    def __init__(self, workdir: Path, config: Path, clock_file: Path):
        self.workdir, self.config = workdir, config
        hook = workdir / "clockhook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(CLOCK_HOOK)
        self.env = dict(os.environ, DORDT_SOAK_CLOCK_FILE=str(clock_file),
                        PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]))
        self.proc: subprocess.Popen | None = None
        self.log = open(workdir / "gateway.log", "ab")  # noqa: SIM115 - closed in close()
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dordt.cli", "gateway", "run", "--config",
             str(self.config)], cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
            stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("gateway:"):
            raise SystemExit(f"soak: the gateway did not start: {line!r} (see "
                             f"{self.workdir / 'gateway.log'})")
        self.starts += 1

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=120)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def write_config(workdir: Path, data_dir: Path, broker: Mosquitto, store_url: str) -> Path:
    cfg = workdir / "gw.toml"
    cfg.write_text(f"""
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"
keyring = "{workdir / 'keyring.json'}"
policy = "{REPO / 'tests' / 'data' / 'policy-passthrough.toml'}"
[mqtt]
url = "{broker.url}"
client_id = "soak-gateway"
[store]
url = "{store_url}"
batch_max = 500
timeout_s = 5.0
[health]
listen = "127.0.0.1:0"
[log]
format = "text"
level = "warning"
""")
    return cfg


def fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem is full, to the last block."""
    try:
        with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left for close()
            for size in (1 << 20, 4096, 512):
                try:
                    while True:
                        f.write(bytes(size))
                except OSError:
                    pass
    except OSError:
        pass


def expected_readings(acked: list[bytes], keyring) -> tuple[dict, set]:
    """(measurement, node, time_s) → {field: value} of every acknowledged frame with its
    node's real tag; and the keys of the forged ones."""
    expected: dict[tuple, dict] = {}
    forged: set[tuple] = set()
    for frame_bytes in acked:
        f = protocol.decode(frame_bytes)
        measurement = "node_status" if f.is_status else metrics.KIND_NAMES[f.kind]
        key = (measurement, protocol.node_name(f.node_id), f.timestamp)
        entry = keyring.get(f.node_id)
        if not protocol.verify(f, entry.keys[f.key_id]):
            forged.add(key)
            continue
        expected[key] = {metrics.BY_ID[i].name: metrics.BY_ID[i].to_value(raw)
                         for i, raw in f.metrics}
    return expected, forged - set(expected)


def stored_readings(vm: VictoriaMetrics) -> tuple[dict, int]:
    """(measurement, node, time_s) → {field: value} in the store, and how many samples
    are a second copy of a sample already there (same series and time)."""
    found: dict[tuple, dict] = {}
    duplicates = 0
    for series in vm.export('{__name__=~"(air|noise|crowd|node_status)_.*"}'):
        labels = series["metric"]
        name = labels["__name__"]
        measurement = next(m for m in MEASUREMENTS if name.startswith(m + "_"))
        field = name[len(measurement) + 1:]
        times = [ts // 1000 for ts in series["timestamps"]]
        duplicates += len(times) - len(set(times))
        for ts, value in zip(times, series["values"], strict=True):
            found.setdefault((measurement, labels["node"], ts), {})[field] = value
    return found, duplicates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=100,
                        help="infrastructure faults to inject (frame faults come on top)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-s", type=float, default=900,
                        help="stop injecting after this many seconds, however many were done")
    parser.add_argument("--p-frame", type=float, default=0.002,
                        help="probability per frame of each frame fault")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="dordt-soak-"))
    kinds = list(INFRA)
    notes = []
    data_dir = workdir / "data"
    data_dir.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data_dir)],
                       check=True)
        mounted = True
    else:
        kinds.remove("disk_full")
        notes.append("disk_full not injected: mounting a tmpfs needs root")
    clock_file = workdir / "clock"
    clock_file.write_text("0\n")

    (workdir / "broker").mkdir()
    (workdir / "vm").mkdir()
    broker = Mosquitto(workdir / "broker")
    vm = VictoriaMetrics(workdir / "vm")
    broker.start()
    vm.start()
    proxy = FaultProxy(vm.url)
    fleet = SimFleet(seed=args.seed, status_every=7)
    keyring = fleet.keyring()
    keyring.save(workdir / "keyring.json")
    cfg = write_config(workdir, data_dir, broker, proxy.url)
    gateway = GatewayProcess(workdir, cfg, clock_file)
    faults: Counter = Counter()
    publisher = None
    t0 = int(time.time()) - 24 * 3600
    try:
        gateway.start()
        time.sleep(0.5)  # its persistent session exists before anything is published
        publisher = Publisher(fleet, broker, t0, args.seed, args.p_frame)
        publisher.start()
        done = 0
        while done < args.faults and time.monotonic() - began < args.max_s:
            time.sleep(rng.uniform(0.3, 1.0))
            kind = rng.choice(kinds)
            if kind == "gateway_sigkill":
                gateway.kill()
                gateway.start()
            elif kind == "broker_restart":
                broker.stop()
                time.sleep(rng.uniform(0.1, 1.0))
                broker.start()
            elif kind == "store_down":
                proxy.down = True
                time.sleep(rng.uniform(1.0, 4.0))
                proxy.down = False
            elif kind in ("store_429", "store_503"):
                proxy.fail_next(rng.randint(1, 5), int(kind[-3:]), retry_after="1")
            elif kind == "disk_full":
                filler = data_dir / "filler.bin"
                fill(filler)
                time.sleep(rng.uniform(1.0, 3.0))
                filler.unlink()
            elif kind == "clock_jump":
                hours = rng.choice([-3, -2, -1, 1, 2, 3])
                clock_file.write_text(f"{hours * 3600}\n")
                time.sleep(rng.uniform(2.0, 4.0))
                clock_file.write_text("0\n")
            faults[kind] += 1
            done += 1
        inject_s = time.monotonic() - began
        publisher.close()
        proxy.down = False
        proxy.script.clear()
        # everything the broker holds reaches the gateway; the gateway drains, stops
        time.sleep(5)
        gateway.stop()
        final = subprocess.run(
            [sys.executable, "-m", "dordt.cli", "gateway", "run", "--config", str(cfg),
             "--duration", "10"], cwd=workdir, env=gateway.env, capture_output=True,
            text=True, timeout=180)
        if final.returncode != 0:
            notes.append(f"final drain run exited {final.returncode}: {final.stderr[-300:]}")
        vm.flush()
        for name, fault in zip(FRAME, publisher.pipeline.faults, strict=True):
            faults[name] = fault.affected
        expected, forged = expected_readings(publisher.acked, keyring)
        found, duplicated = stored_readings(vm)
        lost = [k for k in expected if k not in found]
        wrong = [k for k, want in expected.items() if k in found and (
            set(found[k]) - {"batch"} != set(want) or not all(
                math.isclose(found[k][name], value, rel_tol=1e-12, abs_tol=1e-12)
                for name, value in want.items()))]
        forged_in_store = [k for k in forged if k in found]
        # A point no published frame explains would be a reading stored twice under
        # another key (or invented); frames published but not acknowledged may be there.
        sent, _ = expected_readings(publisher.published, keyring)
        unexplained = [k for k in found if k not in sent]
        # The store is configured as production is (README: dedup, so a re-sent point
        # overwrites itself, as InfluxDB does), so also count what arrived more than once.
        inserted = sum(float(line.rsplit(" ", 1)[1]) for line in vm._get("/metrics")
                       .splitlines() if line.startswith("vm_rows_inserted_total")
                       and 'type="influx"' in line)
        samples = sum(len(x["values"]) for x in vm.export('{__name__=~".+"}'))
        # readings the gateway evicted on purpose (disk full, bounds) leave gap records
        evicted = sum(sum(s["values"]) for s in vm.export('{__name__="gap_readings"}'))
        times = [k[2] for k in expected]
        verify = subprocess.run(
            [sys.executable, "-m", "dordt.cli", "gateway", "verify", "--store", vm.url,
             "--pubkey", str(data_dir / "gateway.pub"), "--gateway", GATEWAY_ID,
             "--from", str(min(times) - 60), "--to", str(max(times) + 60),
             "--audit-log", str(data_dir / "audit.log")],
            capture_output=True, text=True, timeout=300)
        batches = verify.stdout.splitlines()[0] if verify.stdout else verify.stderr.strip()
        result = {
            "faults_by_kind": dict(sorted(faults.items())),
            "faults": sum(faults.values()),
            "frames": len(expected),
            "published": len(publisher.published),
            "acked": len(publisher.acked),
            "evicted_with_gap_records": int(evicted),
            "lost": len(lost),
            "duplicated_in_store": duplicated,
            "wrong_values": len(wrong),
            "forged_in_store": len(forged_in_store),
            "unexplained_in_store": len(unexplained),
            # every row VictoriaMetrics took (re-sends included) and the samples it holds
            "rows_written": int(inserted),
            "rows_stored": samples,
            "forged_acked": len(forged),
            "provenance_ok": verify.returncode == 0,
            "provenance": batches,
            "gateway_starts": gateway.starts,
            "inject_s": round(inject_s, 1),
            "wall_s": round(time.monotonic() - began, 1),
        }
        if notes:
            result["notes"] = notes
        if lost:
            result["lost_examples"] = [list(k) for k in sorted(lost)[:5]]
        if wrong:
            result["wrong_examples"] = [[list(k), expected[k], found[k]]
                                        for k in sorted(wrong)[:3]]
        if verify.returncode != 0:
            result["verify_output"] = (verify.stdout + verify.stderr)[-1500:]
        print(json.dumps(result), flush=True)
        ok = (not lost and not duplicated and not wrong and not forged_in_store
              and not unexplained and verify.returncode == 0)
        return 0 if ok else 1
    finally:
        if publisher is not None and publisher.is_alive():
            publisher.close()
        gateway.close()
        proxy.close()
        vm.stop()
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(data_dir)], check=False)
        if args.keep:
            print(f"soak: work folder {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
