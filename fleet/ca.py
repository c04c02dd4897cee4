"""The fleet CA: the X.509 certificates that decide who may talk to a gateway's broker.

A small certificate authority for the Mosquitto broker on each lamppost gateway:

- every node gets a client certificate whose Common Name is its node id (8 lower-case hex
  digits, as in topics), so the broker's ACL can bind a node to its own topics
  (`use_identity_as_username`, gateway/mosquitto.py);
- every gateway gets a server certificate for its broker (subject alternative names
  localhost, 127.0.0.1, ::1 and the gateway's host names) and a client certificate for
  the gateway daemon, CN ``gw-<name>``;
- a certificate revocation list (CRL, Mosquitto's `crlfile`) shuts a lost, stolen or
  retired node out of the broker.

The certificate decides who may publish *where*; the node's HMAC key (fleet/keyring.py)
decides whether a frame is *authentic*.  Revoking a node does both: `dordt fleet revoke`
in the keyring, `dordt fleet ca revoke` here.

This module *is* the "CA material" format shared by `fleet/` (which writes it) and the
gateway (which reads the part of it it is given); neither reaches into the other's code.

Layout of a CA directory (mode 0700; keys 0600, everything else 0644)::

    ca.crt                      the CA certificate: public, every node and gateway has a copy
    ca.key                      the CA private key: stays on the operator's machine, never
                                goes to a gateway (`export_gateway` leaves it out)
    crl.pem                     the revocation list, signed by the CA (PEM): re-signed on
                                every revocation and by `write_crl`; it has a next-update
                                date after which OpenSSL (so Mosquitto) refuses *every*
                                client, so re-sign it before then (`dordt fleet ca crl`)
    index.json                  the ledger of every certificate issued: serial, role, name,
                                validity, SHA-256 fingerprint, revocation.  No keys.
    nodes/<node>.crt            a node's client certificate, CN = node id (0d0a0001)
    nodes/<node>.key            its private key; goes onto the node at provisioning
    gateways/gw-<name>/server.crt   the gateway broker's TLS server certificate
    gateways/gw-<name>/server.key
    gateways/gw-<name>/client.crt   the gateway daemon's client certificate, CN = gw-<name>
    gateways/gw-<name>/client.key

A *gateway bundle* (`export_gateway`) has the same layout with only ca.crt, crl.pem and
that gateway's own directory, so the gateway reads both the same way (`Layout`).

index.json::

    {"format": "dordt-ca-index", "version": 1, "crl_number": 2,
     "certificates": [{"serial": "<hex>", "role": "node", "name": "0d0a0001",
                       "not_before": "2025-11-28T11:00:00Z", "not_after": "...",
                       "sha256": "<hex>", "revoked_at": null, "reason": null}]}

Keys are EC P-256 with ECDSA-SHA256 signatures: small, and what a node's mbedTLS does
quickly.  Private keys are unencrypted PKCS#8 PEM; protect the CA directory (an encrypted
disk, an offline machine).  Files are written atomically (temporary file, fsync, rename).
Keys never appear in repr(), logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.files import mkdirs_private, write_file_atomic

INDEX_FORMAT = "dordt-ca-index"
INDEX_VERSION = 1

ROLE_NODE = "node"  # a node's client certificate
ROLE_GATEWAY = "gateway"  # the gateway daemon's client certificate
ROLE_BROKER = "broker"  # the gateway broker's server certificate
ROLES = (ROLE_NODE, ROLE_GATEWAY, ROLE_BROKER)

# Validity, in days.  A node cannot renew its certificate in the field, so it lives about
# as long as the hardware; a gateway's can be replaced remotely.  Revocation, not expiry,
# is what ends a lost device's access.
CA_DAYS = 20 * 365
NODE_DAYS = 10 * 365
GATEWAY_DAYS = 5 * 365
CRL_DAYS = 365
# Certificates start an hour in the past so a broker whose clock is a little behind the
# operator's still accepts a certificate issued a moment ago.
BACKDATE = dt.timedelta(hours=1)

GATEWAY_PREFIX = "gw-"
REASONS = ("unspecified", "key_compromise", "cessation_of_operation", "superseded")

_NODE_RE = re.compile(r"[0-9a-f]{8}")
_GATEWAY_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class CAError(ValueError):
    """CA material that cannot be used or an operation that is refused; the message names
    the file or the certificate and what to do (never a key)."""


# -- layout -----------------------------------------------------------------------------


class Layout:
    """Where each file of the CA material (or of a gateway bundle) lives."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    ca_cert = property(lambda self: self.root / "ca.crt")
    ca_key = property(lambda self: self.root / "ca.key")
    crl = property(lambda self: self.root / "crl.pem")
    index = property(lambda self: self.root / "index.json")

    def node_cert(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.crt"

    def node_key(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.key"

    def gateway_dir(self, gateway: str) -> Path:
        return self.root / "gateways" / gateway

    def server_cert(self, gateway: str) -> Path:
        return self.gateway_dir(gateway) / "server.crt"

    def server_key(self, gateway: str) -> Path:
        return self.gateway_dir(gateway) / "server.key"

    def client_cert(self, gateway: str) -> Path:
        return self.gateway_dir(gateway) / "client.crt"

    def client_key(self, gateway: str) -> Path:
        return self.gateway_dir(gateway) / "client.key"

    def gateways(self) -> list[str]:
        """The gateway ids (gw-<name>) that have a directory here, sorted."""
        base = self.root / "gateways"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir()
                      if p.is_dir() and p.name.startswith(GATEWAY_PREFIX))

    def __repr__(self) -> str:
        return f"Layout({str(self.root)!r})"


# -- names ------------------------------------------------------------------------------


def node_name(node: int | str) -> str:
    """A node id as 8 lower-case hex digits (the certificate's CN), from an int or text."""
    if isinstance(node, int) and not isinstance(node, bool):
        if 0 <= node <= 0xFFFF_FFFF:
            return f"{node:08x}"
    elif isinstance(node, str) and _NODE_RE.fullmatch(node):
        return node
    raise CAError(f"node {node!r}: give 8 lower-case hex digits, e.g. 0d0a0001")


def gateway_id(name: str) -> str:
    """'lamp17' or 'gw-lamp17' → 'gw-lamp17' (the client certificate's CN)."""
    bare = name[len(GATEWAY_PREFIX):] if name.startswith(GATEWAY_PREFIX) else name
    if not _GATEWAY_NAME_RE.fullmatch(bare):
        raise CAError(f"gateway name {name!r}: use 1-30 lower-case letters, digits and "
                      "'-' (not at either end), e.g. lamp17")
    return GATEWAY_PREFIX + bare


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise CAError(f"host {host!r}: give an IP address or a lower-case DNS name, "
                      "e.g. lamp17.local")
    return x509.DNSName(host)


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One certificate in the ledger (index.json)."""

    serial: int
    role: str
    name: str  # node id for nodes; gateway id (gw-<name>) for gateways and their brokers
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    def state(self, now: dt.datetime | None = None) -> str:
        """'revoked', 'expired' or 'valid'."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if _now(now) >= self.not_after else "valid"

    def to_json(self) -> dict:
        return {
            "serial": f"{self.serial:x}",
            "role": self.role,
            "name": self.name,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "sha256": self.sha256,
            "revoked_at": _iso(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, raw: object, where: str) -> CertRecord:
        try:
            if not isinstance(raw, dict):
                raise TypeError(raw)
            role = raw["role"]
            if role not in ROLES:
                raise ValueError(role)
            revoked = raw.get("revoked_at")
            return cls(int(raw["serial"], 16), role, str(raw["name"]),
                       _parse_iso(raw["not_before"]), _parse_iso(raw["not_after"]),
                       str(raw["sha256"]), _parse_iso(revoked) if revoked else None,
                       raw.get("reason"))
        except (KeyError, TypeError, ValueError):
            raise CAError(f"{where}: not a certificate record (serial, role, name, "
                          "not_before, not_after, sha256)") from None


# -- the CA -----------------------------------------------------------------------------


class FleetCA:
    """A CA directory opened for issuing and revoking.  Holds the CA key in memory."""

    def __init__(self, layout: Layout, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey, records: list[CertRecord], crl_number: int):
        self.layout = layout
        self.cert = cert
        self._key = key
        self._records = records
        self._crl_number = crl_number

    def __repr__(self) -> str:
        return f"FleetCA({str(self.layout.root)!r}, {len(self._records)} certificates)"

    @property
    def records(self) -> list[CertRecord]:
        return list(self._records)

    # -- create and open ----------------------------------------------------------------

    @classmethod
    def init(cls, root: str | Path, *, name: str = "Dordt fleet CA",
             valid_days: int = CA_DAYS, permitted_dns: Iterable[str] = (),
             now: dt.datetime | None = None) -> FleetCA:
        """Make a new CA in `root` (created, mode 0700) with an empty CRL.

        `permitted_dns`: optional name constraints (RFC 5280 §4.2.1.10) limiting the DNS
        names of broker certificates to these domains and their subdomains ('localhost' is
        always added).  Off by default: check that every TLS stack that verifies the CA
        (the nodes' included) supports the extension, or it refuses the CA altogether."""
        layout = Layout(root)
        if layout.ca_key.exists() or layout.ca_cert.exists():
            raise CAError(f"{layout.root} already holds a CA (ca.crt, ca.key); refusing to "
                          "replace it: every certificate it issued would stop working")
        mkdirs_private(layout.root)
        os.chmod(layout.root, 0o700)
        now = _now(now)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
        )
        dns = sorted({d.strip().lower().lstrip(".") for d in permitted_dns} - {""})
        if dns:
            for d in dns:
                _host_name(d)  # validates the spelling
            subtrees = [x509.DNSName(d) for d in sorted(set(dns) | {"localhost"})]
            # RFC 5280 says name constraints MUST be critical
            builder = builder.add_extension(x509.NameConstraints(subtrees, None),
                                            critical=True)
        cert = builder.sign(key, hashes.SHA256())
        ca = cls(layout, cert, key, [], 0)
        write_file_atomic(layout.ca_key, _key_pem(key), 0o600)
        write_file_atomic(layout.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca.write_crl(now=now)
        return ca

    @classmethod
    def open(cls, root: str | Path) -> FleetCA:
        layout = Layout(root)
        if not layout.ca_key.exists():
            hint = ("this looks like a gateway bundle, which has no CA key"
                    if layout.ca_cert.exists() else "make one with `dordt fleet ca init`")
            raise CAError(f"{layout.root}: no CA key (ca.key): {hint}")
        cert = load_cert(layout.ca_cert)
        try:
            key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), None)
        except (OSError, ValueError, TypeError):
            # no exception text: it may quote the file
            raise CAError(f"{layout.ca_key}: not a readable, unencrypted PEM private key")\
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or \
                key.public_key() != cert.public_key():
            raise CAError(f"{layout.ca_key}: this key does not belong to {layout.ca_cert}")
        records, crl_number = _load_index(layout.index)
        return cls(layout, cert, key, records, crl_number)

    # -- issue ----------------------------------------------------------------------------

    def issue_node(self, node: int | str, *, valid_days: int = NODE_DAYS,
                   replace: bool = False, now: dt.datetime | None = None) -> CertRecord:
        """A client certificate with CN = node id, written to nodes/<node>.{crt,key}.

        Refused while the node holds a valid certificate, unless `replace`: then the old one
        is revoked (superseded) first."""
        name = node_name(node)
        now = _now(now)
        self._make_room(ROLE_NODE, name, replace, now)
        key = _new_key()
        cert = self._sign(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                          ExtendedKeyUsageOID.CLIENT_AUTH, (), valid_days, now)
        return self._store(ROLE_NODE, name, cert, key,
                           self.layout.node_cert(name), self.layout.node_key(name))

    def issue_gateway(self, name: str, hosts: Iterable[str], *,
                      valid_days: int = GATEWAY_DAYS, replace: bool = False,
                      now: dt.datetime | None = None) -> tuple[CertRecord, CertRecord]:
        """The broker's server certificate (SAN localhost, 127.0.0.1, ::1 and `hosts`;
        CN the first host) and the gateway daemon's client certificate (CN gw-<name>),
        written to gateways/gw-<name>/.  Returns (broker, gateway) records."""
        gw = gateway_id(name)
        hosts = list(dict.fromkeys(h.strip().lower() for h in hosts if h.strip()))
        if not hosts:
            raise CAError(f"gateway {gw}: give the host name nodes use to reach it "
                          "(--host), e.g. lamp17.local")
        sans = [_host_name(h) for h in hosts + [h for h in _LOOPBACK_HOSTS if h not in hosts]]
        self._check_name_constraints(gw, sans)
        now = _now(now)
        for role in (ROLE_BROKER, ROLE_GATEWAY):
            self._check_free(role, gw, replace, now)
        for role in (ROLE_BROKER, ROLE_GATEWAY):
            self._make_room(role, gw, replace, now)
        server_key, client_key = _new_key(), _new_key()
        server = self._sign(
            server_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
            ExtendedKeyUsageOID.SERVER_AUTH, sans, valid_days, now)
        client = self._sign(
            client_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gw)]),
            ExtendedKeyUsageOID.CLIENT_AUTH, (), valid_days, now)
        lay = self.layout
        broker = self._store(ROLE_BROKER, gw, server, server_key,
                             lay.server_cert(gw), lay.server_key(gw))
        gateway = self._store(ROLE_GATEWAY, gw, client, client_key,
                              lay.client_cert(gw), lay.client_key(gw))
        return broker, gateway

    # -- revoke ---------------------------------------------------------------------------

    def revoke(self, name: str, *, reason: str = "unspecified",
               now: dt.datetime | None = None) -> list[CertRecord]:
        """Revoke every certificate issued to a node id or gateway id that is not revoked
        yet, and re-sign the CRL.  Returns the newly revoked records (empty when all were
        revoked already).  The broker sees the change once it has the new crl.pem and has
        been restarted (gateway/mosquitto.py)."""
        if reason not in REASONS:
            raise CAError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
        if not any(r.name == name for r in self._records):
            raise CAError(f"{name}: no certificate was issued to it by the CA in "
                          f"{self.layout.root}")
        now = _now(now)
        done = []
        for i, r in enumerate(self._records):
            if r.name == name and r.revoked_at is None:
                self._records[i] = _revoked(r, now, reason)
                done.append(self._records[i])
        self.write_crl(now=now)
        return done

    def write_crl(self, *, valid_days: int = CRL_DAYS,
                  now: dt.datetime | None = None) -> Path:
        """Sign a new CRL listing every revoked certificate (next update in `valid_days`)
        and save it with the ledger."""
        now = _now(now)
        self._crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=valid_days))
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False)
        )
        for r in self._records:
            if r.revoked_at is not None:
                entry = (x509.RevokedCertificateBuilder()
                         .serial_number(r.serial)
                         .revocation_date(r.revoked_at)
                         .add_extension(x509.CRLReason(x509.ReasonFlags[r.reason or
                                                                        "unspecified"]),
                                        critical=False)
                         .build())
                builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self._key, hashes.SHA256())
        self._save_index()
        write_file_atomic(self.layout.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.layout.crl

    # -- gateway bundle -------------------------------------------------------------------

    def export_gateway(self, name: str, out: str | Path) -> Layout:
        """Copy what one gateway needs into `out` (the same layout): ca.crt, crl.pem and
        gateways/gw-<name>/.  Never the CA key, the ledger or any node's key."""
        gw = gateway_id(name)
        src = self.layout
        if not src.server_cert(gw).exists() or not src.client_cert(gw).exists():
            raise CAError(f"gateway {gw} has no certificates in {src.root}: issue them with "
                          "`dordt fleet ca issue-gateway`")
        dst = Layout(out)
        if dst.root.resolve() == src.root.resolve():
            raise CAError(f"{dst.root}: export to another directory than the CA's own")
        mkdirs_private(dst.root)
        for path_of in (lambda lay: lay.ca_cert, lambda lay: lay.crl):
            _copy_atomic(path_of(src), path_of(dst), 0o644)
        for path_of, mode in ((Layout.server_cert, 0o644), (Layout.server_key, 0o600),
                              (Layout.client_cert, 0o644), (Layout.client_key, 0o600)):
            _copy_atomic(path_of(src, gw), path_of(dst, gw), mode)
        return dst

    # -- internals ------------------------------------------------------------------------

    def _check_name_constraints(self, gw: str, sans: list[x509.GeneralName]) -> None:
        try:
            nc = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return
        permitted = [n.value for n in nc.permitted_subtrees or () if isinstance(n, x509.DNSName)]
        for san in sans:
            if isinstance(san, x509.DNSName) and not any(
                    san.value == p or san.value.endswith("." + p) for p in permitted):
                raise CAError(f"gateway {gw}: host {san.value!r} is outside the CA's name "
                              f"constraints ({', '.join(permitted)})")

    def _active(self, role: str, name: str, now: dt.datetime) -> list[CertRecord]:
        return [r for r in self._records
                if r.role == role and r.name == name and r.state(now) == "valid"]

    def _check_free(self, role: str, name: str, replace: bool, now: dt.datetime) -> None:
        active = self._active(role, name, now)
        if active and not replace:
            r = active[-1]
            who = f"node {name}" if role == ROLE_NODE else f"gateway {name}"
            what = "" if role == ROLE_NODE else f" {role}"
            raise CAError(
                f"{who} already has a valid{what} certificate, serial {r.serial:x}, until "
                f"{r.not_after:%Y-%m-%d}; pass --replace to revoke it and issue a new one, "
                "or revoke it first (`dordt fleet ca revoke`)")

    def _make_room(self, role: str, name: str, replace: bool, now: dt.datetime) -> None:
        self._check_free(role, name, replace, now)
        old = self._active(role, name, now)
        if old:
            for i, r in enumerate(self._records):
                if r in old:
                    self._records[i] = _revoked(r, now, "superseded")
            self.write_crl(now=now)

    def _sign(self, key: ec.EllipticCurvePrivateKey, subject: x509.Name,
              usage: x509.ObjectIdentifier, sans: Iterable[x509.GeneralName],
              valid_days: int, now: dt.datetime) -> x509.Certificate:
        not_after = min(now + dt.timedelta(days=valid_days), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False)
        )
        sans = list(sans)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def _store(self, role: str, name: str, cert: x509.Certificate,
               key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> CertRecord:
        record = CertRecord(cert.serial_number, role, name, cert.not_valid_before_utc,
                            cert.not_valid_after_utc,
                            cert.fingerprint(hashes.SHA256()).hex())
        # The ledger first: a certificate that is on record can always be revoked, even if
        # writing its files is interrupted.
        self._records.append(record)
        self._save_index()
        write_file_atomic(key_path, _key_pem(key), 0o600)
        write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return record

    def _save_index(self) -> None:
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
               "crl_number": self._crl_number,
               "certificates": [r.to_json() for r in self._records]}
        write_file_atomic(self.layout.index, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)


# -- reading CA material (the gateway side uses these too) -----------------------------


def load_cert(path: str | Path) -> x509.Certificate:
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CAError(f"{path}: no such certificate") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"{path}: not a PEM certificate ({exc})") from None


def load_crl(path: str | Path) -> x509.CertificateRevocationList:
    path = Path(path)
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise CAError(f"{path}: no such revocation list (every CA directory and gateway "
                      "bundle has a crl.pem)") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"{path}: not a PEM revocation list ({exc})") from None


def crl_next_update(path: str | Path) -> dt.datetime:
    """When the CRL at `path` expires: after that the broker refuses every client."""
    crl = load_crl(path)
    if crl.next_update_utc is None:
        raise CAError(f"{path}: the revocation list has no next-update date")
    return crl.next_update_utc


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


# -- helpers ----------------------------------------------------------------------------


def _now(now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("give an aware datetime (UTC)")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _revoked(r: CertRecord, now: dt.datetime, reason: str) -> CertRecord:
    return CertRecord(r.serial, r.role, r.name, r.not_before, r.not_after, r.sha256,
                      now, reason)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _load_index(path: Path) -> tuple[list[CertRecord], int]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CAError(f"{path}: the CA's ledger is missing; restore it from a backup (without "
                      "it certificates cannot be revoked by name)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CAError(f"{path}: not a readable ledger: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise CAError(f"{path}: not a dordt CA ledger (\"format\" must be \"{INDEX_FORMAT}\")")
    if doc.get("version") != INDEX_VERSION:
        raise CAError(f"{path}: ledger version {doc.get('version')!r}, this tool reads "
                      f"{INDEX_VERSION}")
    certs = doc.get("certificates")
    number = doc.get("crl_number")
    if not isinstance(certs, list) or not isinstance(number, int):
        raise CAError(f"{path}: needs \"certificates\" (a list) and \"crl_number\"")
    return [CertRecord.from_json(c, f"{path}: certificates[{i}]")
            for i, c in enumerate(certs)], number


def _copy_atomic(src: Path, dst: Path, mode: int) -> None:
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{src}: missing from the CA material") from None
    write_file_atomic(dst, data, mode)
