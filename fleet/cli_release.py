"""`dordt fleet release key init | build | verify`: the release key and signed firmware
releases (fleet/release.py; the format is docs/ota.md §1).

register(sub) adds the `release` group to `dordt fleet` and returns its sub-parsers, so
the rollout commands (publish, rollout, status, halt) can add themselves to the same group.
Exit codes (dordt/errors.py): 2 for arguments, keys, or a build that cannot be made; 1 when
`verify` finds a release that does not check out (bad signature, a changed or missing file).
"""

from __future__ import annotations

import argparse
import json

from dordt.errors import EXIT_CONFIG, EXIT_FAILED, UserError


def register(sub):
    g = sub.add_parser("release", help="signed firmware releases: build, publish, staged "
                       "rollout, halt",
                       description="Make the fleet's release key, build a signed release of "
                       "the node firmware, check a release directory, publish it and roll it "
                       "out in stages (canaries, one zone, all zones), halting by itself when "
                       "canaries do not confirm (docs/fleet.md, docs/ota.md).")
    rsub = g.add_subparsers(dest="release_command", metavar="COMMAND", required=True)

    key = rsub.add_parser("key", help="the fleet's release key (Ed25519)")
    key_sub = key.add_subparsers(dest="release_key_command", metavar="COMMAND", required=True)
    init = key_sub.add_parser("init", help="make the key pair: release.key (keep it offline) "
                              "and release.pub (for nodes and gateways)")
    init.add_argument("--dir", required=True, metavar="DIR")
    init.set_defaults(handler=command_key_init)

    build = rsub.add_parser(
        "build", help="compile the firmware and write a signed release directory",
        description="Compiles every firmware module with mpy-cross, writes the slot manifest "
        "and release.json (version from the source's FIRMWARE_VERSION), and signs it with "
        "the release key. The key is read, never printed.")
    build.add_argument("--key", required=True, metavar="PEM", help="release.key")
    build.add_argument("--serial", required=True, type=int, metavar="N",
                       help="above every serial signed before (nodes refuse older ones)")
    build.add_argument("--kinds", required=True, nargs="+", metavar="KIND",
                       help="node kinds it is for: air noise crowd")
    build.add_argument("--hardware", nargs="+", metavar="PROFILE",
                       help="board profiles it is for (default: every profile)")
    build.add_argument("--min-firmware", default="0.0.0", metavar="M.m.p",
                       help="the oldest running firmware that may update to it")
    build.add_argument("--rollback", action="store_true",
                       help="sign it as a rollback: nodes take it even when it is older")
    build.add_argument("--source", metavar="FIRMWARE_DIR",
                       help="the firmware/ tree to build (default: this installation's)")
    build.add_argument("--arch", metavar="ARCH",
                       help="mpy-cross -march (default: bytecode, runs on every board)")
    build.add_argument("--out", required=True, metavar="DIR", help="a new directory")
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(handler=command_build)

    verify = rsub.add_parser("verify", help="check a release's signature and every file")
    verify.add_argument("dir", metavar="DIR")
    verify.add_argument("--pub", required=True, metavar="FILE", help="release.pub")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=command_verify)
    return rsub


def _call(fn, *args, exit_code=EXIT_CONFIG, **kwargs):
    from fleet.release import ReleaseError

    try:
        return fn(*args, **kwargs)
    except ReleaseError as exc:
        raise UserError(str(exc), exit_code) from None


def _summary(release) -> dict:
    return {"dir": str(release.root), "serial": release.serial, "version": release.version,
            "rollback": release.rollback, "kinds": release.kinds,
            "hardware": release.hardware, "min_firmware": release.doc["min_firmware"],
            "arch": release.doc["arch"], "files": len(release.files), "size": release.size,
            "manifest_sha256": release.manifest_sha256}


def command_key_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.release import init_release_key

    private, public = _call(init_release_key, Path(args.dir))
    print(f"release key: {private} (private, 0600: keep it offline, it signs firmware for "
          f"every node); {public} goes onto nodes at enrolment (--release-pub) and to the "
          "rollout")
    return 0


def command_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.release import build_release

    kinds = [k for item in args.kinds for k in item.split(",") if k]
    hardware = [h for item in args.hardware or () for h in item.split(",") if h] or None
    release = _call(build_release, Path(args.key), args.serial, kinds, Path(args.out),
                    hardware=hardware, min_firmware=args.min_firmware,
                    rollback=args.rollback,
                    source=Path(args.source) if args.source else None, arch=args.arch)
    if args.json:
        print(json.dumps(_summary(release), sort_keys=True))
    else:
        print(f"built release {release.serial} (firmware {release.version}"
              f"{', a rollback' if release.rollback else ''}) for {', '.join(release.kinds)} "
              f"on {', '.join(release.hardware)}: {len(release.files)} files, "
              f"{release.size} bytes, in {release.root}")
    return 0


def command_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.release import load_public_key, verify_release

    public = _call(load_public_key, Path(args.pub))
    release = _call(verify_release, Path(args.dir), public, exit_code=EXIT_FAILED)
    if args.json:
        print(json.dumps(dict(_summary(release), ok=True), sort_keys=True))
    else:
        print(f"release {release.serial} (firmware {release.version}) in {release.root}: "
              f"signature and all {len(release.files)} files check out")
    return 0
