"""`dordt demo`: run the whole data path for a bounded time and summarise it."""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dordt.errors import UserError

MAX_DURATION_S = 3600.0


def register(groups) -> None:
    p = groups.add_parser(
        "demo", help="run the demo pipeline (embedded broker and store) and summarise it",
        description="Simulated nodes of all three kinds in all three zones publish signed "
        "frames; the gateway verifies, buffers and forwards them to the store; a summary "
        "per zone and kind follows. No services needed.")
    p.add_argument("--duration", type=float, default=20.0, metavar="S",
                   help="seconds to run (default 20)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between readings of each node (default 2)")
    p.add_argument("--broker", metavar="URL",
                   help="a real MQTT broker, mqtt://HOST:PORT (default: in-process broker)")
    p.add_argument("--store", metavar="SPEC",
                   help="sqlite:PATH or http://HOST:PORT of InfluxDB/VictoriaMetrics "
                   "(default: sqlite store in the data dir)")
    p.add_argument("--data-dir", default="dordt-demo", metavar="DIR",
                   help="where the keyring, buffer and local store go (default ./dordt-demo)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--no-faults", action="store_true",
                   help="publish only good frames (by default a few forged, replayed, "
                   "truncated and unknown-node frames are mixed in)")
    p.set_defaults(handler=command_demo)


def command_demo(args: argparse.Namespace) -> int:
    from dordt.demo import DemoProgress, run_demo

    if not 0 < args.duration <= MAX_DURATION_S:
        raise UserError(f"--duration {args.duration:g}: give 0 < S <= {MAX_DURATION_S:g}", 2)
    if not 0.1 <= args.interval <= 600:
        raise UserError(f"--interval {args.interval:g}: give 0.1 <= S <= 600", 2)
    console = Console()
    console.print(f"[bold]dordt demo[/]: {args.duration:g} s, a reading every "
                  f"{args.interval:g} s from each node, data in {args.data_dir}/")
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        def show(p: DemoProgress) -> None:
            live.update(f"  {p.elapsed_s:5.1f} s  published {p.published}  "
                        f"accepted {p.accepted}  rejected {p.rejected}  "
                        f"buffered {p.buffered}")
        try:
            result = run_demo(
                duration_s=args.duration, interval_s=args.interval, data_dir=args.data_dir,
                broker_url=args.broker, store_spec=args.store, seed=args.seed,
                faults=not args.no_faults, on_progress=show)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserError(f"demo failed: {exc}") from exc

    console.print(f"published {result.published} frames from {result.nodes} nodes "
                  f"({result.published_faults} of them deliberately bad) to "
                  f"{result.broker_url}", soft_wrap=True)
    console.print(f"gateway accepted {result.accepted}, rejected "
                  f"{sum(result.rejected.values())}, forwarded {result.forwarded} to "
                  f"{result.store_spec}", soft_wrap=True)
    if result.rejected:
        console.print("rejected by reason: " + ", ".join(
            f"{k} {v}" for k, v in sorted(result.rejected.items())))
    if not result.drained:
        console.print(f"[yellow]warning[/]: {result.buffered} readings were still buffered "
                      "when the demo stopped; they stay in the outbox")
    if result.store_spec.startswith("sqlite:"):
        path = result.store_spec.removeprefix("sqlite:")
        console.print(_summary_table(path, result.rejected_by_zone_kind))
        console.print("\nQuery the store:\n  "
                      f".venv/bin/dordt gateway query --store {shlex.quote(path)}\n  "
                      f".venv/bin/dordt gateway query --store {shlex.quote(path)} "
                      "--zone maasterras --kind crowd", soft_wrap=True)
    return 0 if result.drained else 1


def _summary_table(path: str, rejected: dict) -> Table:
    from gateway.forward.local import LocalStore

    store = LocalStore(path)
    try:
        counts = store.count_by(("zone", "kind"))
        latest = store.latest()
    finally:
        store.close()
    table = Table(title="stored readings per zone and kind")
    for col in ("zone", "kind", "readings", "nodes", "rejected",
                "latest (mean of nodes)"):
        table.add_column(col)
    for (zone, kind), n in sorted(counts.items()):
        rows = [v for v in latest if v["zone"] == zone and v["kind"] == kind]
        table.add_row(zone, kind, str(n), str(len({r["node"] for r in rows})),
                      _reasons_text(rejected.get((zone, kind))), _latest_text(kind, rows))
    if ("?", "?") in rejected:
        table.add_row("(not enrolled)", "?", "0", "?", _reasons_text(rejected[("?", "?")]), "")
    return table


def _reasons_text(reasons) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) if reasons else "0"


# (field, label, format) shown per kind in the summary: short enough for 80 columns
_SHOWN = {
    "air": (("temperature_c", "", "{:.1f} °C"), ("humidity_pct", "", "{:.0f} %RH"),
            ("pm25_ugm3", "PM2.5 ", "{:.1f}"), ("pm10_ugm3", "PM10 ", "{:.1f} µg/m³")),
    "noise": (("laeq_db", "LAeq ", "{:.1f}"), ("lamax_db", "LAmax ", "{:.1f}"),
              ("la90_db", "LA90 ", "{:.1f} dB(A)")),
    "crowd": (("crowd_count", "", "{:.0f} devices"),),
}


def _latest_text(kind: str, rows: list[dict]) -> str:
    parts = []
    for name, label, fmt in _SHOWN.get(kind, ()):
        vals = [r["fields"][name] for r in rows if name in r["fields"]]
        if vals:
            parts.append(label + fmt.format(sum(vals) / len(vals)))
    return " ".join(parts)
