"""`dordt hardware ...`: board profiles, BOM and power budgets."""

from __future__ import annotations

import argparse
import datetime as dt

from dordt.errors import UserError


def register(groups) -> None:
    g = groups.add_parser("hardware", help="board profiles, sensor kits, BOM, power budgets",
                          description="Read and check the hardware profiles in hardware/data/.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)
    power = sub.add_parser(
        "power", help="battery or supercapacitor a node needs to run through a summer day",
        description="Average power of a node kind and the storage that bridges the hours a "
        "lamppost has no supply (sunrise to sunset), with the assumptions used.")
    power.add_argument("--kind", required=True, choices=["air", "noise", "crowd"])
    power.add_argument("--site", required=True, metavar="SITE",
                       help="lamppost site id, e.g. spz-01")
    power.add_argument("--date", metavar="YYYY-MM-DD",
                       help="the day to size for (default: this year's 21 June)")
    power.add_argument("--board", default="esp32-s3-devkitc-1")
    power.add_argument("--interval", type=float, default=60.0, metavar="S",
                       help="reporting interval in seconds (default 60)")
    power.add_argument("--pm-sensor", default="sds011", choices=["sds011", "pms5003"])
    power.set_defaults(handler=command_power)
    boards = sub.add_parser("boards", help="list board profiles")
    boards.set_defaults(handler=command_boards)
    bom = sub.add_parser("bom", help="bill of materials for a node kind")
    bom.add_argument("--kind", required=True, choices=["air", "noise", "crowd"])
    bom.set_defaults(handler=command_bom)
    check = sub.add_parser("check", help="validate every profile")
    check.set_defaults(handler=command_check)


def _guard(fn):
    from hardware.profiles import ProfileError
    from hardware.sites import ZonesError

    try:
        return fn()
    except (ProfileError, ZonesError) as exc:
        raise UserError(str(exc), 2) from exc


def command_power(args: argparse.Namespace) -> int:
    from hardware import power, sites

    try:
        day = dt.date.fromisoformat(args.date) if args.date else dt.date(dt.date.today().year,
                                                                         6, 21)
    except ValueError:
        raise UserError(f"--date {args.date!r}: give YYYY-MM-DD", 2) from None
    if args.interval <= 0:
        raise UserError("--interval must be > 0 seconds", 2)
    site = _guard(lambda: sites.find_site(args.site))
    b = _guard(lambda: power.budget(args.kind, args.board, args.interval, args.pm_sensor))
    a = power.storage_for_day(b, site, day)
    print(f"{args.kind} node at {site.id} ({site.zone}) on {day.isoformat()}, board {b.board}")
    print(f"  average power     {b.average_w * 1000:8.0f} mW")
    for name, w in b.loads_w.items():
        print(f"    {name:<32} {w * 1000:6.0f} mW")
    print(f"  supply off        {a.supply_off_h:8.2f} h (sunrise to sunset)")
    print(f"  energy to bridge  {a.energy_wh:8.2f} Wh (with reserve)")
    print(f"  battery           {a.battery_wh:8.1f} Wh = {a.battery_ah:.2f} Ah LiFePO4 at 3.2 V")
    print(f"  night charging    {a.charge_w:8.2f} W from the lamppost supply")
    print(f"  or supercapacitor {a.supercap_f:8.0f} F")
    print("assumptions:")
    for line in a.assumptions:
        print(f"  - {line}")
    return 0


def command_boards(args: argparse.Namespace) -> int:
    from hardware import profiles

    for board in _guard(profiles.load_boards).values():
        usb = ", ".join(f"{u.vid:04x}:{u.pid:04x} ({u.what})" for u in board.usb)
        state = "verified" if board.image_verified else "unverified (no sha256)"
        print(f"{board.id:<20} {board.name}; flash {board.flash_size_mb} MB; "
              f"MicroPython {board.micropython['image']} {state}; USB {usb}")
    return 0


def command_bom(args: argparse.Namespace) -> int:
    from hardware import profiles

    items = [i for i in _guard(profiles.load_bom) if args.kind in i.kinds]
    for i in items:
        print(f"{i.part:<20} {i.maker:<16} {i.number:<26} EUR {i.unit_eur:7.2f}")
    print(f"{'total':<64} EUR {sum(i.unit_eur for i in items):7.2f} (indicative, excl. VAT)")
    return 0


def command_check(args: argparse.Namespace) -> int:
    from hardware import profiles

    for warning in _guard(profiles.check_all):
        print(f"warning: {warning}")
    print("hardware profiles: ok")
    return 0
