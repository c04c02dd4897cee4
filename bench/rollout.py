"""Rollout step cost: how long `dordt fleet release rollout` and `step` take on a fleet of
N nodes whose status points fill a local store (the evidence a step reads).

Steps, all on this machine, into a temporary directory deleted afterwards:

1. a registry-side rollout book (migration 0010) with one release published (the test
   fixture's release, tests/fleet/release_fixture.py, until fleet/release.py builds one);
2. a LocalStore with `--hours` of `node_status` points of every node (one every 100 s, the
   firmware's default status cadence), written through the store's own `write()`;
3. timed: starting a rollout (the canary's baseline read), a step with the canary still
   waiting, the advance to one zone, a waiting step in that zone, the advance to every
   other zone, and the step that finishes.

Baseline, same run: one `LocalStore.points("node_status", "firmware_version")` over the
whole window (what a step would cost if it read every node's status instead of each
offered node's, from its offer on).  Printed: each figure in seconds and the ratio of the
costliest step to the baseline.  Bounded: at most 2,000 nodes and 48 hours.  Last line: one
JSON object.

    .venv/bin/python bench/rollout.py [--nodes 300] [--hours 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from fleet.registry import Registry  # noqa: E402
from fleet.rollout import (  # noqa: E402
    FleetNode,
    RolloutBook,
    Rollouts,
    StoreEvidence,
    load_public_key,
    publish,
    version_code,
)
from gateway.forward.local import LocalStore  # noqa: E402
from gateway.model import Reading  # noqa: E402
from tests.fleet.release_fixture import make_release, write_public_key  # noqa: E402

ZONES = ("spoorzone", "maasterras", "spuiboulevard")
STATUS_EVERY_S = 100
T0 = 1_790_000_000


def status(node: FleetNode, t: int, firmware: int, errors: int = 0) -> Reading:
    return Reading(node.node, node.kind, node.zone, "bench", 0, t, 10,
                   {"firmware_version": float(firmware), "error_count": float(errors),
                    "uptime_s": float(t % 86400)}, status=True)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--hours", type=int, default=24)
    args = ap.parse_args()
    if not 3 <= args.nodes <= 2000 or not 1 <= args.hours <= 48:
        ap.error("--nodes 3..2000, --hours 1..48")
    old, new = version_code("0.1.0"), version_code("1.2.0")
    nodes = [FleetNode(f"{i:08x}", "air", ZONES[i % 3], None, (f"gw-{ZONES[i % 3]}",))
             for i in range(1, args.nodes + 1)]
    with tempfile.TemporaryDirectory(prefix="dordt-bench-rollout-") as d:
        tmp = Path(d)
        reg = Registry.open(tmp / "fleet.sqlite", create=True)
        key = Ed25519PrivateKey.generate()
        book = RolloutBook(reg.db)
        publish(book, make_release(tmp / "r7", key, 7),
                load_public_key(write_public_key(tmp / "release.pub", key)),
                tmp / "releases", T0)
        store = LocalStore(tmp / "store.sqlite")
        fill_s, _ = timed(lambda: [store.write([status(n, t, old, 1) for t in range(
            T0 - args.hours * 3600, T0, STATUS_EVERY_S)]) for n in nodes])
        points = args.nodes * args.hours * 3600 // STATUS_EVERY_S
        baseline_s, _ = timed(store.points, "node_status", "firmware_version",
                              since_s=T0 - args.hours * 3600)
        rollouts = Rollouts(book, tmp / "offers", StoreEvidence(f"sqlite:{tmp / 'store.sqlite'}"))
        figures = {}
        figures["start_s"], _ = timed(rollouts.start, 7, nodes, T0, canaries=[nodes[0].node])
        figures["step_waiting_canary_s"], _ = timed(rollouts.step, 7, T0 + 30)
        store.write([status(nodes[0], T0 + 60, new)])
        figures["step_advance_zone_s"], r = timed(rollouts.step, 7, T0 + 70)
        assert r.stage_name.startswith("zone "), r.line
        figures["step_waiting_zone_s"], _ = timed(rollouts.step, 7, T0 + 80)
        zone = [n for n in nodes if n.zone == nodes[0].zone][1:]
        store.write([status(n, T0 + 120, new) for n in zone])
        figures["step_advance_all_s"], r = timed(rollouts.step, 7, T0 + 130)
        assert r.stage_name.startswith("zones "), r.line
        store.write([status(n, T0 + 200, new) for n in nodes if n.zone != nodes[0].zone])
        figures["step_done_s"], r = timed(rollouts.step, 7, T0 + 210)
        assert r.state == "done", r.line
        store.close()
        reg.close()
    worst = max(v for k, v in figures.items() if k.startswith("step_"))
    print(f"store: {args.nodes} nodes, {points:,} status points over {args.hours} h "
          f"(filled in {fill_s:.1f} s)")
    for name, value in figures.items():
        print(f"{name:<24} {value:8.3f} s")
    print(f"baseline: every node's firmware_version over the window {baseline_s:.3f} s; "
          f"costliest step / baseline = {worst / baseline_s:.2f}")
    print(json.dumps({"nodes": args.nodes, "status_points": points,
                      **{k: round(v, 4) for k, v in figures.items()},
                      "baseline_read_all_s": round(baseline_s, 4),
                      "worst_step_over_baseline": round(worst / baseline_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
