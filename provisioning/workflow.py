"""`run` and `batch`: every provisioning step for one board, or for a tray of boards, with
the state of each written down so that a run cut by a crash, a pulled cable or Ctrl-C
resumes where it stopped.

In:  a port and what the board becomes (zone/site/kind or a node id); for a batch a tray
     file, CSV with a header: `port,zone,site,kind` or `port,node` (one board per line;
     `#` starts a comment).
Out: per board a state file WORK_DIR/runs/<node>.json: each step with its time and
     result; the batch prints one line per board with its state.
On failure: a step that fails stops that board (its state says which step and why, and
     the next run starts again at that step); a batch goes on with the next board and exits
     1 when any board failed.  The steps themselves leave the board bootable (install) and
     never half-enrolled (enrol).

Steps, in order: flash (only with --image, ESP32-S3), install (always run: it is
idempotent and checks every file on the board, so a board whose install was cut is
finished here), enrol (skipped when the board
holds the enrolment already), selftest (skipped when it passed for this enrolment),
label (skipped when the label files exist).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dordt.errors import UserError
from firmware import protocol
from fleet.files import write_file_atomic

STEPS = ("install", "enrol", "selftest", "label")
EXIT_BAD_INPUT = 2

Report = Callable[[str, str], None]  # (step, message)


@dataclass
class BoardPlan:
    port: str
    zone: str | None = None
    site: str | None = None
    kind: str | None = None
    node: str | None = None
    line: int = 0


@dataclass
class RunResult:
    node: str
    ok: bool
    steps: dict = field(default_factory=dict)
    failed_step: str | None = None
    message: str = ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunState:
    """WORK_DIR/runs/<node>.json, rewritten atomically after every step."""

    def __init__(self, path: Path):
        self.path = path
        self.doc = {"steps": {}}
        if path.exists():
            try:
                self.doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.doc = {"steps": {}}  # a damaged state only costs redoing steps

    def done(self, step: str) -> dict | None:
        entry = self.doc["steps"].get(step)
        return entry if entry and entry.get("ok") else None

    def record(self, step: str, ok: bool, detail: str, **extra) -> None:
        self.doc["steps"][step] = {"ok": ok, "at": _now(), "detail": detail, **extra}
        self.doc["state"] = "done" if ok and step == STEPS[-1] else (
            f"{step} ok" if ok else f"{step} failed")
        write_file_atomic(self.path, (json.dumps(self.doc, indent=1) + "\n").encode(), 0o644)


def run_board(plan: BoardPlan, args, report: Report) -> RunResult:
    """Every step for one board.  `args` carries the shared options (work dir, fleet key,
    broker, timeout, board type); `report(step, message)` shows progress."""
    from provisioning import cli, label
    from provisioning import enrol as enrolment
    from provisioning.identify import identify
    from provisioning.link import BoardLink
    from provisioning.selftest import selftest

    placement = enrolment.plan(plan.zone, plan.site, plan.kind, plan.node,
                               Path(args.zones) if getattr(args, "zones", None) else None)
    node = protocol.node_name(placement.node_id)
    work = cli.work_dir(args)
    state = RunState(work / "runs" / f"{node}.json")
    state.doc.update(node=node, port=plan.port)
    result = RunResult(node, False, state.doc["steps"])
    step = "install"
    try:
        if getattr(args, "image", None) and not state.done("flash"):
            step = "flash"
            _flash(plan, args, report, state)
            step = "install"
        with BoardLink(plan.port, timeout_s=args.timeout) as link:
            info = identify(link, getattr(args, "board", None))
            report("install", f"{info.name} on {plan.port}: installing firmware")
            installed = cli.do_install(link, info, args)
            for line in cli.install_lines(installed):
                report("install", line)
            state.record("install", True, cli.install_lines(installed)[-1],
                         version=installed.version, slot=installed.slot)

            step = "enrol"
            report("enrol", f"enrolling as {node} ({placement.kind}, {placement.zone}/"
                   f"{placement.site})")
            done = enrolment.enrol(
                link, info, placement, cli.fleet_key_path(args), cli.bundle_path(args),
                cli.broker_from_args(args), cli.wifi_from_args(args),
                Path(args.keyring) if getattr(args, "keyring", None) else None,
                getattr(args, "force", False), release_pub=cli.release_pub_path(args))
            state.record("enrol", True, "enrolled earlier" if done.already else "enrolled",
                         fingerprint=done.fingerprint)

            step = "selftest"
            passed = state.done("selftest")
            if passed and passed.get("fingerprint") == done.fingerprint:
                report("selftest", "self-test passed earlier for this enrolment")
            else:
                report("selftest", "self-testing")
                path = cli.bundle_path(args)
                tested = selftest(link, info, path if path.exists() else None,
                                  getattr(args, "gateway_broker", None))
                for name, ok, detail in tested.rows:
                    report("selftest", f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
                failed = [f"{n}: {d}" for n, ok, d in tested.rows if not ok]
                state.record("selftest", tested.ok, "; ".join(failed) or "all checks passed",
                             fingerprint=done.fingerprint)
                if not tested.ok:
                    raise UserError("self-test failed: " + "; ".join(failed), 1)

        step = "label"
        svg, png = work / "labels" / f"{node}.svg", work / "labels" / f"{node}.png"
        if state.done("label") and svg.exists() and png.exists():
            report("label", f"label printed earlier: {svg}")
        else:
            files = label.write_label(done.node, done.kind, done.zone, done.site,
                                      work / "labels")
            state.record("label", True, f"{files.svg} and {files.png}")
            report("label", f"label: {files.svg}")
    except UserError as exc:
        if step not in state.doc["steps"] or state.doc["steps"][step].get("ok"):
            state.record(step, False, str(exc))
        result.failed_step, result.message = step, str(exc)
        raise
    result.ok = True
    return result


def _flash(plan: BoardPlan, args, report: Report, state: RunState) -> None:
    """MicroPython onto an ESP32-S3 first (a Pico W's boot drive is no serial port: flash it
    with `dordt provision flash`, then run)."""
    from provisioning import flash

    if not getattr(args, "board", None):
        raise UserError("--image needs --board (the image must match the board type)",
                        EXIT_BAD_INPUT)
    board = flash.board_profile(args.board)
    if flash.flash_method(board) != "esptool":
        raise UserError(f"a {board.name} is flashed from its boot drive, not over {plan.port}: "
                        "run `dordt provision flash --board "
                        f"{board.id}` first, then this command without --image", EXIT_BAD_INPUT)
    report("flash", f"writing MicroPython onto the {board.name} on {plan.port}")
    flash.flash(board.id, image=Path(args.image), port=plan.port)
    state.record("flash", True, f"MicroPython from {args.image}")


# -- CLI handlers ----------------------------------------------------------------------------


def command_run(args) -> int:
    from provisioning import cli

    out = cli.console()
    plan = BoardPlan(args.port, args.zone, args.site, args.kind, args.node)
    result = run_board(plan, args, lambda step, msg: out.print(f"[bold]{step:>8}[/] {msg}"))
    cli.emit(args, {"node": result.node, "ok": True, "steps": result.steps},
             [f"node {result.node} is provisioned: installed, enrolled, self-tested, labelled"])
    return 0


def add_batch_arguments(p) -> None:
    p.add_argument("tray", metavar="TRAY.csv",
                   help="one board per line: port,zone,site,kind or port,node (with a header)")
    p.add_argument("--board", metavar="PROFILE", help="the board type every board must be")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--fleet-key", metavar="PUB")
    p.add_argument("--release-pub", metavar="FILE")
    p.add_argument("--broker-host", default="gateway.local")
    p.add_argument("--broker-port", type=int)
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-password-env", metavar="VAR")
    p.add_argument("--keyring", metavar="PATH")
    p.add_argument("--zones", metavar="TOML")
    p.add_argument("--gateway-broker", metavar="URL")
    p.add_argument("--force", action="store_true")


def read_tray(path: Path) -> list[BoardPlan]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the tray file {path} ({exc.strerror})", EXIT_BAD_INPUT) \
            from None
    rows = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise UserError(f"{path} lists no boards: one line per board, after a header line "
                        "port,zone,site,kind (or port,node)", EXIT_BAD_INPUT)
    reader = csv.DictReader([line for _, line in rows])
    columns = set(reader.fieldnames or [])
    if "port" not in columns or not ({"zone", "site", "kind"} <= columns or "node" in columns):
        raise UserError(f"{path}: the header must be port,zone,site,kind or port,node (it is "
                        f"{','.join(reader.fieldnames or [])})", EXIT_BAD_INPUT)
    plans = []
    for (n, _), row in zip(rows[1:], reader, strict=False):
        def get(k, row=row):
            return (row.get(k) or "").strip() or None

        if not get("port"):
            raise UserError(f"{path}:{n}: no port", EXIT_BAD_INPUT)
        plans.append(BoardPlan(get("port"), get("zone"), get("site"), get("kind"), get("node"),
                               n))
    return plans


def command_batch(args) -> int:
    from rich.live import Live
    from rich.table import Table

    from provisioning import cli

    plans = read_tray(Path(args.tray))
    states = {i: ("waiting", "") for i in range(len(plans))}
    batch_state = cli.work_dir(args) / "batches" / (Path(args.tray).stem + ".json")
    earlier = {}
    if batch_state.exists():
        try:
            earlier = json.loads(batch_state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = {}

    def table():
        t = Table(title=f"tray {args.tray}")
        for col in ("line", "port", "node", "state", "detail"):
            t.add_column(col)
        for i, p in enumerate(plans):
            state, detail = states[i]
            style = {"done": "green", "failed": "red"}.get(state.split()[0], "")
            t.add_row(str(p.line), p.port, p.node or f"{p.zone}/{p.site}/{p.kind}",
                      f"[{style}]{state}[/]" if style else state, detail)
        return t

    failed = 0
    results = {}
    with Live(table(), console=cli.console(), refresh_per_second=4,
              transient=False) as live:
        for i, plan in enumerate(plans):
            key = f"{plan.line}:{plan.port}"
            if earlier.get(key, {}).get("state") == "done":
                states[i] = ("done", "earlier")
                results[key] = earlier[key]
                live.update(table())
                continue

            def report(step, msg, i=i):
                states[i] = (step, msg)
                live.update(table())

            try:
                result = run_board(plan, args, report)
                states[i] = ("done", f"node {result.node}")
                results[key] = {"state": "done", "node": result.node}
            except UserError as exc:
                failed += 1
                states[i] = ("failed", str(exc))
                results[key] = {"state": "failed", "detail": str(exc)}
            write_file_atomic(batch_state, (json.dumps(results, indent=1) + "\n").encode(),
                              0o644)
            live.update(table())
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(f"{len(plans) - failed} of {len(plans)} boards done"
              + (f"; {failed} failed: run the same command again to retry them" if failed
                 else ""))
    return 1 if failed else 0
