"""`dordt sim ...`: drive simulated fleets against a broker."""

from __future__ import annotations

import argparse

from dordt.errors import UserError


def register(groups) -> None:
    g = groups.add_parser("sim", help="simulated sensor fleets",
                          description="Frame-level simulated nodes of the three zones.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="publish a simulated fleet's frames to a broker")
    run.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT")
    run.add_argument("--duration", type=float, default=60.0, metavar="S")
    run.add_argument("--interval", type=float, default=10.0, metavar="S",
                     help="seconds between readings of each node (default 10)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--zones", metavar="PATH", help="zones file (default: the three zones)")
    run.add_argument("--keyring-out", metavar="PATH",
                     help="write the simulated fleet's keyring here for a gateway to use")
    run.add_argument("--faults", action="store_true", help="mix in a few bad frames")
    run.set_defaults(handler=command_run)


def command_run(args: argparse.Namespace) -> int:
    from simulators.fleet import SimFleet
    from simulators.publish import FleetPublisher
    from hardware.sites import ZonesError, load_placements

    try:
        fleet = SimFleet(load_placements(args.zones), seed=args.seed)
    except ZonesError as exc:
        raise UserError(str(exc), 2) from exc
    if args.keyring_out:
        fleet.keyring().save(args.keyring_out)
    try:
        publisher = FleetPublisher(fleet, args.broker, args.interval, args.faults)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the broker at {args.broker}: {exc}") from exc
    try:
        publisher.run(args.duration)
        publisher.wait_acked(10)
    finally:
        publisher.close()
    print(f"published {publisher.published} frames from {len(fleet.nodes)} nodes")
    return 0
