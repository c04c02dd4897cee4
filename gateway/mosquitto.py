"""The shipped Mosquitto configuration of a lamppost gateway, written from its CA material.

In:  a gateway bundle or CA directory (fleet/ca.py's layout: ca.crt, crl.pem and
     gateways/gw-<name>/server.{crt,key}) and the deployment's `BrokerSettings`.
Out: a broker directory that Mosquitto 2.0 reads, written atomically by `install()`::

    mosquitto.conf      the configuration; every option carries its reason
    acl                 who may publish and read what on the TLS listener
    acl-local           the same for the plain loopback listener (only if it is enabled)
    ca.crt crl.pem server.crt   copies, 0644
    server.key          copy, 0640 with group `key_group` (0600 without one)

Copies, not references: Mosquitto opens its TLS files *after* dropping root for its own
user (checked with 2.0.11), who must not be able to read the gateway's keyring or client
key; and in the balena release the broker's container sees only this directory.

On failure (missing or mismatched files, an expired CRL or certificate) `install()` raises
`ValueError` naming the file and the fix, and writes nothing that the broker would load
half-changed.  After a new crl.pem, install again and *restart* the broker: a reload
(SIGHUP) makes Mosquitto read the new CRL for new connections, but a revoked node that is
already connected stays connected until it reconnects (tests/gateway/test_broker_security.py).

`render()` is the same without touching the disk.  Tests start real Mosquitto with exactly
what `install()` wrote, with ports and paths from `BrokerSettings`.

    python -m gateway.mosquitto --ca-dir /var/lib/dordt-gateway/ca --out /etc/dordt/mosquitto
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from firmware import protocol
from fleet.ca import Layout, load_cert, load_crl, write_file_atomic

CONF = "mosquitto.conf"
ACL = "acl"
ACL_LOCAL = "acl-local"

UPLINKS = protocol.TOPIC_ROOT + "/+/+/up"  # docs/protocol.md §5.1
DOWNLINKS = protocol.TOPIC_ROOT + "/+/+/down"
NODE_UPLINK = protocol.TOPIC_ROOT + "/+/%u/up"  # %u: the client's certificate CN
NODE_DOWNLINK = protocol.TOPIC_ROOT + "/+/%u/down"
# Over-the-air updates (docs/ota.md §3): a node asks and reports on its own topics only.
NODE_OTA_WRITE = (protocol.TOPIC_ROOT + "/+/%u/ota/get", protocol.TOPIC_ROOT + "/+/%u/ota/state")
NODE_OTA_READ = (protocol.TOPIC_ROOT + "/+/%u/ota/offer", protocol.TOPIC_ROOT + "/+/%u/ota/chunk")
OTA_REQUESTS = (protocol.TOPIC_ROOT + "/+/+/ota/get", protocol.TOPIC_ROOT + "/+/+/ota/state")
OTA_ANSWERS = (protocol.TOPIC_ROOT + "/+/+/ota/offer", protocol.TOPIC_ROOT + "/+/+/ota/chunk")

# QoS 1 messages in flight to one client, awaiting its PUBACK.  The gateway acks a whole
# group after one outbox commit (gateway/pipeline.py, up to 2000), so this is its group
# size; Mosquitto's default of 20 would make every commit hold 20 readings at most.
MAX_INFLIGHT_MESSAGES = 1000
# A frame is at most 200 bytes (docs/protocol.md §2.2), its topic a few dozen; the largest
# packet is an OTA chunk (docs/ota.md §3: at most 2048 bytes, gateway/ota.py, plus its JSON
# header and topic).  A client sending a packet over this is disconnected before it costs
# the broker memory.
MAX_PACKET_SIZE = 2560


@dataclass(frozen=True)
class BrokerSettings:
    """What differs between deployments (and tests); everything else is fixed above."""

    tls_port: int = 8883
    tls_bind: str | None = None  # None: every interface, since nodes come over the LAN
    local_port: int | None = None  # a plain listener on 127.0.0.1; off unless set
    persistence_dir: str = "/var/lib/mosquitto"
    log_dest: str = "stderr"  # journald (systemd) or the container log (balena)
    run_as: str | None = None  # Mosquitto's `user`; None: its default, "mosquitto"


def render(ca_dir: str | Path, config_dir: str | Path, gateway: str | None = None,
           settings: BrokerSettings = BrokerSettings()) -> dict[str, str]:
    """The broker's text files ({file name: text}) for the gateway in `ca_dir`, with paths
    pointing into `config_dir` (where `install()` puts them)."""
    layout = Layout(ca_dir)
    gw = _gateway(layout, gateway)
    cdir = Path(config_dir)
    files = {CONF: _conf(gw, layout, cdir, settings), ACL: _acl(gw)}
    if settings.local_port is not None:
        files[ACL_LOCAL] = _acl_local()
    return files


def install(ca_dir: str | Path, out_dir: str | Path, gateway: str | None = None,
            settings: BrokerSettings = BrokerSettings(),
            key_group: str | int | None = None, now: dt.datetime | None = None) -> Path:
    """Check the CA material, then write the broker directory `out_dir`; returns the path
    of mosquitto.conf.  `key_group`: the group that may read server.key (the broker's)."""
    layout = Layout(ca_dir)
    gw = _gateway(layout, gateway)
    _check_material(layout, gw, now)
    out = Path(out_dir).absolute()
    files = render(layout.root, out, gw, settings)
    group = _group_id(key_group)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    # TLS files first, the configuration last: a broker (re)started half-way still finds a
    # consistent set of files for the configuration it reads.
    write_file_atomic(out / "ca.crt", layout.ca_cert.read_bytes(), 0o644)
    write_file_atomic(out / "crl.pem", layout.crl.read_bytes(), 0o644)
    write_file_atomic(out / "server.crt", layout.server_cert(gw).read_bytes(), 0o644)
    write_file_atomic(out / "server.key", layout.server_key(gw).read_bytes(),
                      0o640 if group is not None else 0o600, group)
    for name in (ACL, ACL_LOCAL, CONF):
        if name in files:
            write_file_atomic(out / name, files[name].encode(), 0o644)
    if ACL_LOCAL not in files:
        (out / ACL_LOCAL).unlink(missing_ok=True)
    return out / CONF


# -- the files ----------------------------------------------------------------------------


def _conf(gw: str, layout: Layout, cdir: Path, s: BrokerSettings) -> str:
    bind = f" {s.tls_bind}" if s.tls_bind else ""
    lines = [
        f"# Mosquitto 2.0 configuration of dordt gateway {gw}.",
        f"# Written by gateway/mosquitto.py from the CA material in {layout.root.absolute()}:",
        "# do not edit, write it again (python -m gateway.mosquitto).",
        "# Why each option: see the comments, and docs/gateway-operations.md.",
        "",
        "# Access is decided per listener: by client certificate on the TLS listener, by its",
        "# own ACL on the optional loopback one.  (Must come before the listeners.)",
        "per_listener_settings true",
        "",
        "# -- delivery: never drop what a node was told (PUBACK) was received -----------",
        "# The default, 1000 (mosquitto.conf(5)), silently drops QoS 1 messages queued",
        "# beyond it for a slow or absent subscriber: the gateway after a restart, or while",
        "# it commits.  0 = no limit; the gateway's outbox is the bounded buffer.",
        "max_queued_messages 0",
        "# Unacked messages in flight to one client: the gateway acks a group per outbox",
        "# commit, and the default, 20, would cap every group at 20 readings.",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "# A frame is at most 200 bytes (docs/protocol.md 2.2); a client sending a packet",
        "# larger than this is disconnected.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "",
        "# -- persistence: sessions and queued messages survive a broker restart ---------",
        "persistence true",
        f"persistence_location {s.persistence_dir.rstrip('/')}/",
        "# Save every 60 s (default 1800): a power cut loses at most a minute of what was",
        "# queued for an absent gateway.  A clean stop or restart saves everything.",
        "autosave_interval 60",
        "",
        "# -- logging: connections name the client's certificate CN (a node id) ----------",
        f"log_dest {s.log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if s.run_as:
        lines += ["# Started as root, Mosquitto switches to this user.", f"user {s.run_as}"]
    lines += [
        "",
        "# -- nodes and the gateway daemon: TLS with a client certificate from the fleet CA",
        f"listener {s.tls_port}{bind}",
        "# TLS 1.2 is what a node's mbedTLS speaks; 1.3 is used when both sides have it.",
        "tls_version tlsv1.2",
        f"cafile {cdir / 'ca.crt'}",
        f"certfile {cdir / 'server.crt'}",
        f"keyfile {cdir / 'server.key'}",
        "# Revoked certificates (dordt fleet ca revoke).  Past its next-update date OpenSSL",
        "# refuses every client: re-sign it in time (dordt fleet ca crl).",
        f"crlfile {cdir / 'crl.pem'}",
        "# No certificate from this CA, no connection.",
        "require_certificate true",
        "# The certificate's CN (a node id, or gw-<name>) is the user name the ACL sees, so a",
        "# node's topics are bound to its certificate.",
        "use_identity_as_username true",
        "# ... and the client id, so no client can take over another's (the gateway's)",
        "# persistent session by connecting with its client id.",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {cdir / ACL}",
    ]
    if s.local_port is not None:
        lines += [
            "",
            "# -- plain MQTT on loopback: enabled in this deployment's settings -------------",
            "# Only processes on the gateway itself reach it; anonymous, with the gateway",
            "# daemon's rights (read uplinks, write downlinks) and no more.",
            f"listener {s.local_port} 127.0.0.1",
            "allow_anonymous true",
            f"acl_file {cdir / ACL_LOCAL}",
        ]
    return "\n".join(lines) + "\n"


def _acl(gw: str) -> str:
    return "\n".join([
        f"# Access on the TLS listener of dordt gateway {gw} (written by gateway/mosquitto.py).",
        "# %u is the client certificate's CN (use_identity_as_username).",
        "",
        "# A node publishes only its own uplink and reads only its own downlink.  The zone",
        "# level is free: the gateway takes zone and site from its keyring, never from the",
        "# topic, and refuses a frame whose node id differs from the topic's",
        "# (docs/protocol.md 5.1, 7).",
        f"pattern write {NODE_UPLINK}",
        f"pattern read {NODE_DOWNLINK}",
        *[f"pattern write {t}" for t in NODE_OTA_WRITE],
        *[f"pattern read {t}" for t in NODE_OTA_READ],
        "",
        "# The gateway daemon: every uplink in, downlinks out; OTA requests in, answers out.",
        f"user {gw}",
        f"topic read {UPLINKS}",
        f"topic write {DOWNLINKS}",
        *[f"topic read {t}" for t in OTA_REQUESTS],
        *[f"topic write {t}" for t in OTA_ANSWERS],
    ]) + "\n"


def _acl_local() -> str:
    return "\n".join([
        "# Anonymous clients on the loopback listener (written by gateway/mosquitto.py):",
        "# the gateway daemon's rights.  They cannot publish uplinks.",
        f"topic read {UPLINKS}",
        f"topic write {DOWNLINKS}",
        *[f"topic read {t}" for t in OTA_REQUESTS],
        *[f"topic write {t}" for t in OTA_ANSWERS],
    ]) + "\n"


# -- checks -------------------------------------------------------------------------------


def _gateway(layout: Layout, gateway: str | None) -> str:
    found = layout.gateways()
    if gateway is not None:
        if gateway not in found:
            raise ValueError(f"{layout.root}: no certificates for gateway {gateway!r} (found: "
                             f"{', '.join(found) or 'none'})")
        return gateway
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{layout.root}: no gateway certificates (gateways/gw-<name>/): copy "
                         "this gateway's bundle here (`dordt fleet ca export-gateway`)")
    raise ValueError(f"{layout.root} holds several gateways ({', '.join(found)}): say which "
                     "(--gateway)")


def _check_material(layout: Layout, gw: str, now: dt.datetime | None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    ca = load_cert(layout.ca_cert)
    server = load_cert(layout.server_cert(gw))
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(f"{layout.server_cert(gw)} was not issued by {layout.ca_cert}: copy "
                         "both from the same CA") from None
    if server.not_valid_after_utc <= now:
        raise ValueError(f"{layout.server_cert(gw)} expired on "
                         f"{server.not_valid_after_utc:%Y-%m-%d}: issue a new one "
                         "(`dordt fleet ca issue-gateway --replace`)")
    try:
        key = serialization.load_pem_private_key(layout.server_key(gw).read_bytes(), None)
    except FileNotFoundError:
        raise ValueError(f"{layout.server_key(gw)}: missing") from None
    except (OSError, ValueError, TypeError):
        # no exception text: it may quote the file
        raise ValueError(f"{layout.server_key(gw)}: not a readable, unencrypted PEM "
                         "private key") from None
    if key.public_key() != server.public_key():
        raise ValueError(f"{layout.server_key(gw)} does not belong to "
                         f"{layout.server_cert(gw)}")
    crl = load_crl(layout.crl)
    if not crl.is_signature_valid(ca.public_key()):
        raise ValueError(f"{layout.crl} is not signed by {layout.ca_cert}: copy both from "
                         "the same CA")
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        when = f"expired on {crl.next_update_utc:%Y-%m-%d}" if crl.next_update_utc else \
            "has no next-update date"
        raise ValueError(f"{layout.crl} {when}: the broker would refuse every client; "
                         "re-sign it on the CA's machine (`dordt fleet ca crl`) and copy it "
                         "here")


def _group_id(group: str | int | None) -> int | None:
    if group is None or isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"key group {group!r}: no such group (the broker's, e.g. "
                         "mosquitto)") from None


# -- command line (until `dordt gateway` has a sub-command for it) --------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.mosquitto",
        description="Write the gateway's Mosquitto configuration and TLS files from its CA "
        "material (a gateway bundle from `dordt fleet ca export-gateway`).")
    parser.add_argument("--ca-dir", required=True, metavar="DIR")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the broker's directory, e.g. /etc/dordt/mosquitto")
    parser.add_argument("--gateway", metavar="gw-NAME",
                        help="which gateway, if the CA material holds several")
    parser.add_argument("--port", type=int, default=8883, help="TLS listener port")
    parser.add_argument("--bind", metavar="ADDR", help="TLS listener address (default: all)")
    parser.add_argument("--local-port", type=int, metavar="PORT",
                        help="also a plain MQTT listener on 127.0.0.1 (off by default)")
    parser.add_argument("--persistence", default="/var/lib/mosquitto", metavar="DIR")
    parser.add_argument("--key-group", metavar="GROUP",
                        help="group that may read server.key: the broker's (mosquitto)")
    args = parser.parse_args(argv)
    settings = BrokerSettings(tls_port=args.port, tls_bind=args.bind,
                              local_port=args.local_port, persistence_dir=args.persistence)
    try:
        conf = install(args.ca_dir, args.out, args.gateway, settings, args.key_group)
    except (ValueError, OSError) as exc:
        print(f"dordt: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {conf}; (re)start the broker to use it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
