"""Gateway throughput, measured in one run against real Mosquitto and VictoriaMetrics
started here on loopback (the test fixtures' classes), each beside a baseline:

1. core pipeline (decode, verify, anonymise, durable commit) on one core;
2. end to end, MQTT QoS 1 → gateway → VictoriaMetrics, beside a bare paho subscriber on
   the same broker with the same publishers; readings lost are counted;
3. draining 1,000,000 buffered readings into VictoriaMetrics, beside a bare
   influxdb-client loop of gzip'd 5,000-line batches;
4. the gateway's peak RSS: each gateway measurement runs in a fresh process that holds
   the gateway and nothing else of the bench — frames, publishers, subscribers and the
   backlog's making live in other processes, as they would on a lamppost.

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

# Only the standard library at module level: gateway processes are spawned fresh and import
# this module, so what they hold is the gateway's.


def fleet_frames(rounds: int, t0: int, seed: int = 1):
    from hardware.sites import load_placements
    from simulators.fleet import SimFleet

    fleet = SimFleet(load_placements(), seed=seed, status_every=0)
    frames = []
    for r in range(rounds):
        frames += list(fleet.tick(t0 + 10 * r))
    return fleet, frames


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM).  Not getrusage's ru_maxrss: Linux carries
    that over from the forked parent into an exec'd child, so a fresh child would report
    the bench's own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spawn(target, *args) -> tuple[mp.Process, object]:
    """`target(*args, conn)` in a fresh interpreter (spawn: nothing inherited, so its RSS
    is its own); returns the process and our end of the pipe."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, child))
    p.start()
    return p, parent


def in_child(target, *args) -> dict:
    p, conn = spawn(target, *args)
    result = conn.recv()
    p.join(600)
    return result


# -- 1. core -----------------------------------------------------------------------------------


def core_child(keyring_path: str, frames: list[tuple[str, bytes]], t0: int, out) -> None:
    """The pipeline on one core, beside the issue's two reference figures measured here, in
    this process, just before: HMAC decode+verify alone (the reference codec with prepared
    keys) and batched SQLite WAL inserts of rows as large as the outbox's (groups of 2,000,
    synchronous=FULL, as the outbox commits).  This machine's speed drifts by up to 2x
    from minute to minute (a shared VM), so the ratios are the steadier figures."""
    import sqlite3

    from firmware import protocol
    from fleet.keyring import Keyring
    from gateway.forward.local import LocalStore
    from gateway.model import Envelope
    from gateway.pipeline import Gateway

    keyring = Keyring.load(keyring_path)
    keys = {e.node_id: protocol.PreparedKey(e.keys[max(e.keys)]) for e in keyring}
    by_node = [(keys[struct_node(f)], f) for _, f in frames]
    start = time.perf_counter()
    for key, f in by_node:
        protocol.open_frame(f, key)
    decode_verify = len(frames) / (time.perf_counter() - start)
    from gateway.verify import Verifier

    verifier = Verifier(keyring)
    envelopes = [Envelope("mqtt", topic, f, t0) for topic, f in frames]
    start = time.perf_counter()
    for env in envelopes:
        verifier.check(env)
    verify_stage = len(frames) / (time.perf_counter() - start)
    del envelopes, verifier
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(f"{d}/ref.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, node TEXT, time_s INTEGER,"
                   " policy INTEGER, line TEXT)")
        line = "air,kind=air,node=0a000001,site=spz-01,zone=spoorzone " + ",".join(
            f"metric_{i}={i * 1.1!r}" for i in range(7))
        rows = [(f"{i % 27:08x}", t0 + i, 1, line) for i in range(2000)]
        start = time.perf_counter()
        for _ in range(0, len(frames), 2000):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO t (node, time_s, policy, line) VALUES (?,?,?,?)", rows)
            db.execute("COMMIT")
        inserts = len(range(0, len(frames), 2000)) * 2000 / (time.perf_counter() - start)
        db.close()
        gw = Gateway(keyring, LocalStore(f"{d}/s.sqlite"), f"{d}/gw")
        start = time.perf_counter()
        for i in range(0, len(frames), 2000):
            gw.process([Envelope("mqtt", topic, f, t0) for topic, f in frames[i:i + 2000]])
        elapsed = time.perf_counter() - start
        accepted = gw.stats.accepted
        gw.stop(0)
    out.send({"core_readings_per_s": len(frames) / elapsed, "core_accepted": accepted,
              "decode_verify_per_s": decode_verify, "inserts_per_s": inserts,
              "verify_stage_per_s": verify_stage,
              "compiled": __import__("gateway.verify").verify._speedups is not None,
              "core_rss_mb": peak_rss_mb()})


def struct_node(frame: bytes) -> int:
    return int.from_bytes(frame[4:8], "big")  # header: version kind flags key_id node_id


# -- 2. end to end -----------------------------------------------------------------------------


def publish(host: str, port: int, frames, client_id: str) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.connect(host, port)
    c.loop_start()
    infos = [c.publish(topic, f, qos=1) for topic, f in frames]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def publishers(host, port, frames, n_publishers, tag, ready, go, out) -> None:
    """The publishers, in a process of their own: each node's frames through one
    publisher, in order, as a node sends them."""
    nodes = sorted({topic for topic, _ in frames})
    share = {topic: i % n_publishers for i, topic in enumerate(nodes)}
    parts = [[(t, f) for t, f in frames if share[t] == i] for i in range(n_publishers)]
    threads = [threading.Thread(target=publish, args=(host, port, parts[i], f"{tag}-{i}"))
               for i in range(n_publishers)]
    ready.set()
    go.wait(60)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send({"published": len(frames)})


def bare_subscriber(host, port, n, ready, out) -> None:
    import paho.mqtt.client as mqtt

    got = [0]
    done = threading.Event()

    def on_message(client, userdata, msg):
        got[0] += 1
        if got[0] >= n:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare-sub")
    sub.on_message = on_message
    sub.max_inflight_messages_set(1000)
    sub.connect(host, port)
    sub.subscribe("dordt/v1/+/+/up", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    ready.set()
    done.wait(300)
    done_at = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process
    sub.disconnect()
    sub.loop_stop()
    out.send({"got": got[0], "done_at": done_at})


def e2e_child(host, port, vm_url, keyring_path, n, client_id, ready, out) -> None:
    from fleet.keyring import Keyring
    from gateway.forward.influx import InfluxStore
    from gateway.pipeline import Gateway

    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(Keyring.load(keyring_path), InfluxStore(vm_url), f"{d}/gw",
                     f"mqtt://{host}:{port}", client_id=client_id)
        gw.start()
        gw.ingest.wait_connected(10)
        time.sleep(0.5)
        ready.set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if gw.outbox.counters().get("forwarded", 0) >= n:
                break
            time.sleep(0.01)
        done_at = time.perf_counter()
        forwarded = gw.outbox.counters().get("forwarded", 0)
        gw.stop(5)
    out.send({"got": forwarded, "done_at": done_at, "rss_mb": peak_rss_mb()})


def receiver_rate(receiver, receiver_args, host, port, frames, n_publishers, tag) -> dict:
    """Start the receiver and the publishers (separate processes), then time from the
    go until the receiver has everything."""
    ctx = mp.get_context("spawn")
    ready, pub_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    rp, rconn = spawn(receiver, *receiver_args, ready)
    pp, pconn = spawn(publishers, host, port, frames, n_publishers, tag, pub_ready, go)
    ready.wait(60)
    pub_ready.wait(60)
    start = time.perf_counter()
    go.set()
    result = rconn.recv()
    pconn.recv()
    pp.join(60)
    rp.join(60)
    result["rate"] = result["got"] / (result["done_at"] - start)
    return result


# -- 3. drain ----------------------------------------------------------------------------------


def readings(n: int, t0: int, start: int = 0):
    from gateway.model import Reading

    out = []
    for i in range(start, start + n):
        node = i % 1000
        out.append(Reading(node=f"0b{node:06x}", kind="air", zone="spoorzone", site="spz-01",
                           counter=i, time_s=t0 + 10 * (i // 1000), window_s=10,
                           fields={"temperature_c": 12.5 + (i % 7) / 10, "humidity_pct": 61.0,
                                   "pm25_ugm3": 8.2}))
    return out


def build_backlog(path: str, n: int, t0: int, out) -> None:
    """A gateway's outbox holding `n` readings (as after a long store outage)."""
    from gateway.buffer import Outbox

    box = Outbox(path)
    for i in range(0, n, 20_000):
        box.commit(readings(min(20_000, n - i), t0, i), {})
    box.close()
    out.send({})


def drain_child(path: str, vm_url: str, out) -> None:
    """A gateway restarting on that outbox: drain it into the store."""
    from gateway.buffer import Outbox
    from gateway.forward.forwarder import Forwarder, Provenance
    from gateway.forward.influx import InfluxStore
    from gateway.provenance import AuditLog, GatewayIdentity

    d = str(Path(path).parent)
    box = Outbox(path)
    prov = Provenance(GatewayIdentity.load_or_create(d, "bench-gw"), AuditLog(f"{d}/a.log"))
    fwd = Forwarder(box, InfluxStore(vm_url, timeout_s=30), provenance=prov)
    start = time.perf_counter()
    sent = 0
    while True:
        k = fwd.drain()  # as the forwarder thread does
        if not k:
            break
        sent += k
    elapsed = time.perf_counter() - start
    box.close()
    out.send({"drain_1m_s": elapsed, "drain_sent": sent, "drain_rss_mb": peak_rss_mb()})


def drain_baseline(vm_url: str, n: int) -> float:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    from gateway.forward import line_protocol

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts (for a smoke run)")
    args = ap.parse_args()
    from tests.fixtures.services import Mosquitto, VictoriaMetrics

    core_rounds, e2e_rounds, drain_n = (200, 100, 100_000) if args.quick else (2000, 1000,
                                                                               1_000_000)
    e2e_pairs = 1 if args.quick else 3
    n_pub = 4
    with tempfile.TemporaryDirectory() as work:
        t0 = int(time.time()) - 86400
        fleet, frames = fleet_frames(core_rounds, t0)
        keyring_path = f"{work}/keyring.json"
        fleet.keyring().save(keyring_path)
        # three fresh processes: this VM's speed wanders by up to 2x within a minute, so
        # the best (timeit's advice: the others are the machine, not the code) and the
        # median are both given, each run beside its own reference figures
        runs = sorted((in_child(core_child, keyring_path, frames, t0) for _ in range(3)),
                      key=lambda c: c["core_readings_per_s"])
        core, median = runs[-1], runs[1]["core_readings_per_s"]
        core["core_rss_mb"] = max(c["core_rss_mb"] for c in runs)
        rate, dv, ins = (core["core_readings_per_s"], core["decode_verify_per_s"],
                         core["inserts_per_s"])
        print(f"core pipeline: {rate:,.0f} readings/s on one core, best of 3 runs (median "
              f"{median:,.0f}; {len(frames):,} readings each, {core['core_accepted']:,} "
              f"accepted)")
        print(f"  same process, just before: HMAC decode+verify alone {dv:,.0f}/s "
              f"(issue's reference machine ~440k), batched SQLite WAL inserts {ins:,.0f}/s "
              f"(~640k); the pipeline runs at {rate / dv:.0%} and {rate / ins:.0%} of them "
              f"(the goal, 100k, is {100_000 / 440_000:.0%} and {100_000 / 640_000:.0%})")
        print(f"  the gateway's verify stage alone (fast path"
              f"{'' if core['compiled'] else ', pure Python'}): "
              f"{core['verify_stage_per_s']:,.0f}/s")
        broker = Mosquitto(Path(work) / "mosquitto")
        vm = VictoriaMetrics(Path(work) / "vm")
        broker.start()
        vm.start()
        try:
            host, port = broker.host, broker.port
            fleet, frames = fleet_frames(e2e_rounds, int(time.time()) - 8 * 86400, seed=3)
            fleet.keyring().save(keyring_path)
            # Bare subscriber and gateway take turns, three times each, on the same broker
            # with the same publishers: the machine's drift then touches both alike, and
            # each gateway run is compared with the bare run just before it.
            bases, e2es, lost = [], [], 0
            for rep in range(e2e_pairs):
                base = receiver_rate(bare_subscriber, (host, port, len(frames)), host, port,
                                     frames, n_pub, f"bench-base-{rep}")
                _, run_frames = fleet_frames(e2e_rounds,
                                             int(time.time()) - (7 - rep) * 86400, seed=3)
                e2e = receiver_rate(e2e_child, (host, port, vm.url, keyring_path,
                                                len(run_frames), f"bench-gateway-{rep}"),
                                    host, port, run_frames, n_pub, f"bench-e2e-{rep}")
                lost += len(run_frames) - e2e["got"]
                bases.append(base["rate"])
                e2es.append(e2e)
                print(f"  turn {rep + 1}: bare paho QoS 1 subscriber {base['rate']:,.0f} "
                      f"messages/s, then the gateway end to end {e2e['rate']:,.0f} readings/s "
                      f"({e2e['rate'] / base['rate']:.0%}), lost {len(run_frames) - e2e['got']}")
            base_rate = sorted(bases)[len(bases) // 2]
            e2e_rate = sorted(e["rate"] for e in e2es)[len(e2es) // 2]
            print(f"bare paho QoS 1 subscriber: {base_rate:,.0f} messages/s, median of "
                  f"{len(bases)} ({len(frames):,} messages each, {n_pub} publishers in another "
                  f"process)")
            print(f"end to end MQTT QoS 1 → gateway → VictoriaMetrics: {e2e_rate:,.0f} "
                  f"readings/s, median of {len(e2es)} ({e2e_rate / base_rate:.0%} of the bare "
                  f"subscriber's median), lost {lost} of {len(e2es) * len(frames):,}")
            drain_base = drain_baseline(vm.url, drain_n)
            backlog = f"{work}/drain/outbox.sqlite"
            in_child(build_backlog, backlog, drain_n, int(time.time()) - 20 * 86400)
            drain = in_child(drain_child, backlog, vm.url)
            print(f"drain {drain_n:,} buffered readings: {drain['drain_1m_s']:.2f} s "
                  f"(bare influxdb-client loop of 5,000-line gzip batches: {drain_base:.2f} s)")
        finally:
            broker.stop()
            vm.stop()
    e2e_rss = max(e["rss_mb"] for e in e2es)
    rss = max(core["core_rss_mb"], e2e_rss, drain["drain_rss_mb"])
    print(f"peak RSS of the gateway processes: {rss:.0f} MB "
          f"(core {core['core_rss_mb']:.0f}, e2e {e2e_rss:.0f}, "
          f"drain {drain['drain_rss_mb']:.0f})")
    result = {
        "core_readings_per_s": round(core["core_readings_per_s"]),
        "core_readings_per_s_median": round(median),
        "core_decode_verify_per_s": round(dv),
        "core_sqlite_inserts_per_s": round(ins),
        "e2e_readings_per_s": round(e2e_rate),
        "baseline_readings_per_s": round(base_rate),
        "lost": lost,
        "drain_1m_s": round(drain["drain_1m_s"], 2),
        "drain_baseline_s": round(drain_base, 2),
        "peak_rss_mb": round(rss, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
