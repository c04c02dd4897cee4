"""`dordt fleet balena link | sync | status | pin | rollout ...`: registry gateways on balena
(fleet/balena.py).

Thin: argument parsing and presentation.  Listings take --json (one JSON document on
stdout).  The API key comes from --token-file or $BALENA_API_KEY and is never printed.
Exit codes (dordt/errors.py): 1 the API refused or could not find something, or a rollout
stage is not ready; 2 bad arguments, settings or API key (401); 3 the API cannot be reached.
"""

from __future__ import annotations

from dordt.errors import UserError
from fleet.cli_registry import _print_json  # one JSON style for every fleet listing
from fleet.registry import add_registry_argument


def register(sub) -> None:
    g = sub.add_parser("balena", help="gateways on balena: link, variables and tags, status, "
                       "release pinning and staged rollout",
                       description="Links registry gateways to balena devices and manages them "
                       "through balena-sdk: per-zone device variables and tags (sync), online "
                       "state and last seen (status), release pinning (pin) and a staged "
                       "rollout of the gateway software (rollout).  docs/fleet.md, "
                       "\"Gateways on balena\".")
    bs = g.add_subparsers(dest="balena_command", metavar="COMMAND", required=True)

    p = bs.add_parser("link", help="link a registry gateway to a balena device (by uuid)")
    p.add_argument("gateway", metavar="GATEWAY")
    p.add_argument("uuid", metavar="UUID", help="the device's full uuid on balena")
    _common(p)
    p.set_defaults(handler=command_link)

    p = bs.add_parser("sync", help="set each gateway's device variables and tags from its zone",
                      description="Sets DORDT_ZONE, DORDT_GATEWAY and the zone's settings as "
                      "device variables, and dordt.* tags; removes DORDT_* variables and "
                      "dordt.* tags that no longer apply.  Secrets (store_token_file) become "
                      "variables only, never tags, and are never printed.")
    p.add_argument("gateways", nargs="*", metavar="GATEWAY",
                   help="only these (default: every linked active gateway)")
    p.add_argument("--settings", metavar="TOML",
                   help="zone settings: [defaults] and [zones.<zone>] tables (docs/fleet.md)")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_sync)

    p = bs.add_parser("status", help="who is online, last seen, and runs which release")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_status)

    p = bs.add_parser("pin", help="pin gateways to a release, or let them follow their fleet")
    p.add_argument("gateways", nargs="+", metavar="GATEWAY")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--release", metavar="COMMIT", help="the release's full commit")
    which.add_argument("--track", action="store_true",
                       help="unpin: follow the fleet's current release")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_pin)

    r = bs.add_parser("rollout", help="staged rollout of the gateway software: canaries, then "
                      "one zone, then all; halt pins back")
    rs = r.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    p = rs.add_parser("start", help="pin the canary gateways to a new release")
    p.add_argument("--release", required=True, metavar="COMMIT")
    p.add_argument("--canary", action="append", default=[], metavar="GATEWAY",
                   help="a canary gateway (repeat for more)")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_rollout_start)
    p = rs.add_parser("next", help="the next stage (refused until every gateway pinned so "
                      "far is online and runs the release)")
    p.add_argument("--zone", help="the zone of the stage after the canaries")
    p.add_argument("--halt-after-s", type=float, metavar="S",
                   help="if the stage is still not ready S seconds after its last pin, halt "
                   "the rollout (pin everyone back) instead of waiting (for cron)")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_rollout_next)
    p = rs.add_parser("halt", help="pin every gateway of the rollout back to what it ran")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=command_rollout_halt)


def _common(p) -> None:
    add_registry_argument(p)
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the balena API key (default: $BALENA_API_KEY)")
    p.add_argument("--api-url", metavar="URL",
                   help="the balena API (default: $DORDT_BALENA_API_URL, else "
                   "https://api.balena-cloud.com/)")
    p.add_argument("--timeout-s", type=float, default=None, metavar="S",
                   help="give up on an API operation after S seconds (default: 60)")


def _run(args, operation):
    """Open the registry and the client, run `operation(reg, client)`; BalenaError ->
    UserError with its exit code."""
    from fleet import balena
    from fleet.registry import open_from_args

    try:
        url = balena.api_url(args.api_url)
        token = balena.load_token(args.token_file)
        timeout_s = balena.DEFAULT_TIMEOUT_S if args.timeout_s is None else args.timeout_s
        if not timeout_s > 0:
            raise balena.BalenaError(f"--timeout-s {timeout_s:g}: give a positive number of "
                                     "seconds", balena.EXIT_CONFIG)
        client = balena.BalenaClient(url, token, timeout_s)
        with open_from_args(args) as reg:
            return operation(reg, client)
    except balena.BalenaError as exc:
        raise UserError(str(exc), exc.exit_code) from None


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"


def _pinned(row: dict) -> str:
    if row["balena"] != "linked":
        return "-"
    return _short(row["pinned_release"]) if row["pinned_release"] else "fleet"


def command_link(args) -> int:
    from fleet import balena

    row = _run(args, lambda reg, client: balena.link(reg, client, args.gateway, args.uuid))
    state = "online" if row["is_online"] else "offline"
    print(f"linked {row['gateway']} to balena device {row['uuid']} ({row['device_name']}, "
          f"fleet {row['fleet']}, {state}, last seen {row['last_seen'] or 'never'})")
    return 0


def command_sync(args) -> int:
    from fleet import balena

    def operation(reg, client):
        settings = balena.load_zone_settings(args.settings, [z["zone"] for z in reg.zones()])
        return balena.sync(reg, client, settings, args.gateways or None)

    changes = _run(args, operation)
    if args.json:
        _print_json(changes)
        return 0
    if not changes:
        print("no linked active gateway: nothing to sync (link one with `dordt fleet balena "
              "link`)")
    for c in changes:
        note = " (secret: value not shown)" if c["secret"] else ""
        print(f"{c['gateway']:<20} {c['what']:<8} {c['name']:<22} {c['action']}{note}")
    return 0


def command_status(args) -> int:
    from fleet import balena

    rows = _run(args, balena.status)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'gateway':<20} {'zone':<14} {'balena':<10} {'online':<7} {'last seen':<21} "
          f"{'running':<13} {'pinned':<13} rollout")
    for r in rows:
        online = "-" if r["is_online"] is None else ("yes" if r["is_online"] else "no")
        print(f"{r['gateway']:<20} {r['zone']:<14} {r['balena']:<10} {online:<7} "
              f"{r['last_seen'] or '-':<21} {_short(r['running_release']):<13} "
              f"{_pinned(r):<13} "
              f"{r['rollout_stage'] or '-'}")
    return 0


def command_pin(args) -> int:
    from fleet import balena

    commit = None if args.track else args.release
    rows = _run(args, lambda reg, client: balena.pin(reg, client, args.gateways, commit))
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        what = f"pinned to {r['pinned_release']}" if r["pinned_release"] else \
            "follows its fleet's release"
        print(f"{r['gateway']}: {what}")
    return 0


def _print_stage(doc: dict, json_out: bool) -> None:
    if json_out:
        _print_json(doc)
        return
    names = ", ".join(doc["pinned"]) or "nobody new"
    print(f"rollout {doc['rollout']} of {doc['release']}: stage {doc['stage']}, pinned {names}")


def command_rollout_start(args) -> int:
    from fleet import balena

    doc = _run(args, lambda reg, client: balena.rollout_start(reg, client, args.release,
                                                              args.canary))
    _print_stage(doc, args.json)
    return 0


def command_rollout_next(args) -> int:
    from fleet import balena

    doc = _run(args, lambda reg, client: balena.rollout_next(reg, client, args.zone,
                                                             args.halt_after_s))
    _print_stage(doc, args.json)
    return 0


def command_rollout_halt(args) -> int:
    from fleet import balena

    doc = _run(args, balena.rollout_halt)
    if args.json:
        _print_json(doc)
        return 0
    print(f"rollout {doc['rollout']} of {doc['release']} halted")
    for r in doc["restored"]:
        print(f"  {r['gateway']}: back to {r['release'] or 'its fleet release'}")
    return 0
