"""Gateway throughput, measured in one run against real Mosquitto and VictoriaMetrics
started here on loopback (the test fixtures' classes), each beside a baseline:

1. core pipeline (decode, verify, anonymise, durable commit) on one core;
2. end to end, MQTT QoS 1 → gateway → VictoriaMetrics, beside a bare paho subscriber on
   the same broker with the same publishers; readings lost are counted;
3. draining 1,000,000 buffered readings into VictoriaMetrics, beside a bare
   influxdb-client loop of gzip'd 5,000-line batches;
4. the gateway's peak RSS (each gateway measurement runs in a fresh child process).

Bounded in count and time; prints figures, gates nothing.  Last line: one JSON object.

    .venv/bin/python bench/gateway_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from gateway.forward import line_protocol  # noqa: E402
from gateway.model import Envelope, Reading  # noqa: E402
from hardware.sites import load_placements  # noqa: E402
from simulators.fleet import SimFleet  # noqa: E402


def fleet_frames(rounds: int, t0: int, seed: int = 1) -> tuple[SimFleet, list[tuple[str, bytes]]]:
    fleet = SimFleet(load_placements(), seed=seed, status_every=0)
    frames = []
    for r in range(rounds):
        frames += list(fleet.tick(t0 + 10 * r))
    return fleet, frames


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- 1. core -----------------------------------------------------------------------------------


def core_child(rounds: int, out) -> None:
    from gateway.forward.local import LocalStore
    from gateway.pipeline import Gateway

    t0 = int(time.time()) - 86400
    fleet, frames = fleet_frames(rounds, t0)
    envs = [Envelope("mqtt", topic, f, t0) for topic, f in frames]
    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(fleet.keyring(), LocalStore(f"{d}/s.sqlite"), f"{d}/gw")
        start = time.perf_counter()
        for i in range(0, len(envs), 2000):
            gw.process(envs[i:i + 2000])
        elapsed = time.perf_counter() - start
        gw.stop(0)
    out.send({"core_readings_per_s": len(envs) / elapsed, "core_rss_mb": peak_rss_mb()})


# -- 2. end to end -----------------------------------------------------------------------------


def publish(host: str, port: int, frames, client_id: str) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.connect(host, port)
    c.loop_start()
    infos = [c.publish(topic, f, qos=1) for topic, f in frames]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def publish_parallel(host, port, frames, n_publishers, tag) -> None:
    """Each node's frames go through one publisher, in order, as a node sends them."""
    nodes = sorted({topic for topic, _ in frames})
    share = {topic: i % n_publishers for i, topic in enumerate(nodes)}
    parts = [[(t, f) for t, f in frames if share[t] == i] for i in range(n_publishers)]
    threads = [threading.Thread(target=publish, args=(host, port, parts[i], f"{tag}-{i}"))
               for i in range(n_publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def baseline_subscriber_rate(host, port, frames, n_publishers) -> float:
    got = [0]
    done = threading.Event()

    def on_message(client, userdata, msg):
        got[0] += 1
        if got[0] >= len(frames):
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare-sub")
    sub.on_message = on_message
    sub.max_inflight_messages_set(1000)
    sub.connect(host, port)
    sub.subscribe("dordt/v1/+/+/up", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    start = time.perf_counter()
    publish_parallel(host, port, frames, n_publishers, "bench-base")
    done.wait(120)
    elapsed = time.perf_counter() - start
    sub.disconnect()
    sub.loop_stop()
    return got[0] / elapsed


def e2e_child(host, port, vm_url, rounds, n_publishers, out) -> None:
    from gateway.forward.influx import InfluxStore
    from gateway.pipeline import Gateway

    t0 = int(time.time()) - 7 * 86400
    fleet, frames = fleet_frames(rounds, t0, seed=2)
    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(fleet.keyring(), InfluxStore(vm_url), f"{d}/gw", f"mqtt://{host}:{port}",
                     client_id="bench-gateway")
        gw.start()
        gw.ingest.wait_connected(10)
        time.sleep(0.5)
        start = time.perf_counter()
        publish_parallel(host, port, frames, n_publishers, "bench-e2e")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            c = gw.outbox.counters()
            if c.get("forwarded", 0) >= len(frames):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        forwarded = gw.outbox.counters().get("forwarded", 0)
        gw.stop(5)
    out.send({"e2e_readings_per_s": forwarded / elapsed, "e2e_sent": len(frames),
              "e2e_forwarded": forwarded, "e2e_rss_mb": peak_rss_mb()})


# -- 3. drain ----------------------------------------------------------------------------------


def readings(n: int, t0: int, start: int = 0) -> list[Reading]:
    out = []
    for i in range(start, start + n):
        node = i % 1000
        out.append(Reading(node=f"0b{node:06x}", kind="air", zone="spoorzone", site="spz-01",
                           counter=i, time_s=t0 + 10 * (i // 1000), window_s=10,
                           fields={"temperature_c": 12.5 + (i % 7) / 10, "humidity_pct": 61.0,
                                   "pm25_ugm3": 8.2}))
    return out


def drain_child(vm_url: str, n: int, out) -> None:
    from gateway.buffer import Outbox
    from gateway.forward.forwarder import Forwarder, Provenance
    from gateway.forward.influx import InfluxStore
    from gateway.provenance import AuditLog, GatewayIdentity

    t0 = int(time.time()) - 20 * 86400
    with tempfile.TemporaryDirectory() as d:
        box = Outbox(f"{d}/outbox.sqlite")
        for i in range(0, n, 20_000):  # made a chunk at a time: RSS is the gateway's, not ours
            box.commit(readings(min(20_000, n - i), t0, i), {})
        prov = Provenance(GatewayIdentity.load_or_create(d, "bench-gw"), AuditLog(f"{d}/a.log"))
        fwd = Forwarder(box, InfluxStore(vm_url, timeout_s=30), provenance=prov)
        start = time.perf_counter()
        sent = 0
        while True:
            k = fwd.drain_once()
            if not k:
                break
            sent += k
        elapsed = time.perf_counter() - start
    out.send({"drain_1m_s": elapsed, "drain_sent": sent, "drain_rss_mb": peak_rss_mb()})


def drain_baseline(vm_url: str, n: int) -> float:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    t0 = int(time.time()) - 30 * 86400
    lines = [line_protocol(r) for r in readings(n, t0)]
    client = InfluxDBClient(url=vm_url, token="", org="dordt", enable_gzip=True)
    api = client.write_api(write_options=SYNCHRONOUS)
    start = time.perf_counter()
    for i in range(0, n, 5000):
        api.write(bucket="dordt", org="dordt", record=lines[i:i + 5000],
                  write_precision=WritePrecision.S)
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


def in_child(target, *args) -> dict:
    parent, child = mp.Pipe()
    p = mp.get_context("fork").Process(target=target, args=(*args, child))
    p.start()
    result = parent.recv()
    p.join(600)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts (for a smoke run)")
    args = ap.parse_args()
    from tests.fixtures.services import Mosquitto, VictoriaMetrics

    core_rounds, e2e_rounds, drain_n = (200, 100, 100_000) if args.quick else (2000, 1000,
                                                                               1_000_000)
    publishers = 4
    result: dict[str, float | int] = {}
    core = in_child(core_child, core_rounds)
    print(f"core pipeline: {core['core_readings_per_s']:,.0f} readings/s on one core "
          f"({core_rounds * 27:,} readings)")
    with tempfile.TemporaryDirectory() as work:
        broker = Mosquitto(Path(work) / "mosquitto")
        vm = VictoriaMetrics(Path(work) / "vm")
        broker.start()
        vm.start()
        try:
            n_e2e = e2e_rounds * 27
            _, frames = fleet_frames(e2e_rounds, int(time.time()) - 8 * 86400, seed=3)
            base = baseline_subscriber_rate(broker.host, broker.port, frames, publishers)
            print(f"bare paho QoS 1 subscriber: {base:,.0f} messages/s ({n_e2e:,} messages, "
                  f"{publishers} publishers)")
            e2e = in_child(e2e_child, broker.host, broker.port, vm.url, e2e_rounds, publishers)
            lost = e2e["e2e_sent"] - e2e["e2e_forwarded"]
            print(f"end to end MQTT QoS 1 → gateway → VictoriaMetrics: "
                  f"{e2e['e2e_readings_per_s']:,.0f} readings/s "
                  f"({e2e['e2e_readings_per_s'] / base:.0%} of the bare subscriber), "
                  f"lost {lost}")
            drain_base = drain_baseline(vm.url, drain_n)
            drain = in_child(drain_child, vm.url, drain_n)
            print(f"drain {drain_n:,} buffered readings: {drain['drain_1m_s']:.2f} s "
                  f"(bare influxdb-client loop of 5,000-line gzip batches: {drain_base:.2f} s)")
        finally:
            broker.stop()
            vm.stop()
    rss = max(core["core_rss_mb"], e2e["e2e_rss_mb"], drain["drain_rss_mb"])
    print(f"peak RSS of the gateway processes: {rss:.0f} MB "
          f"(core {core['core_rss_mb']:.0f}, e2e {e2e['e2e_rss_mb']:.0f}, "
          f"drain {drain['drain_rss_mb']:.0f})")
    result = {
        "core_readings_per_s": round(core["core_readings_per_s"]),
        "e2e_readings_per_s": round(e2e["e2e_readings_per_s"]),
        "baseline_readings_per_s": round(base),
        "lost": lost,
        "drain_1m_s": round(drain["drain_1m_s"], 2),
        "drain_baseline_s": round(drain_base, 2),
        "peak_rss_mb": round(rss, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
