"""Simulator throughput: frame generation, a week of a 300-node fleet, replay into Mosquitto.

Prints, each beside a baseline measured in the same run:

1. frame-level generate+sign on one core (simulators/framegen.py, 300 nodes, 10 s windows,
   zone model included) — beside the reference codec's `protocol.encode` on the same
   fields (values already computed);
2. the time to write a week of 300 nodes at a 10 s cadence to a recording (~18 M frames,
   both cores, into a temporary directory that is deleted afterwards) — beside the
   one-core rate of step 1;
3. the replay rate into a Mosquitto this script starts on 127.0.0.1 (200,000 frames, QoS 1
   as recorded, re-based and re-signed as `dordt sim replay --keyring` does; and as
   recorded) — beside a bare paho-mqtt QoS 1 publisher (20,000 frames).

Every loop is bounded in count and time (the week aborts after WEEK_LIMIT_S).  Figures
are what this machine does now: other work on it lowers them.  Last line: one JSON object.

    .venv/bin/python bench/simulator_throughput.py [--skip-week]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware import protocol  # noqa: E402
from simulators.framegen import FrameGenerator, record, scaled_placements  # noqa: E402
from simulators.recording import RecordingReader  # noqa: E402
from simulators.replay import MqttPublisher, Replayer, rebase  # noqa: E402
from simulators.zonemodel import local_to_utc  # noqa: E402

NODES = 300
CADENCE_S = 10
WEEK_S = 7 * 86400
WEEK_LIMIT_S = 900.0
GEN_WINDOWS = 600  # 180,000 frames
REPLAY_FRAMES = 200_000
PAHO_FRAMES = 20_000


def start_of_week() -> int:
    import datetime as dt

    return local_to_utc(dt.date(2026, 3, 9), 0)  # a Monday


def generate_rate(gen: FrameGenerator, start: int) -> tuple[float, float, int]:
    """(generator frames/s, protocol.encode frames/s, frames) on this core."""
    ends = list(gen.window_ends(start, start + GEN_WINDOWS * CADENCE_S))
    gen.frames(ends[0])  # warm the zone model's caches for the first minute
    t0 = time.perf_counter()
    frames = 0
    for t in ends:
        frames += len(gen.frames(t))
    gen_rate = frames / (time.perf_counter() - t0)
    # baseline: the reference encoder, given the same fields already decoded
    fields = []
    for t in ends[:60]:
        for k, frame in gen.frames(t):
            f = protocol.decode(frame)
            fields.append((gen.nodes[k].key, f.kind, f.node_id, f.counter, f.timestamp,
                           f.window_s, f.metrics, f.flags))
    n = 0
    t0 = time.perf_counter()
    while n < frames and time.perf_counter() - t0 < 30:
        for key, kind, node, counter, ts, window, pairs, flags in fields:
            protocol.encode(key, kind, node, counter, ts, window, pairs, flags=flags)
        n += len(fields)
    return gen_rate, n / (time.perf_counter() - t0), frames


def week(gen: FrameGenerator, start: int, workdir: Path) -> tuple[float | None, int, int]:
    """(seconds, frames, bytes) for a week of the fleet on both cores; None if aborted."""
    path = workdir / "week.rec"
    began = time.perf_counter()

    def guard(count: int, sim_s: float) -> None:
        if time.perf_counter() - began > WEEK_LIMIT_S:
            raise TimeoutError(f"the week took over {WEEK_LIMIT_S:.0f} s; aborted")
        day = (sim_s - start) / 86400
        if abs(day - round(day)) < 1e-9:
            print(f"  day {round(day)}: {count:,} frames, {time.perf_counter() - began:.0f} s",
                  flush=True)

    try:
        count = record(gen, path, start, start + WEEK_S, {"bench": "week"},
                       workers=os.cpu_count() or 1, level=1, on_progress=guard)
    except TimeoutError as exc:
        print(f"  {exc}")
        return None, 0, 0
    seconds = time.perf_counter() - began
    size = path.stat().st_size
    path.unlink()
    return seconds, count, size


# -- Mosquitto -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("mosquitto not found: run `make test` once, it installs it")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0",
             "persistence false", f"log_dest file {workdir / 'mosquitto.log'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def paho_rate(url: str, messages) -> float:
    import paho.mqtt.client as mqtt

    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    try:
        t0 = time.perf_counter()
        infos = [client.publish(m.topic, m.payload, qos=1) for m in messages]
        for info in infos:
            info.wait_for_publish(60)
        return len(infos) / (time.perf_counter() - t0)
    finally:
        client.disconnect()
        client.loop_stop()


def replay_rates(gen: FrameGenerator, start: int, workdir: Path) -> dict[str, float]:
    windows = REPLAY_FRAMES // NODES + 1
    path = workdir / "replay.rec"
    record(gen, path, start, start + windows * CADENCE_S)
    ring = gen.keyring()
    proc, url = start_mosquitto(workdir)
    try:
        out = {}
        for name, rebased in (("replay_resigned_per_s", True), ("replay_as_recorded_per_s",
                                                                 False)):
            publisher = MqttPublisher(url, f"bench-{name}")
            try:
                stream = RecordingReader(path)
                if rebased:
                    stream = rebase(stream, int(time.time()) - 86400, ring)
                stats = Replayer(publisher).run(stream, limit=REPLAY_FRAMES, deadline_s=120)
            finally:
                publisher.close()
            out[name] = stats.rate_per_s
            print(f"  {name:28} {stats.published:,} frames in {stats.elapsed_s:.2f} s")
        sample = []
        for msg in RecordingReader(path):
            sample.append(msg)
            if len(sample) >= PAHO_FRAMES:
                break
        out["paho_qos1_per_s"] = paho_rate(url, sample)
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-week", action="store_true", help="leave out the week (~1-2 min)")
    args = parser.parse_args()
    start = start_of_week() + 8 * 3600  # Monday 08:00, the commuter peak
    gen = FrameGenerator(scaled_placements(NODES), seed=1, cadence_s=CADENCE_S,
                         status_every=60)
    print(f"fleet: {NODES} nodes, {CADENCE_S} s windows, {os.cpu_count()} cores")

    gen_rate, encode_rate, frames = generate_rate(gen, start)
    print(f"1. generate+sign, one core: {gen_rate:12,.0f} frames/s  ({frames:,} frames; "
          f"goal >= 200,000)")
    print(f"   baseline protocol.encode: {encode_rate:12,.0f} frames/s  (fields precomputed; "
          f"generator x{gen_rate / encode_rate:.2f})")

    result: dict[str, float | None] = {"generate_frames_per_s": round(gen_rate)}
    with tempfile.TemporaryDirectory(prefix="dordt-bench-") as tmp:
        workdir = Path(tmp)
        if args.skip_week:
            result["week_300_nodes_s"] = None
        else:
            expected = NODES * WEEK_S // CADENCE_S
            print(f"2. a week of {NODES} nodes (~{expected / 1e6:.1f} M frames + status frames),"
                  f" {os.cpu_count()} processes:")
            seconds, count, size = week(gen, start_of_week(), workdir)
            if seconds is not None:
                print(f"   {count:,} frames in {seconds:.1f} s ({count / seconds:,.0f} frames/s; "
                      f"goal <= 120 s), {size / 1e6:,.0f} MB ({size / count:.1f} B/frame)")
                print(f"   baseline: one core at step 1's rate would take "
                      f"{count / gen_rate:.0f} s without writing")
            result["week_300_nodes_s"] = None if seconds is None else round(seconds, 1)
        print(f"3. replay into Mosquitto on loopback ({REPLAY_FRAMES:,} frames, QoS 1):")
        rates = replay_rates(gen, start, workdir)
        print(f"   re-based and re-signed: {rates['replay_resigned_per_s']:12,.0f} frames/s "
              "(goal >= 20,000)")
        print(f"   as recorded:            {rates['replay_as_recorded_per_s']:12,.0f} frames/s")
        print(f"   baseline paho QoS 1:    {rates['paho_qos1_per_s']:12,.0f} frames/s "
              f"({PAHO_FRAMES:,} frames)")
    result["replay_frames_per_s"] = round(rates["replay_resigned_per_s"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
