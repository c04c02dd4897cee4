"""`dordt sim ...`: simulated fleets, recordings, replays, faults and plots.

Thin: argument parsing and presentation over simulators/ (fleet, framegen, recording,
replay, faults, plot).  Live progress (frames/s, simulated time) goes to the terminal
while a command runs; a summary line stays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from dordt.errors import UserError

SPEEDS_HELP = "1 (recorded pace), 10, ... or max (as fast as the broker takes them)"


def register(groups) -> None:
    g = groups.add_parser("sim", help="simulated sensor fleets, recordings and replays",
                          description="Frame-level simulated nodes of the three zones; record "
                          "and replay traffic at any speed; inject faults; plot a day.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="publish a simulated fleet's frames to a broker, live")
    run.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT")
    run.add_argument("--duration", type=float, default=60.0, metavar="S")
    run.add_argument("--interval", type=float, default=10.0, metavar="S",
                     help="seconds between readings of each node (default 10)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--zones", metavar="PATH", help="zones file (default: the three zones)")
    run.add_argument("--keyring-out", metavar="PATH",
                     help="write the simulated fleet's keyring here for a gateway to use")
    run.add_argument("--faults", action="store_true", help="mix in a few bad frames")
    run.add_argument("--record", metavar="PATH", help="also record what is published")
    run.set_defaults(handler=command_run)

    rec = sub.add_parser(
        "record", help="write a recording: from the simulator, or captured from a broker",
        description="Without --broker: generate the frames of a fleet for a span of "
        "simulated time, as fast as possible. With --broker: capture everything published "
        "under dordt/v1/# for --duration seconds.")
    rec.add_argument("out", metavar="FILE", help="the recording to write")
    rec.add_argument("--broker", metavar="URL", help="capture from this broker instead")
    rec.add_argument("--duration", type=float, default=60.0, metavar="S",
                     help="with --broker: seconds to capture (default 60)")
    rec.add_argument("--max-messages", type=int, metavar="N",
                     help="with --broker: stop after N messages")
    rec.add_argument("--start", default="today", metavar="WHEN",
                     help="first window: today (local midnight), now, YYYY-MM-DD or "
                     "YYYY-MM-DDTHH:MM (local time), or Unix seconds (default today)")
    rec.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    rec.add_argument("--nodes", type=int, metavar="N",
                     help="a fleet of N nodes spread over the zones (default: the zones "
                     "file's nodes)")
    rec.add_argument("--cadence", type=int, default=10, metavar="S",
                     help="seconds between readings of each node (default 10)")
    rec.add_argument("--status-every", type=int, default=60, metavar="N",
                     help="a status frame every N readings (0: none; default 60)")
    rec.add_argument("--seed", type=int, default=1)
    rec.add_argument("--zones", metavar="PATH", help="zones file (default: the three zones)")
    rec.add_argument("--fault", action="append", default=[], metavar="SPEC",
                     help="apply a fault (repeatable), e.g. drop:p=0.01; see `dordt sim "
                     "faults`")
    rec.add_argument("--workers", type=int, default=1, metavar="N",
                     help="generate in N processes (no faults; same bytes)")
    rec.add_argument("--level", type=int, default=1,
                     help="zlib level 0..9 (default 1: ~6 %% larger than 6, twice as fast)")
    rec.add_argument("--keyring-out", metavar="PATH",
                     help="write the simulated fleet's keyring (to replay with re-signing)")
    rec.set_defaults(handler=command_record)

    rep = sub.add_parser(
        "replay", help="publish a recording to a broker, at its pace or faster",
        description="Replays a recording. With --keyring the frames are re-based to start "
        "now (or --start) and signed again with the keyring's keys; without it they are "
        "replayed as recorded.")
    rep.add_argument("recording", metavar="FILE")
    rep.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT")
    rep.add_argument("--speed", default="max", help=SPEEDS_HELP + " (default max)")
    rep.add_argument("--keyring", metavar="PATH", help="keys to re-sign re-based frames")
    rep.add_argument("--start", default="now", metavar="WHEN",
                     help="re-base the first message to: now, YYYY-MM-DD[THH:MM] (local), "
                     "Unix seconds, or none (default now; needs --keyring)")
    rep.add_argument("--counter-shift", type=int, default=0, metavar="N",
                     help="add N to every frame counter (replay again into the same gateway)")
    rep.add_argument("--fault", action="append", default=[], metavar="SPEC",
                     help="apply a fault while replaying (repeatable)")
    rep.add_argument("--seed", type=int, default=1, help="seed of the faults (default 1)")
    rep.add_argument("--limit", type=int, metavar="N", help="stop after N messages")
    rep.add_argument("--client-id", default="dordt-replay")
    rep.set_defaults(handler=command_replay)

    flt = sub.add_parser("faults", help="list the fault types, their parameters and the "
                         "gateway's expected reaction")
    flt.set_defaults(handler=command_faults)

    plot = sub.add_parser("plot", help="draw a day per zone (PNG or HTML)",
                          description="Crowd, sound, PM2.5 and temperature per site over a "
                          "local day, one column per zone.")
    src = plot.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", metavar="FILE", help="a recording")
    src.add_argument("--store", metavar="PATH", help="a local store (sqlite file)")
    plot.add_argument("--day", metavar="YYYY-MM-DD",
                      help="local date (default: the first day with data)")
    plot.add_argument("--out", metavar="FILE", help="PNG or HTML (default dordt-DAY.png)")
    plot.add_argument("--keyring", metavar="PATH",
                      help="with --recording: plot only frames whose tag verifies")
    plot.add_argument("--zones", metavar="PATH", help="zones file, for site names")
    plot.set_defaults(handler=command_plot)

    ins = sub.add_parser("inspect", help="what a recording holds, and whether it is whole")
    ins.add_argument("recording", metavar="FILE")
    ins.set_defaults(handler=command_inspect)


# -- helpers ------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console()


def _live(console):
    from rich.live import Live

    return Live(console=console, refresh_per_second=4, transient=True)


def parse_when(text: str) -> int:
    """Unix seconds from "now", "today", "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS]" (local
    time, Europe/Amsterdam) or a number of Unix seconds."""
    from simulators.zonemodel import local_day_and_hour, local_to_utc

    text = text.strip()
    if text == "now":
        return int(time.time())
    if text == "today":
        return local_to_utc(local_day_and_hour(time.time())[0], 0)
    if text.isdigit():
        return int(text)
    try:
        if "T" in text or " " in text:
            when = dt.datetime.fromisoformat(text.replace(" ", "T"))
            if when.tzinfo is not None:
                return int(when.timestamp())
            return local_to_utc(when.date(), when.hour + when.minute / 60 + when.second / 3600)
        return local_to_utc(dt.date.fromisoformat(text), 0)
    except ValueError:
        raise UserError(f"{text!r} is not a time: give now, today, YYYY-MM-DD, "
                        "YYYY-MM-DDTHH:MM (local time) or Unix seconds", 2) from None


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserError(f"--speed {text}: give {SPEEDS_HELP}", 2)
    return value


def _keyring(path: str | None):
    if not path:
        return None
    from fleet.keyring import Keyring, KeyringError

    try:
        return Keyring.load(path)
    except KeyringError as exc:
        raise UserError(str(exc), 2) from exc


def _faults(specs: list[str], seed: int, keyring):
    if not specs:
        return None
    from simulators.faults import FaultError, FaultPipeline

    try:
        return FaultPipeline(specs, seed, keyring)
    except FaultError as exc:
        raise UserError(str(exc), 2) from exc


def _when(t_s: float) -> str:
    from simulators.zonemodel import utc_offset_s

    local = dt.datetime.fromtimestamp(t_s + utc_offset_s(t_s), dt.UTC)
    return local.strftime("%Y-%m-%d %H:%M")


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "-"


# -- commands ----------------------------------------------------------------------------


def command_run(args: argparse.Namespace) -> int:
    from hardware.sites import ZonesError, load_placements
    from simulators.fleet import SimFleet
    from simulators.publish import FleetPublisher
    from simulators.recording import RecordingWriter

    try:
        fleet = SimFleet(load_placements(args.zones), seed=args.seed)
    except ZonesError as exc:
        raise UserError(str(exc), 2) from exc
    if args.keyring_out:
        fleet.keyring().save(args.keyring_out)
    recorder = None
    if args.record:
        recorder = RecordingWriter(args.record, {"source": "sim run", "seed": args.seed,
                                                 "interval_s": args.interval},
                                   [n.topic for n in fleet.nodes])
    try:
        publisher = FleetPublisher(fleet, args.broker, args.interval, args.faults,
                                   recorder=recorder)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the broker at {args.broker}: {exc}") from exc
    console = _console()
    import threading

    runner = threading.Thread(target=publisher.run, args=(args.duration,), daemon=True)
    start = time.monotonic()
    try:
        with _live(console) as live:
            runner.start()
            while runner.is_alive():
                runner.join(0.25)
                sim = publisher.last_round_s
                live.update(f"  {time.monotonic() - start:5.1f} s  published "
                            f"{publisher.published} frames  "
                            f"{_rate(publisher.published, time.monotonic() - start)}  "
                            f"simulated time {_when(sim) if sim else '-'}")
        publisher.wait_acked(10)
    except KeyboardInterrupt:
        publisher.stop()
        runner.join(5)
        raise
    finally:
        publisher.close()
        if recorder is not None:
            recorder.close()
    print(f"published {publisher.published} frames from {len(fleet.nodes)} nodes")
    return 0


def command_record(args: argparse.Namespace) -> int:
    if args.broker:
        return _record_broker(args)
    from hardware.sites import ZonesError, load_placements, load_zones
    from simulators.framegen import FrameGenerator, record, scaled_placements
    from simulators.recording import RecordingWriter
    from simulators.zonemodel import ScenarioError

    if not 0 < args.hours <= 24 * 366:
        raise UserError(f"--hours {args.hours:g}: give 0 < H <= {24 * 366}", 2)
    if not 1 <= args.cadence <= 3600:
        raise UserError(f"--cadence {args.cadence}: give 1..3600 seconds", 2)
    if not 0 <= args.level <= 9:
        raise UserError(f"--level {args.level}: give 0..9", 2)
    start = parse_when(args.start)
    end = start + int(args.hours * 3600)
    try:
        placements = (scaled_placements(args.nodes, load_zones(args.zones)) if args.nodes
                      else load_placements(args.zones))
        gen = FrameGenerator(placements, args.seed, args.cadence, args.status_every)
    except (ZonesError, ScenarioError, ValueError) as exc:
        raise UserError(str(exc), 2) from exc
    keyring = gen.keyring()
    if args.keyring_out:
        keyring.save(args.keyring_out)
    pipeline = _faults(args.fault, args.seed, keyring)
    meta = {"source": "framegen", "zones_file": args.zones or "default"}
    console = _console()
    began = time.monotonic()
    expected = len(gen.window_ends(start, end)) * len(gen.nodes)
    with _live(console) as live:
        def show(count: int, sim_s: float) -> None:
            elapsed = time.monotonic() - began
            live.update(f"  {count:,} of ~{expected:,} frames  {_rate(count, elapsed)}  "
                        f"simulated time {_when(sim_s)}")

        if pipeline is None:
            count = record(gen, args.out, start, end, meta, workers=max(1, args.workers),
                           level=args.level, on_progress=show)
        else:
            meta.update(seed=gen.seed, cadence_s=gen.cadence_s, status_every=gen.status_every,
                        nodes=len(gen.nodes), start_s=start, end_s=end,
                        faults=pipeline.describe())
            with RecordingWriter(args.out, meta, gen.topics, level=args.level) as writer:
                count = 0
                for msg in pipeline.apply(gen.messages(start, end)):
                    writer.write(msg)
                    count += 1
                    if count % 20000 == 0:
                        show(count, msg.t_ms / 1000)
    elapsed = time.monotonic() - began
    size = Path(args.out).stat().st_size
    print(f"recorded {count} frames of {len(gen.nodes)} nodes, {_when(start)} .. {_when(end)} "
          f"local, in {elapsed:.1f} s ({_rate(count, elapsed)}); {size:,} bytes "
          f"({size / max(1, count):.1f} per frame) in {args.out}")
    if pipeline is not None:
        print("faults: " + ", ".join(f"{k} {v}" for k, v in pipeline.report().items()))
    return 0


def _record_broker(args: argparse.Namespace) -> int:
    from simulators.recording import RecordingWriter
    from simulators.replay import BrokerRecorder, ReplayError

    meta = {"source": "broker", "broker": args.broker, "started_s": int(time.time())}
    writer = RecordingWriter(args.out, meta)
    try:
        recorder = BrokerRecorder(args.broker, writer)
    except ReplayError as exc:
        writer.close()
        raise UserError(str(exc)) from exc
    console = _console()
    began = time.monotonic()
    try:
        if not recorder.start():
            raise UserError(f"the broker at {args.broker} did not confirm the subscription")
        with _live(console) as live:
            recorder.run(args.duration, args.max_messages, on_progress=lambda n: live.update(
                f"  {time.monotonic() - began:5.1f} s  captured {n} messages  "
                f"{_rate(n, time.monotonic() - began)}"))
    finally:
        recorder.close()
    print(f"captured {recorder.count} messages from {args.broker} in "
          f"{time.monotonic() - began:.1f} s into {args.out}")
    return 0


def command_replay(args: argparse.Namespace) -> int:
    from simulators.recording import RecordingError, RecordingReader
    from simulators.replay import MqttPublisher, Replayer, ReplayError, rebase

    speed = _speed(args.speed)
    keyring = _keyring(args.keyring)
    try:
        reader = RecordingReader(args.recording)
    except RecordingError as exc:
        raise UserError(str(exc), 2) from exc
    start = None
    if args.start != "none":
        if keyring is None:
            print("note: no --keyring: replaying the frames as recorded (not re-based)")
        else:
            start = parse_when(args.start)
    stream = rebase(reader, start, keyring, args.counter_shift)
    pipeline = _faults(args.fault, args.seed, keyring)
    if pipeline is not None:
        stream = pipeline.apply(stream)
    try:
        publisher = MqttPublisher(args.broker, args.client_id)
    except ReplayError as exc:
        raise UserError(str(exc)) from exc
    console = _console()
    try:
        with _live(console) as live:
            def show(stats) -> None:
                sim = stats.last_ms / 1000 if stats.last_ms else None
                live.update(f"  {stats.elapsed_s:5.1f} s  published {stats.published}  "
                            f"{stats.rate_per_s:,.0f}/s  simulated time "
                            f"{_when(sim) if sim else '-'}")

            stats = Replayer(publisher, speed, on_progress=show).run(stream, args.limit)
    except ReplayError as exc:
        raise UserError(str(exc)) from exc
    finally:
        publisher.close()
    print(f"replayed {stats.published} messages ({stats.simulated_s:,.0f} s of recording) in "
          f"{stats.elapsed_s:.1f} s: {stats.rate_per_s:,.0f}/s to {args.broker}")
    if stats.skipped_controls:
        print(f"skipped {len(stats.skipped_controls)} control events (no harness here): "
              + ", ".join(sorted(set(stats.skipped_controls))))
    if reader.problem:
        print(f"warning: {reader.problem}")
    return 0


def command_faults(args: argparse.Namespace) -> int:
    from simulators.faults import FAULTS, parameters

    print("Faults for --fault NAME[:key=value,...] (dordt sim record / replay); "
          "docs/simulators.md has the details.\n")
    for name, cls in FAULTS.items():
        print(f"{name}: {cls.summary}")
        for pname, kind, default, help_text in parameters(cls):
            shown = ("all" if default == () else "forever" if default == 1e12 else default)
            print(f"    {pname}={shown}  ({kind}) {help_text}")
        print(f"  gateway: {cls.gateway}\n")
    return 0


def command_plot(args: argparse.Namespace) -> int:
    from gateway.forward import StoreError
    from simulators import plot

    day = None
    if args.day:
        try:
            day = dt.date.fromisoformat(args.day)
        except ValueError:
            raise UserError(f"--day {args.day!r}: give YYYY-MM-DD", 2) from None
    try:
        if args.recording:
            data = plot.from_recording(args.recording, day, _keyring(args.keyring), args.zones)
        else:
            data = plot.from_store(args.store, day)
        out = plot.render(data, args.out or f"dordt-{data.day}.png")
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found", 2) from None
    except (plot.PlotError, ValueError) as exc:
        raise UserError(str(exc), 2) from exc
    except StoreError as exc:  # a store file that is damaged or not a store
        raise UserError(str(exc)) from exc
    print(f"plotted {data.day} ({', '.join(data.zones())}) to {out}")
    return 0


def command_inspect(args: argparse.Namespace) -> int:
    from collections import Counter

    from simulators.recording import RecordingError, RecordingReader

    try:
        reader = RecordingReader(args.recording)
    except RecordingError as exc:
        raise UserError(str(exc), 2) from exc
    first = last = None
    qos: Counter = Counter()
    controls: Counter = Counter()
    topics = set()
    size = 0
    for msg in reader:
        first = msg.t_ms if first is None else first
        last = msg.t_ms
        if msg.is_control:
            controls[msg.topic] += 1
        else:
            qos[msg.qos] += 1
            topics.add(msg.topic)
            size += len(msg.payload)
    print(f"{args.recording}: format version 1, {reader.count} messages in {reader.chunks} "
          f"chunks")
    print("meta: " + ", ".join(f"{k}={v}" for k, v in sorted(reader.meta.items())
                               if k != "faults"))
    if reader.meta.get("faults"):
        print("faults: " + ", ".join(f["fault"] for f in reader.meta["faults"]))
    if first is not None:
        print(f"time: {_when(first / 1000)} .. {_when(last / 1000)} local "
              f"({(last - first) / 1000:,.0f} s)")
    print(f"topics: {len(topics)}; QoS: " + ", ".join(f"{k}: {v}" for k, v in sorted(qos.items()))
          + f"; payload bytes: {size:,}")
    if controls:
        print("control events: " + ", ".join(f"{k} {v}" for k, v in sorted(controls.items())))
    print("complete: yes" if reader.complete else f"complete: no — {reader.problem}")
    return 0 if reader.complete else 1
