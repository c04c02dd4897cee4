"""`dordt`: one entry point, a sub-command group per role.

Thin by design: each group lives beside the code it drives (gateway/cli.py,
simulators/cli.py, fleet/cli.py, ...) and registers a command table; handlers take the
parsed arguments and return an exit code.  Errors for people are `UserError`s, printed as
`dordt: message`; so is an OSError nobody named (an environment fault: disk, network,
permissions).  A traceback only with --debug (or --verbose); any other exception is a bug
and keeps its traceback.  Exit codes: dordt/errors.py.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dordt.errors import EXIT_ENVIRONMENT, UserError


def build_parser() -> argparse.ArgumentParser:
    from audit import cli as audit_cli
    from dordt import demo_cli
    from fleet import cli as fleet_cli
    from gateway import cli as gateway_cli
    from hardware import cli as hardware_cli
    from provisioning import cli as provision_cli
    from simulators import cli as sim_cli

    parser = argparse.ArgumentParser(
        prog="dordt", description="Dordrecht edge sensor fleet: gateway, simulators, fleet, "
        "provisioning and audit tools.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more, and show tracebacks on errors")
    parser.add_argument("--debug", action="store_true",
                        help="log everything, and show the traceback of any error "
                        "(for a bug report)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    demo_cli.register(groups)
    gateway_cli.register(groups)
    sim_cli.register(groups)
    fleet_cli.register(groups)
    provision_cli.register(groups)
    hardware_cli.register(groups)
    audit_cli.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        if args.verbose or args.debug:
            raise
        print(f"dordt: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if args.verbose or args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dordt: {where}{exc.strerror or exc}\n"
              "dordt: check that path, disk or network; --debug shows where it happened",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("dordt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
