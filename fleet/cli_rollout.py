"""`dordt fleet release publish | rollout | step | watch | status | halt`: firmware releases
through the fleet, in stages (fleet/rollout.py does the work; this module parses and
prints).

Defaults beside the registry file (`--registry`): the release public key `release.pub`,
the release store `releases/` and the offers directory `offers/` (one sub-directory per
gateway, each with its `offers.json`; deployment copies them to the gateways).

Exit codes (dordt/errors.py): 0 done (and for `step`/`watch`, the rollout is running or
done); 1 the rollout halted, a release was refused, or the store could not be read; 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dordt.errors import EXIT_CONFIG, EXIT_FAILED, UserError


def register_release_commands(release_sub) -> None:
    """Add publish, rollout, step, watch, status and halt to the `release` group's
    sub-parsers (the release build's commands hang under the same group)."""
    from fleet.registry import add_registry_argument
    from fleet.rollout import (
        DEFAULT_CANARY_TIMEOUT_S,
        DEFAULT_MAX_ERROR_RISE,
        DEFAULT_STAGE_TIMEOUT_S,
    )

    pub = release_sub.add_parser(
        "publish", help="verify a release and add it to the fleet's release store",
        description="Checks the release's signature with the release public key and every "
        "file's hash, refuses a serial already used (or below the last one), copies it to "
        "the release store as releases/SERIAL/ and records it in the registry.")
    pub.add_argument("dir", metavar="DIR", help="the release directory (release build's output)")
    add_registry_argument(pub)
    pub.add_argument("--public-key", metavar="FILE",
                     help="the release public key, 64 hex digits (default: "
                     "release.pub beside the registry)")
    pub.add_argument("--releases", metavar="DIR",
                     help="the fleet's release store (default: releases/ beside the registry)")
    pub.set_defaults(handler=command_publish)

    ro = release_sub.add_parser(
        "rollout", help="start a staged rollout: offer the release to the canaries",
        description="Plans the stages (canaries, then the rest of one zone, then the other "
        "zones), writes the canaries' offers and records the rollout.  Then run `release "
        "step` (cron) or `release watch`: they advance when every node of a stage runs the "
        "release, and halt when one does not within the timeout or its error_count rises.")
    ro.add_argument("serial", type=int, metavar="SERIAL")
    add_registry_argument(ro)
    ro.add_argument("--store", required=True, metavar="SPEC",
                    help="where the gateways' points are: sqlite:PATH or http://HOST:PORT "
                    "(VictoriaMetrics)")
    ro.add_argument("--offers", metavar="DIR",
                    help="offers directory, one sub-directory per gateway (default: offers/ "
                    "beside the registry)")
    ro.add_argument("--canary", metavar="NODE,...", default="",
                    help="canary node ids (default: the first node of the first zone)")
    ro.add_argument("--canary-timeout", type=int, default=DEFAULT_CANARY_TIMEOUT_S, metavar="S",
                    help=f"seconds the canaries have to confirm (default "
                    f"{DEFAULT_CANARY_TIMEOUT_S})")
    ro.add_argument("--stage-timeout", type=int, default=DEFAULT_STAGE_TIMEOUT_S, metavar="S",
                    help=f"seconds every later stage has (default {DEFAULT_STAGE_TIMEOUT_S})")
    ro.add_argument("--max-error-rise", type=int, default=DEFAULT_MAX_ERROR_RISE, metavar="N",
                    help="halt when a node's error_count rises by more than N since its offer "
                    f"(default {DEFAULT_MAX_ERROR_RISE})")
    ro.add_argument("--zones", metavar="ZONE,...", default="",
                    help="zones of the rollout, the first one right after the canaries "
                    "(default: every zone, the canaries' first)")
    ro.set_defaults(handler=command_rollout)

    step = release_sub.add_parser(
        "step", help="look at the evidence once: advance, halt, finish or wait (cron)")
    step.add_argument("serial", type=int, nargs="?", metavar="SERIAL",
                      help="the release (default: the running rollout's)")
    add_registry_argument(step)
    step.set_defaults(handler=command_step)

    watch = release_sub.add_parser("watch", help="step until the rollout halts or is done")
    watch.add_argument("serial", type=int, nargs="?", metavar="SERIAL",
                       help="the release (default: the running rollout's)")
    add_registry_argument(watch)
    watch.add_argument("--interval", type=float, default=60.0, metavar="S",
                       help="seconds between steps (default 60)")
    watch.add_argument("--max-steps", type=int, default=1440, metavar="N",
                       help="stop after N steps even if still running (default 1440)")
    watch.set_defaults(handler=command_watch)

    st = release_sub.add_parser("status", help="published releases and their rollouts")
    st.add_argument("serial", type=int, nargs="?", metavar="SERIAL",
                    help="one release: its stages, nodes and events")
    add_registry_argument(st)
    st.add_argument("--json", action="store_true", help="JSON for scripts")
    st.set_defaults(handler=command_status)

    halt = release_sub.add_parser(
        "halt", help="stop a rollout: withdraw the offers of nodes not yet updated")
    halt.add_argument("serial", type=int, metavar="SERIAL")
    add_registry_argument(halt)
    halt.add_argument("--reason", default="halted by the operator",
                      help="recorded with the halt")
    halt.set_defaults(handler=command_halt)


# -- plumbing ----------------------------------------------------------------------------


def _call(fn, *args, **kwargs):
    from fleet.rollout import EvidenceError, ReleaseError, RolloutError

    try:
        return fn(*args, **kwargs)
    except (ReleaseError, RolloutError) as exc:
        raise UserError(str(exc), EXIT_CONFIG if isinstance(exc, RolloutError)
                        else EXIT_FAILED) from None
    except EvidenceError as exc:
        raise UserError(str(exc), EXIT_FAILED) from None


def _beside_registry(args, name: str) -> Path:
    from fleet.registry import registry_path

    return registry_path(args).resolve().parent / name


def _rollouts(registry, serial: int | None = None, offers: str | None = None,
              store: str | None = None):
    """Rollouts over the registry; for an existing rollout, its recorded offers directory
    and store."""
    from fleet.rollout import RolloutBook, Rollouts, StoreEvidence

    book = RolloutBook(registry.db)
    if serial is not None and offers is None:
        r = book.rollout(serial)
        if r is None:
            raise UserError(f"release {serial} has no rollout: start one with `dordt fleet "
                            f"release rollout {serial} --store SPEC`", EXIT_CONFIG)
        offers, store = r["offers"], r["store"]
    evidence = _call(StoreEvidence, store) if store else None
    return Rollouts(book, offers or ".", evidence)


def _absolute_store(spec: str) -> str:
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        if "@" in spec.split("/")[2]:
            # it would be kept in the registry with the rollout, and in its backups
            raise UserError("--store: give the store's URL without a user or password "
                            "(a rollout records it in the registry)", EXIT_CONFIG)
        return spec
    path = spec.removeprefix("sqlite:").removeprefix("//")
    if not path:
        raise UserError(f"--store {spec!r}: give sqlite:PATH or http://HOST:PORT", EXIT_CONFIG)
    return f"sqlite:{Path(path).resolve()}"


def _exit(result) -> int:
    return EXIT_FAILED if result.state == "halted" else 0


# -- commands ----------------------------------------------------------------------------


def command_publish(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args
    from fleet.rollout import RolloutBook, load_public_key, publish

    key = _call(load_public_key, args.public_key or _beside_registry(args, "release.pub"))
    releases = Path(args.releases) if args.releases else _beside_registry(args, "releases")
    with open_from_args(args) as registry:
        release = _call(publish, RolloutBook(registry.db), args.dir, key, releases, time.time())
    print(f"published release {release.serial} ({release.version}"
          f"{', rollback' if release.rollback else ''}; kinds {', '.join(release.kinds)}; "
          f"{release.size} bytes) to {releases / str(release.serial)}")
    return 0


def command_rollout(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args
    from fleet.rollout import RolloutSettings, fleet_nodes, node_id_list

    canaries = _call(node_id_list, args.canary)
    zones = [z.strip() for z in args.zones.split(",") if z.strip()]
    # recorded as absolute paths: `step` may run from cron, in another directory
    offers = str(Path(args.offers).resolve()) if args.offers \
        else str(_beside_registry(args, "offers"))
    store = _absolute_store(args.store)
    settings = RolloutSettings(args.canary_timeout, args.stage_timeout, args.max_error_rise)
    with open_from_args(args) as registry:
        known = {z for (z,) in registry.db.execute("SELECT zone FROM zones")}
        unknown = [z for z in zones if z not in known]
        if unknown:
            raise UserError(f"--zones: {unknown[0]!r} is not a zone of the registry (zones: "
                            f"{', '.join(sorted(known)) or 'none'})", EXIT_CONFIG)
        rollouts = _rollouts(registry, offers=offers, store=store)
        result = _call(rollouts.start, args.serial, fleet_nodes(registry), time.time(),
                       canaries, zones, settings, store)
    print(result.line)
    return 0


def _running_serial(registry, serial: int | None) -> int | None:
    from fleet.rollout import RolloutBook

    if serial is not None:
        return serial
    running = RolloutBook(registry.db).rollouts("running")
    return running[0]["serial"] if running else None


def command_step(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args

    with open_from_args(args) as registry:
        serial = _running_serial(registry, args.serial)
        if serial is None:
            print("no rollout is running")
            return 0
        result = _call(_rollouts(registry, serial).step, serial, time.time())
    print(result.line)
    return _exit(result)


def command_watch(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args

    if args.interval <= 0:
        raise UserError(f"--interval {args.interval}: give seconds, more than 0", EXIT_CONFIG)
    with open_from_args(args) as registry:
        serial = _running_serial(registry, args.serial)
        if serial is None:
            print("no rollout is running")
            return 0
        rollouts = _rollouts(registry, serial)
        result = _call(rollouts.watch, serial, interval_s=args.interval,
                       max_steps=args.max_steps, report=lambda r: print(r.line, flush=True))
    return _exit(result)


def command_halt(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args

    with open_from_args(args) as registry:
        result = _call(_rollouts(registry, args.serial).halt, args.serial, time.time(),
                       args.reason)
    print(result.line)
    return 0


def command_status(args: argparse.Namespace) -> int:
    from fleet.registry import open_from_args
    from fleet.rollout import RolloutBook, Rollouts

    with open_from_args(args) as registry:
        rollouts = Rollouts(RolloutBook(registry.db), ".")
        doc = _call(rollouts.status, args.serial) if args.serial is not None \
            else {"releases": rollouts.summary()}
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    elif args.serial is None:
        rows = doc["releases"]
        if not rows:
            print("no release published yet (`dordt fleet release publish DIR`)")
        for r in rows:
            state = r["rollout"] or "not rolled out"
            stage = f" at {r['stage']}" if r["rollout"] == "running" else ""
            why = f": {r['reason']}" if r["reason"] else ""
            print(f"{r['serial']:>6}  {r['version']:<9} {state}{stage}{why}")
    else:
        _print_one(doc)
    return 0


def _print_one(doc: dict) -> None:
    rel, r = doc["release"], doc["rollout"]
    print(f"release {rel['serial']} ({rel['version']}{', rollback' if rel['rollback'] else ''})"
          f", kinds {', '.join(rel['kinds'])}, in {doc['path']}")
    if r is None:
        print("not rolled out")
        return
    print(f"rollout {r['state']} at stage {r['stage'] + 1}/{len(r['stages'])} "
          f"({r['stage_name']})" + (f": {r['reason']}" if r["reason"] else ""))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(r["nodes_by_state"].items()))
    print(f"nodes: {counts}")
    for n in r["nodes"]:
        ota = f"  gateway says {n['ota_state']}" if n["ota_state"] else ""
        print(f"  {n['node']}  {r['stages'][n['stage']]:<24} {n['state']:<10} "
              f"{','.join(n['gateways'])}{ota}")
