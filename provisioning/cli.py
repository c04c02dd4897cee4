"""`dordt provision ...`: the technician's tool, one command per step.

    ports · flash · install · enrol · selftest · label · run · batch · virtual-board

Thin: argument parsing and presentation over the library modules beside it (ports, flash,
build + install, enrol, selftest, label, workflow, virtual_board), which tests call
directly.  Progress and results go to the terminal with rich; `--json` prints one JSON
object instead.  Exit codes (docs/technician-guide.md): 0 done, 1 a check failed or the
board did not take what was written, 2 something the technician typed or chose (zone, site,
node id, board type, image hash, bundle), 3 the board or its link (not found, not
answering, unplugged), 130 interrupted.  No Python traceback for any of these.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dordt.errors import UserError

DEFAULT_WORK_DIR = "dordt-provision"


def register(groups) -> None:
    g = groups.add_parser(
        "provision", help="flash, install, enrol, self-test and label boards",
        description="The technician's tool: from a blank board to an enrolled, self-tested "
        "node. `run` does every step for one board, `batch` for a tray of boards; both "
        "resume where a previous run stopped. docs/technician-guide.md is the runbook.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from provisioning import flash, label, ports, virtual_board

    p = sub.add_parser("ports", help="list serial ports and the boards on them")
    ports.add_ports_arguments(p)
    p.set_defaults(handler=ports.command_ports)

    p = sub.add_parser("flash", help="write MicroPython onto a board (ESP32-S3 or Pico W)")
    flash.add_flash_arguments(p)
    p.set_defaults(handler=flash.command_flash)

    p = sub.add_parser("install", help="install the node firmware (verified, atomic switch)")
    _board_args(p)
    p.add_argument("--force", dest="reinstall", action="store_true",
                   help="stage, check and switch to a fresh copy in the other slot even when "
                   "the board holds this build (files still good on the board are copied "
                   "there, not sent)")
    p.set_defaults(handler=command_install)

    p = sub.add_parser("enrol", help="make the node's key and config; seal the key into the "
                       "enrolment bundle")
    _board_args(p)
    _enrol_args(p)
    p.set_defaults(handler=command_enrol)

    p = sub.add_parser("selftest", help="check sensors, heap, clock, key and a signed frame")
    _board_args(p)
    p.add_argument("--broker", metavar="URL",
                   help="also see the frame accepted by a gateway on this MQTT broker")
    p.set_defaults(handler=command_selftest)

    p = sub.add_parser("rekey", help="take a rotated key to the board (a rekey file from "
                       "`dordt fleet registry rotate-key`)",
                       description="Sends the rekey file to the board, which opens it with its "
                       "current key and switches to the new key id in one atomic step "
                       "(docs/fleet.md, 'Key rotation'). The new key is never in the clear on "
                       "this laptop or the serial line.")
    _board_args(p)
    p.add_argument("rekey_file", metavar="REKEY_FILE")
    p.set_defaults(handler=command_rekey)

    p = sub.add_parser("label", help="write a QR label (SVG and PNG) with the node's public "
                       "fields")
    label.add_label_arguments(p)
    p.set_defaults(handler=label.command_label)

    from provisioning import workflow

    p = sub.add_parser("run", help="every step for one board, resuming a previous run")
    _board_args(p)
    _enrol_args(p)
    p.add_argument("--gateway-broker", metavar="URL",
                   help="self-test through a running gateway on this MQTT broker")
    p.add_argument("--image", metavar="FILE", help="flash this MicroPython image first "
                   "(ESP32-S3, needs --board; its SHA-256 must be known, see `flash`)")
    p.set_defaults(handler=workflow.command_run)

    p = sub.add_parser("batch", help="a tray of boards from a tray file, resumable")
    workflow.add_batch_arguments(p)
    _work_args(p)
    p.set_defaults(handler=workflow.command_batch)

    p = sub.add_parser("virtual-board",
                       help="a MicroPython board on a pty, to practise on (and for tests)")
    virtual_board.add_arguments(p)
    p.set_defaults(handler=virtual_board.command_virtual_board)


def _work_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", metavar="DIR",
                   default=os.environ.get("DORDT_PROVISION_DIR", DEFAULT_WORK_DIR),
                   help="where enrolments, labels and run states are kept "
                   f"(default ${{DORDT_PROVISION_DIR}} or ./{DEFAULT_WORK_DIR})")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _board_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, metavar="PORT",
                   help="the board's serial port (`dordt provision ports` lists them)")
    p.add_argument("--board", metavar="PROFILE",
                   help="the board type expected on the port (esp32-s3-devkitc-1, pico-w): "
                   "anything else is refused")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up on a silent board after S seconds (default 10)")
    _work_args(p)


def _enrol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zone", help="the zone, as in hardware/data/zones.toml (e.g. spoorzone)")
    p.add_argument("--site", help="the lamppost site (e.g. spz-01)")
    p.add_argument("--kind", choices=["air", "noise", "crowd"])
    p.add_argument("--node", metavar="ID", help="the node id on the board's label (8 hex "
                   "digits), instead of --zone/--site/--kind")
    p.add_argument("--fleet-key", metavar="PUB",
                   help="the fleet's enrolment public key (default WORK_DIR/enrol-x25519.pub)")
    p.add_argument("--release-pub", metavar="FILE",
                   help="the fleet's release public key (release.pub): written to the node as "
                   "/release.pub, the key it takes firmware updates over the air from")
    p.add_argument("--broker-host", default="gateway.local",
                   help="the MQTT broker the node reports to (default gateway.local)")
    p.add_argument("--broker-port", type=int, help="default 1883")
    p.add_argument("--wifi-ssid", help="Wi-Fi network the node joins")
    p.add_argument("--wifi-password-env", metavar="VAR",
                   help="name of an environment variable holding the Wi-Fi password (never "
                   "give a password on the command line)")
    p.add_argument("--keyring", metavar="PATH",
                   help="refuse node ids this fleet keyring holds already")
    p.add_argument("--zones", metavar="TOML", help="zones file (default the packaged one)")
    p.add_argument("--force", action="store_true",
                   help="enrol a board that is enrolled as another node already")


# -- shared presentation ------------------------------------------------------------------


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def emit(args, doc: dict, lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, sort_keys=True))
    else:
        for line in lines:
            print(line)


def open_link(args):
    from provisioning.link import BoardLink

    return BoardLink(args.port, timeout_s=args.timeout)


def work_dir(args) -> Path:
    return Path(args.work_dir)


def fleet_key_path(args) -> Path:
    return Path(args.fleet_key) if getattr(args, "fleet_key", None) else \
        work_dir(args) / "enrol-x25519.pub"


def release_pub_path(args) -> Path | None:
    return Path(args.release_pub) if getattr(args, "release_pub", None) else None


def bundle_path(args) -> Path:
    return work_dir(args) / "enrolments.bundle.json"


def wifi_from_args(args) -> dict | None:
    if not args.wifi_ssid:
        return None
    password = ""
    if args.wifi_password_env:
        password = os.environ.get(args.wifi_password_env)
        if password is None:
            raise UserError(f"--wifi-password-env {args.wifi_password_env}: that environment "
                            "variable is not set", 2)
    return {"ssid": args.wifi_ssid, "password": password}


def broker_from_args(args) -> dict:
    broker = {"host": args.broker_host}
    if args.broker_port:
        broker["port"] = args.broker_port
    return broker


# -- install -------------------------------------------------------------------------------


def do_install(link, info, args, out=None):
    """Build for the board's architecture and install with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from provisioning.build import BuildError, build_firmware
    from provisioning.install import InstallError, install

    try:
        build = build_firmware(info.arch)
    except BuildError as exc:
        raise UserError(str(exc), 1) from None
    out = out or console()
    with Progress(TextColumn("install {task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=out, transient=True,
                  disable=getattr(args, "json", False)) as bar:
        task = bar.add_task("", total=build.size)

        def progress(done, total, path):
            bar.update(task, completed=done, total=max(total, 1), description=path)

        try:
            # `run --force` is about enrolment; only `install --force` re-sends every file
            return install(link, build, progress, force=getattr(args, "reinstall", False))
        except InstallError as exc:
            raise UserError(str(exc), exc.exit_code) from None


def install_lines(report) -> list[str]:
    if report.unchanged:
        return [f"firmware {report.version} is installed already (slot {report.slot}); every "
                "file checked on the board, nothing sent"]
    lines = []
    if report.found_wrong:
        lines.append(f"found on the board and repaired: {', '.join(report.found_wrong)} "
                     "(did not match its SHA-256)")
    lines.append(
        f"installed firmware {report.version} in slot {report.slot}: "
        f"{len(report.sent_files)} files sent ({report.sent_bytes} bytes, "
        f"{report.bytes_per_s / 1000:.1f} kB/s), {len(report.reused_files)} unchanged files "
        f"copied on the board, all checked by SHA-256; the board boots it")
    return lines


def command_install(args) -> int:
    from provisioning.identify import identify

    with open_link(args) as link:
        info = identify(link, args.board)
        report = do_install(link, info, args)
    emit(args, {"board": info.name, **report.as_dict()}, install_lines(report))
    return 0


# -- enrol -----------------------------------------------------------------------------------


def command_enrol(args) -> int:
    from provisioning import enrol as enrolment
    from provisioning.identify import identify

    placement = enrolment.plan(args.zone, args.site, args.kind, args.node,
                               Path(args.zones) if args.zones else None)
    with open_link(args) as link:
        info = identify(link, args.board)
        done = enrolment.enrol(
            link, info, placement, fleet_key_path(args), bundle_path(args),
            broker_from_args(args), wifi_from_args(args),
            Path(args.keyring) if args.keyring else None, args.force,
            release_pub=release_pub_path(args))
    what = "was enrolled already as" if done.already else "enrolled as"
    emit(args, {"node": done.node, "kind": done.kind, "zone": done.zone, "site": done.site,
                "board": done.board, "enrolled_at": done.enrolled_at,
                "already": done.already, "bundle": str(bundle_path(args)),
                "release_pub": done.release_pub},
         [f"board {what} node {done.node} ({done.kind}, {done.zone}/{done.site}); key sealed "
          f"in {bundle_path(args)} (hand it to the fleet operator: `dordt fleet import`)"
          + ("; release key written to /release.pub" if done.release_pub else "")])
    return 0


# -- rekey -----------------------------------------------------------------------------------


def command_rekey(args) -> int:
    from provisioning import rekey
    from provisioning.identify import identify

    doc = rekey.load(Path(args.rekey_file))
    with open_link(args) as link:
        identify(link, args.board)
        done = rekey.rekey(link, doc)
    emit(args, {"node": done.node, "from_key_id": done.from_key_id, "key_id": done.key_id,
                "fingerprint": done.fingerprint},
         [f"node {done.node} now signs with key {done.key_id} (fingerprint {done.fingerprint}) "
          f"from its next start; delete {args.rekey_file}, and once its frames arrive under "
          f"key {done.key_id}: `dordt fleet registry rotate-key {done.node} --finish`"])
    return 0


# -- selftest --------------------------------------------------------------------------------


def command_selftest(args) -> int:
    from provisioning.identify import identify
    from provisioning.selftest import selftest

    with open_link(args) as link:
        info = identify(link, args.board)
        path = bundle_path(args)
        report = selftest(link, info, path if path.exists() else None, args.broker)
    lines = [f"self-test of node {report.node} ({report.kind}, {report.zone}/{report.site}):"]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name:<13} {detail}" for name, ok, detail in
              report.rows]
    lines.append("all checks passed" if report.ok else
                 "some checks failed: see docs/technician-guide.md, 'Self-test'")
    emit(args, report.as_dict(), lines)
    return 0 if report.ok else 1

