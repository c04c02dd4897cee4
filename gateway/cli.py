"""`dordt gateway ...`: run the gateway daemon, query the local store."""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import threading
import time

from dordt.errors import UserError


def register(groups) -> None:
    g = groups.add_parser("gateway", help="the lamppost gateway daemon",
                          description="Ingest, verify, anonymise, buffer and forward frames.")
    sub = g.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run the gateway until stopped (SIGINT/SIGTERM)",
        description="Run from a config file (--config; see gateway/gateway.sample.toml), or "
        "give --broker, --keyring, --store and --data-dir for a quick start.")
    run.add_argument("--config", metavar="TOML", help="the gateway's config file")
    run.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT")
    run.add_argument("--keyring", metavar="PATH",
                     help="node keyring (JSON, or signed with --keyring-signer); re-read when "
                     "it changes")
    run.add_argument("--keyring-signer", metavar="PUB",
                     help="the fleet's keyring-signer.pub: take only keyrings it signed")
    run.add_argument("--keyring-key", metavar="PEM",
                     help="this gateway's keyring-x25519.pem (default: in --data-dir)")
    run.add_argument("--keyring-poll-s", type=float, default=10.0, metavar="S",
                     help="how often to look for a newer keyring file (default: 10)")
    run.add_argument("--store", metavar="SPEC",
                     help="sqlite:PATH or http://HOST:PORT (InfluxDB / VictoriaMetrics)")
    run.add_argument("--data-dir", metavar="DIR", help="where the durable outbox lives")
    run.add_argument("--client-id", default="dordt-gateway",
                     help="MQTT client id; the broker keeps this session while we are away")
    run.add_argument("--duration", type=float, metavar="S",
                     help="stop after S seconds (default: run until signalled)")
    run.set_defaults(handler=command_run)

    kk = sub.add_parser("keyring-key", help="this gateway's key for sealed keyrings (X25519)")
    kk_sub = kk.add_subparsers(dest="kk_command", metavar="COMMAND", required=True)
    kk_init = kk_sub.add_parser(
        "init", help="make the key pair in the data dir; prints the public key file's path",
        description="Makes keyring-x25519.pem (private, 0600, never leaves the gateway) and "
        "keyring-x25519.pub in the gateway's data dir.  Give the .pub to the fleet operator "
        "for `dordt fleet gateway add NAME --zone Z --keyring-pub FILE`.")
    where = kk_init.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="TOML", help="the gateway's config (its data_dir)")
    where.add_argument("--data-dir", metavar="DIR")
    kk_init.set_defaults(handler=command_keyring_key_init)

    check = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    check.add_argument("--config", required=True, metavar="TOML")
    check.set_defaults(handler=command_check_config)

    verify = sub.add_parser(
        "verify", help="re-check signed batches in a store against the gateway's public key",
        description="Reads a time range back from the store and checks every batch's "
        "signature and digest; with --audit-log also the gateway's hash-chained log.")
    verify.add_argument("--store", required=True, metavar="SPEC",
                        help="sqlite:PATH or http://HOST:PORT of VictoriaMetrics")
    verify.add_argument("--pubkey", required=True, metavar="PEM", help="the gateway.pub file")
    verify.add_argument("--gateway", required=True, help="the gateway id")
    verify.add_argument("--from", dest="start", type=int, required=True, metavar="UNIX_S")
    verify.add_argument("--to", dest="end", type=int, required=True, metavar="UNIX_S")
    verify.add_argument("--audit-log", metavar="PATH")
    verify.set_defaults(handler=command_verify)

    query = sub.add_parser("query", help="show what a local (sqlite) store holds")
    query.add_argument("--store", required=True, metavar="PATH", help="the store file")
    query.add_argument("--zone")
    query.add_argument("--kind", help="air, noise, crowd or node_status")
    query.add_argument("--json", action="store_true", help="one JSON object per node")
    query.set_defaults(handler=command_query)


def _load_config(path: str):
    from gateway.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(str(exc), 2) from exc


def command_keyring_key_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleet.keyring_file import KeyringFileError, init_gateway_key

    data_dir = (_load_config(args.config).path_of("gateway", "data_dir") if args.config
                else Path(args.data_dir))
    try:
        _, public = init_gateway_key(data_dir)
    except KeyringFileError as exc:
        raise UserError(str(exc), 2) from None
    print(public)
    return 0


def _keyring_source(cfg):
    from gateway.keyring_source import KeyringSource

    g = cfg["gateway"]
    return KeyringSource(cfg.path_of("gateway", "keyring"), cfg.path_of("gateway", "data_dir"),
                         g["id"], signer_path=cfg.path_of("gateway", "keyring_signer"),
                         private_key_path=cfg.path_of("gateway", "keyring_key"),
                         poll_s=g["keyring_poll_s"])


def command_check_config(args: argparse.Namespace) -> int:
    from fleet.keyring import KeyringError

    cfg = _load_config(args.config)
    source = _keyring_source(cfg)
    try:
        ring = source.load(keep=False)
    except KeyringError as exc:
        raise UserError(f"{args.config}: [gateway] keyring: {exc}", 2) from exc
    from gateway.anonymise import PolicyError, default_policy_path, load_policy

    policy_path = cfg.path_of("gateway", "policy") or default_policy_path()
    try:
        policy = load_policy(policy_path, known_zones={e.zone for e in ring} or None)
    except PolicyError as exc:
        raise UserError(f"{args.config}: [gateway] policy: {exc}", 2) from exc
    print(f"{args.config}: policy {policy_path} version {policy.version}")
    if source.signed:
        print(f"{args.config}: signed keyring serial {source.serial}, issued "
              f"{source.issued_at}")
    print(f"{args.config}: ok (gateway {cfg['gateway']['id']}, {len(ring)} nodes, "
          f"broker {cfg['mqtt']['url']}, store {cfg['store']['url']})")
    return 0


def command_run(args: argparse.Namespace) -> int:
    from fleet.keyring import KeyringError
    from gateway.buffer import OutboxError
    from gateway.forward import StoreError, open_store
    from gateway.keyring_source import KeyringSource
    from gateway.logs import setup_logging
    from gateway.pipeline import Gateway

    gateway = data_dir = None
    try:
        if args.config:
            cfg = _load_config(args.config)
            setup_logging(cfg["log"]["format"], cfg["log"]["level"])
            data_dir = cfg.path_of("gateway", "data_dir")
            gateway = Gateway.from_config(cfg)
            broker, store_spec = cfg["mqtt"]["url"], cfg["store"]["url"]
        else:
            missing = [f"--{n.replace('_', '-')}" for n in ("broker", "keyring", "store",
                                                           "data_dir") if not getattr(args, n)]
            if missing:
                raise UserError(f"give --config, or all of {', '.join(missing)}", 2)
            if args.keyring_poll_s <= 0:
                raise UserError("--keyring-poll-s: give seconds, more than 0", 2)
            source = KeyringSource(args.keyring, args.data_dir, args.client_id,
                                   signer_path=args.keyring_signer,
                                   private_key_path=args.keyring_key,
                                   poll_s=args.keyring_poll_s)
            keyring = source.load()
            data_dir = args.data_dir
            gateway = Gateway(keyring, open_store(args.store), args.data_dir, args.broker,
                              client_id=args.client_id, keyring_source=source)
            broker, store_spec = args.broker, args.store
        gateway.start()
    except (KeyringError, ValueError) as exc:
        raise UserError(str(exc), 2) from exc
    except (OutboxError, StoreError) as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        if gateway is not None:
            gateway.stop(drain_timeout_s=0)
        raise UserError(_environment_fault(exc, gateway, data_dir)) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"gateway: {len(gateway.verifier.keyring)} nodes, broker {broker}, "
          f"store {store_spec}", flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    refused = None
    while not stop.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        stop.wait(0.2 if left is None else min(0.2, left))
        refused = gateway.ingest.tls_refused if gateway.ingest is not None else None
        if refused:
            break
    gateway.stop(drain_timeout_s=5)
    if refused:
        raise UserError(
            f"the broker {broker} refused this gateway's TLS certificate ({refused}); check "
            "that [mqtt] cert_file is signed by the CA the broker trusts (dordt fleet "
            "issues both)")
    s = gateway.stats
    print(json.dumps({"received": s.received, "accepted": s.accepted,
                      "rejected": dict(s.rejected)}), flush=True)
    return 0


def _environment_fault(exc: OSError, gateway, data_dir) -> str:
    """One line for an OSError met while starting: what happened, what to do."""
    import errno

    if exc.errno == errno.EADDRINUSE and gateway is not None:
        return (f"the health port {gateway.health_port} is in use by another program "
                "(another gateway?); stop it, or set [health] listen to a free port")
    where = exc.filename or data_dir
    if exc.errno == errno.EROFS:
        return (f"{where} is on a read-only filesystem; give a data folder "
                "([gateway] data_dir or --data-dir) on a writable disk")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied; check the owner and mode of the data folder"
    if exc.errno == errno.ENOSPC:
        return f"{where}: the disk is full; free space on it"
    return f"{where}: {exc.strerror or exc}"


def command_verify(args: argparse.Namespace) -> int:
    from gateway import provenance

    try:
        key = provenance.load_public_key(args.pubkey)
    except ValueError as exc:
        raise UserError(str(exc), 2) from exc
    spec = args.store
    try:
        if spec.startswith(("http://", "https://")):
            points = provenance.read_victoriametrics(spec, args.start, args.end)
        else:
            points = provenance.read_local(spec.removeprefix("sqlite:"), args.start, args.end)
    except (OSError, sqlite3.Error, ValueError) as exc:
        raise UserError(f"cannot read {spec}: {exc}") from exc
    report = provenance.verify_batches(points, key, args.gateway)
    print(f"{report.batches_ok} batches verified, {len(report.problems)} problems")
    for problem in report.problems:
        print(f"  {problem}")
    failed = not report.ok
    if args.audit_log:
        problems = provenance.AuditLog(args.audit_log).verify(key)
        print("audit log: chain intact" if not problems else "audit log: BROKEN")
        for problem in problems:
            print(f"  {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


def command_query(args: argparse.Namespace) -> int:
    from gateway.forward import StoreError
    from gateway.forward.local import LocalStore

    try:
        store = LocalStore(args.store, create=False)
    except FileNotFoundError:
        raise UserError(f"no local store at {args.store}; run `dordt demo` first "
                        "or give the path it printed", 2) from None
    except StoreError as exc:
        raise UserError(str(exc)) from exc
    try:
        rows = store.latest(zone=args.zone, kind=args.kind)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print("no readings match")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["time_s"]))
        fields = " ".join(f"{k}={v:g}" for k, v in sorted(row["fields"].items()))
        print(f"{row['zone']:<14} {row['site']:<8} {row['node']} {row['measurement']:<12} "
              f"{when}Z {fields}")
    return 0
