"""`dordt audit ...`: privacy audits and register exports (docs/privacy.md §7).

Thin: argument parsing and presentation over audit/ (manifest, traffic, store,
linkability, registers, report).  Every command prints one line per finding and a summary
line, or JSON with --json.  Exit codes: 0 everything holds, 1 a finding, 2 bad input
(a file that is missing or of the wrong kind, a bad keyring, policy or audit.toml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.findings import AuditInputError, CheckResult
from dordt.errors import UserError


def register(groups) -> None:
    audit = groups.add_parser(
        "audit", help="privacy audits and register exports",
        description="Evidence for privacy officers: what nodes can emit, whether recordings, "
        "gateway files and stores keep to it, whether devices can be linked, and the register "
        "entries. Exit 0: all holds; 1: a finding; 2: bad input.")
    cmds = audit.add_subparsers(dest="command", metavar="COMMAND", required=True)

    man = cmds.add_parser("manifest", help="what each node kind can emit, from the code")
    man.add_argument("--firmware", metavar="DIR", help="firmware source (default: this one)")
    man.add_argument("--out", metavar="FILE", help="write the manifest JSON here")
    man.add_argument("--markdown", action="store_true", help="print Markdown, not JSON")
    man.add_argument("--check", nargs="?", const="", metavar="FILE",
                     help="compare an approved manifest (default audit/manifest.json) with "
                     "the code; exit 1 when it no longer matches")
    man.set_defaults(handler=command_manifest)

    tr = cmds.add_parser("traffic", help="audit a recording of frames against the manifest")
    tr.add_argument("recording", metavar="RECORDING")
    _common(tr, manifest=True, keyring=True)
    tr.set_defaults(handler=command_traffic)

    st = cmds.add_parser("store", help="audit a gateway's files, logs and store")
    st.add_argument("data_dir", metavar="DATA_DIR", help="the gateway's data directory")
    st.add_argument("--store", metavar="SPEC", help="sqlite:PATH or http://HOST:PORT")
    st.add_argument("--log", action="append", default=[], metavar="FILE",
                    help="a gateway log file (repeatable)")
    st.add_argument("--watch", metavar="FILE",
                    help="radio addresses that must not appear, one per line")
    _common(st, keyring=True, config=True)
    st.set_defaults(handler=command_store)

    lk = cmds.add_parser("linkability", help="can a device be linked across windows or nodes?")
    lk.add_argument("--trials", type=int, default=400, metavar="N")
    lk.add_argument("--seed", type=int, default=1)
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(handler=command_linkability)

    rg = cmds.add_parser("registers", help="Algoritmeregister and sensor-register entries")
    rg.add_argument("--keyring", required=True, metavar="FILE")
    rg.add_argument("--zones", metavar="FILE", help="zones file (default: the three zones)")
    rg.add_argument("--out-dir", metavar="DIR",
                    help="write registers.json and registers.md here (default: print)")
    _common(rg, manifest=True, config=True, keyring=False, json_flag=False)
    rg.set_defaults(handler=command_registers)

    rp = cmds.add_parser("report", help="one HTML page (and JSON) over every check")
    rp.add_argument("--data-dir", required=True, metavar="DIR")
    rp.add_argument("--store", metavar="SPEC")
    rp.add_argument("--recording", metavar="FILE",
                    help="a recording of the same period (`dordt sim record --broker`); "
                    "without one the traffic requirements are 'not checked' and the report "
                    "does not pass")
    rp.add_argument("--keyring", required=True, metavar="FILE")
    rp.add_argument("--zones", metavar="FILE")
    rp.add_argument("--log", action="append", default=[], metavar="FILE")
    rp.add_argument("--watch", metavar="FILE")
    rp.add_argument("--trials", type=int, default=400, metavar="N",
                    help="linkability trials (default 400)")
    rp.add_argument("--out", default="audit-report.html", metavar="FILE",
                    help="the HTML page; the JSON goes beside it (default audit-report.html)")
    _common(rp, manifest=True, config=True, keyring=False, json_flag=False)
    rp.set_defaults(handler=command_report)


def _common(p, manifest=False, keyring=False, config=False, json_flag=True) -> None:
    p.add_argument("--policy", metavar="FILE", help="the gateway's privacy policy "
                   "(default gateway/policy.toml)")
    if manifest:
        p.add_argument("--manifest", metavar="FILE",
                       help="the approved manifest (default audit/manifest.json)")
    if keyring:
        p.add_argument("--keyring", metavar="FILE", help="the node keyring")
    if config:
        p.add_argument("--config", metavar="FILE", help="the privacy officer's audit.toml")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")


# -- loading inputs (bad input: exit 2) ---------------------------------------------------------


def _input(fn, *args):
    from fleet.keyring import KeyringError
    from gateway.anonymise import PolicyError
    from hardware.sites import ZonesError

    try:
        return fn(*args)
    except (AuditInputError, KeyringError, PolicyError, ZonesError) as exc:
        raise UserError(str(exc), 2) from None


def _policy(args):
    from gateway.anonymise import default_policy_path, load_policy

    return _input(load_policy, args.policy or default_policy_path())


def _keyring(path):
    if not path:
        return None
    from fleet.keyring import Keyring

    return _input(Keyring.load, path)


def _manifest(args):
    from audit.manifest import load_manifest

    return _input(load_manifest, getattr(args, "manifest", None))


def _config(args):
    from audit.registers import load_audit_config

    return _input(load_audit_config, getattr(args, "config", None))


def _watch(path):
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the watch list ({exc.strerror})", 2) from None


def _show(result: CheckResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_json(), indent=1, sort_keys=True))
    else:
        print("\n".join(result.lines()))
    return 0 if result.ok else 1


# -- commands ------------------------------------------------------------------------------------


def command_manifest(args: argparse.Namespace) -> int:
    from audit import manifest as m

    current = _input(m.build_manifest, args.firmware)
    if args.check is not None:
        path = args.check or m.APPROVED_PATH
        approved = _input(m.load_manifest, path)
        return _show(m.compare(approved, current, str(path)), False)
    text = json.dumps(current, indent=1, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} (firmware {current['firmware_sha256'][:16]})")
    else:
        sys.stdout.write(m.to_markdown(current) if args.markdown else text)
    return 0


def command_traffic(args: argparse.Namespace) -> int:
    from audit.traffic import audit_traffic, open_recording

    reader = _input(open_recording, args.recording)
    result = _input(audit_traffic, reader, _manifest(args), _policy(args),
                    _keyring(args.keyring))
    return _show(result, args.json)


def command_store(args: argparse.Namespace) -> int:
    from audit.registers import required_min_count
    from audit.store import audit_store

    config = _config(args)
    result = _input(audit_store, args.data_dir, args.store, _policy(args),
                    _input(required_min_count, config), args.log, _watch(args.watch),
                    _keyring(args.keyring))
    return _show(result, args.json)


def command_linkability(args: argparse.Namespace) -> int:
    from audit.linkability import audit_linkability

    if args.trials < 10:
        raise UserError(f"--trials {args.trials}: use at least 10 (400 gives a 95 % interval "
                        "of about +-5 %)", 2)
    result = audit_linkability(args.trials, args.seed)
    if not args.json:
        print("Attacker model: holds every count and RSSI bin the fleet emits, stores and logs; "
              "knows where the target was first heard; guesses which of two nodes it moved to.")
        for group in ("static", "rotating", "all"):
            g = result.figures[group]
            lo, hi = g["ci95"]
            print(f"{group:8} phones: linked in {g['accuracy']:.1%} of {g['trials']} trials "
                  f"(95 % interval {lo:.1%}..{hi:.1%}; chance 50 %); the same attacker on "
                  f"stable pseudonyms: {g['leaky_design_accuracy']:.1%}")
        print(f"window key replaced every window and gone after it: "
              f"{result.figures['key_checks']}; equal counts give identical output: "
              f"{result.figures['equal_counts_identical']}")
    return _show(result, args.json)


def _registers(args):
    from audit.registers import build_registers
    from hardware.sites import load_zones

    zones = _input(load_zones, args.zones)
    return build_registers(_keyring(args.keyring), zones, _policy(args), _manifest(args),
                           _config(args))


def command_registers(args: argparse.Namespace) -> int:
    from audit.registers import check_registers, to_markdown

    doc = _registers(args)
    result = check_registers(doc)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "registers.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        (out / "registers.md").write_text(to_markdown(doc), encoding="utf-8")
        print(f"wrote {out / 'registers.json'} and {out / 'registers.md'}")
    else:
        sys.stdout.write(to_markdown(doc))
    print("\n".join(result.lines()), file=sys.stderr if not args.out_dir else sys.stdout)
    return 0 if result.ok else 1


def command_report(args: argparse.Namespace) -> int:
    from audit import manifest as m
    from audit.linkability import audit_linkability
    from audit.registers import check_registers, required_min_count
    from audit.report import build_report, write_report
    from audit.store import audit_store
    from audit.traffic import audit_traffic, open_recording

    policy = _policy(args)
    manifest = _manifest(args)
    keyring = _keyring(args.keyring)
    config = _config(args)
    results = {"manifest": m.compare(manifest, _input(m.build_manifest, None),
                                     args.manifest or "audit/manifest.json")}
    if args.recording:
        results["traffic"] = _input(audit_traffic, _input(open_recording, args.recording),
                                    manifest, policy, keyring)
    results["store"] = _input(audit_store, args.data_dir, args.store, policy,
                              _input(required_min_count, config), args.log,
                              _watch(args.watch), keyring)
    results["linkability"] = audit_linkability(args.trials)
    results["registers"] = check_registers(_registers(args))
    budgets = {zone: float(policy.for_zone(zone).daily_epsilon_budget)
               for zone in {e.zone for e in keyring} if policy.for_zone(zone).noise_on}
    inputs = {"data directory": args.data_dir, "store": args.store or "-",
              "recording": args.recording or "-", "keyring": args.keyring,
              "policy": f"{args.policy or 'gateway/policy.toml'} ({policy.id})",
              "manifest": args.manifest or "audit/manifest.json",
              "audit.toml": args.config or "-"}
    report = build_report(results, inputs, budgets)
    html_path = Path(args.out)
    json_path = html_path.with_suffix(".json")
    write_report(report, html_path, json_path)
    for r in report["requirements"]:
        print(f"{r['status'].upper():11} {r['requirement']}")
        for f in r["findings"][:5]:
            print(f"            {f['where'] + ': ' if f['where'] else ''}{f['message']}")
    print(f"wrote {html_path} and {json_path}")
    return 0 if report["ok"] else 1
