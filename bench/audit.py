"""Audit throughput: the time to audit a simulated week of the three zones (`dordt audit
traffic` + `dordt audit store`), beside the time it took to record it.

Steps, all on this machine, into a temporary directory deleted afterwards:

1. record: a week of the three zones (27 nodes, 60 s windows, a status frame every 10)
   written to a recording by the frame generator (simulators/framegen.py), then replayed
   at full speed through a Mosquitto this script starts on 127.0.0.1 into a real gateway
   (default policy, noise and an epsilon budget on in one zone) that forwards to a local
   SQLite store.  "Recording time" is generate + replay until the outbox is empty.
2. audit: the traffic audit of the recording and the store audit of the gateway's data
   directory and store, timed separately.

Printed: each step's seconds, frames, and the ratios audit / recording and audit /
simulated time (a week).  Bounded: one week of 27 nodes (~290,000 frames); the replay
waits at most 600 s.  Last line: one JSON object.

    .venv/bin/python bench/audit.py [--days N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit.manifest import load_manifest  # noqa: E402
from audit.store import audit_store  # noqa: E402
from audit.traffic import audit_traffic, open_recording  # noqa: E402
from gateway.anonymise import load_policy  # noqa: E402
from gateway.forward.local import LocalStore  # noqa: E402
from gateway.pipeline import Gateway  # noqa: E402
from simulators import framegen  # noqa: E402
from simulators.recording import RecordingReader  # noqa: E402
from simulators.replay import MqttPublisher, Replayer  # noqa: E402

POLICY = """version = 1
[defaults]
crowd_min_count = 5
crowd_noise_epsilon = 0.0
daily_epsilon_budget = 0.0
crowd_time_resolution_s = 60
noise_time_resolution_s = 0
[zones.maasterras]
crowd_noise_epsilon = 0.5
daily_epsilon_budget = 200.0
"""
REPLAY_LIMIT_S = 600.0


def main() -> None:
    from tests.fixtures.services import Mosquitto

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    span_s = args.days * 86400
    with tempfile.TemporaryDirectory(prefix="dordt-bench-audit-") as work:
        work = Path(work)
        gen = framegen.FrameGenerator(seed=5, cadence_s=60, status_every=10)
        # recent enough for the gateway's buffer (30 days max age)
        start = (int(time.time()) // 86400 - args.days) * 86400
        recording = work / "week.dordtrec"
        t0 = time.perf_counter()
        frames = framegen.record(gen, recording, start, start + span_s)
        generate_s = time.perf_counter() - t0
        policy_path = work / "policy.toml"
        policy_path.write_text(POLICY)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        gateway = Gateway(gen.keyring(), LocalStore(work / "store.sqlite"), work / "gw",
                          broker.url, client_id="bench-audit", policy_path=policy_path)
        gateway.start()
        try:
            if not gateway.ingest.wait_connected(10):
                raise SystemExit("the gateway did not connect to the broker")
            t0 = time.perf_counter()
            Replayer(MqttPublisher(broker.url, client_id="bench-audit-replay")).run(
                RecordingReader(recording), deadline_s=REPLAY_LIMIT_S)
            deadline = time.monotonic() + REPLAY_LIMIT_S
            while (gateway.stats.accepted < frames or gateway.outbox.depth()) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            replay_s = time.perf_counter() - t0
            accepted = gateway.stats.accepted
        finally:
            gateway.stop()
            broker.stop()
        if accepted != frames:
            raise SystemExit(f"the gateway accepted {accepted} of {frames} frames")

        policy = load_policy(policy_path)
        t0 = time.perf_counter()
        traffic = audit_traffic(open_recording(recording), load_manifest(), policy,
                                gen.keyring())
        traffic_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = audit_store(work / "gw", f"sqlite:{work / 'store.sqlite'}", policy,
                            keyring=gen.keyring())
        store_s = time.perf_counter() - t0

    record_s = generate_s + replay_s
    audit_s = traffic_s + store_s
    result = {
        "bench": "audit", "days": args.days, "nodes": len(gen.nodes), "frames": frames,
        "generate_s": round(generate_s, 2), "replay_through_gateway_s": round(replay_s, 2),
        "record_s": round(record_s, 2),
        "traffic_audit_s": round(traffic_s, 2), "store_audit_s": round(store_s, 2),
        "audit_s": round(audit_s, 2),
        "audit_over_record": round(audit_s / record_s, 3),
        "audit_over_simulated_time": round(audit_s / span_s, 7),
        "traffic_ok": traffic.ok, "store_ok": store.ok,
        "store_points": store.figures.get("store_points"),
        "traffic_frames_per_s": round(frames / traffic_s),
    }
    for check in (traffic, store):
        for line in check.lines()[:-1][:10]:
            print(f"{check.check} finding: {line}")
    print(f"recorded {frames} frames of {args.days} days in {record_s:.1f} s "
          f"(generate {generate_s:.1f} s, through Mosquitto and the gateway {replay_s:.1f} s)")
    print(f"audited in {audit_s:.1f} s (traffic {traffic_s:.1f} s, store {store_s:.1f} s): "
          f"{audit_s / record_s:.2f} x the recording time, "
          f"{audit_s / span_s:.2e} x the simulated time")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
