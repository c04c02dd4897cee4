"""The fleet CA: certificates a broker accepts for exactly the right purposes, a CRL that
revokes, files with the right modes, and keys that never leak.

OpenSSL's own `openssl verify` (the library Mosquitto uses) is the cross-check where it
matters: purposes, host names, revocation, expiry and name constraints.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from dordt.cli import main as dordt_main
from fleet import ca as fleet_ca
from fleet.ca import CAError, FleetCA, Layout, crl_next_update, gateway_id, load_cert

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


@pytest.fixture
def ca(tmp_path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl_verify(ca: FleetCA, cert, *args: str) -> str:
    r = subprocess.run([OPENSSL, "verify", "-CAfile", str(ca.layout.ca_cert), *args, str(cert)],
                       capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def key_secrets(path) -> list[str]:
    """Strings that would give a private key away: its PEM body lines, its scalar."""
    pem = path.read_text()
    key = serialization.load_pem_private_key(pem.encode(), None)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    scalar = key.private_numbers().private_value
    return body + [f"{scalar:x}", str(scalar)]


# -- the CA -------------------------------------------------------------------------------


def test_init_makes_a_p256_ca_with_an_empty_crl_and_private_files(ca):
    lay = ca.layout
    assert mode(lay.root) == 0o700
    assert mode(lay.ca_key) == 0o600
    assert (mode(lay.ca_cert), mode(lay.crl), mode(lay.index)) == (0o644, 0o644, 0o644)
    cert = load_cert(lay.ca_cert)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)  # self-signed
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 19.9 < years < 20.1
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.NameConstraints)
    crl = x509.load_pem_x509_crl(lay.crl.read_bytes())
    assert crl.is_signature_valid(cert.public_key()) and len(crl) == 0
    assert crl_next_update(lay.crl) > NOW + dt.timedelta(days=360)


def test_init_refuses_to_replace_an_existing_ca(ca):
    before = ca.layout.ca_key.read_bytes()
    with pytest.raises(CAError, match="already holds a CA"):
        FleetCA.init(ca.layout.root)
    assert ca.layout.ca_key.read_bytes() == before


# -- nodes --------------------------------------------------------------------------------


@needs_openssl
def test_a_node_certificate_names_the_node_and_is_for_clients_only(ca):
    record = ca.issue_node(0x0D0A0001)
    lay = ca.layout
    cert = load_cert(lay.node_cert("0d0a0001"))
    assert fleet_ca.common_name(cert) == "0d0a0001" == record.name
    assert record.role == "node" and record.serial == cert.serial_number
    assert record.sha256 == cert.fingerprint(hashes.SHA256()).hex()
    cert.verify_directly_issued_by(ca.cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (mode(lay.node_key("0d0a0001")), mode(lay.node_cert("0d0a0001"))) == (0o600, 0o644)
    key = serialization.load_pem_private_key(lay.node_key("0d0a0001").read_bytes(), None)
    assert key.public_key() == cert.public_key()
    assert 9.9 < (record.not_after - record.not_before).days / 365 < 10.1
    assert record.not_before <= NOW  # back-dated for a broker whose clock is behind
    node = lay.node_cert("0d0a0001")
    assert openssl_verify(ca, node, "-purpose", "sslclient").endswith("OK")
    assert "unsuitable certificate purpose" in openssl_verify(ca, node, "-purpose", "sslserver")


@pytest.mark.parametrize("node", ["0D0A0001", "d0a0001", "0d0a00012", "zzzzzzzz", -1,
                                  2**32, True, None])
def test_node_ids_must_be_eight_lower_case_hex_digits(ca, node):
    with pytest.raises(CAError, match="8 lower-case hex digits"):
        ca.issue_node(node)
    assert ca.records == []


def test_a_node_gets_a_second_certificate_only_by_replacing_the_first(ca):
    first = ca.issue_node("0d0a0001")
    with pytest.raises(CAError, match=f"serial {first.serial:x}.*--replace"):
        ca.issue_node("0d0a0001")
    second = ca.issue_node("0d0a0001", replace=True)
    states = {r.serial: (r.state(), r.reason) for r in ca.records}
    assert states == {first.serial: ("revoked", "superseded"), second.serial: ("valid", None)}
    assert load_cert(ca.layout.node_cert("0d0a0001")).serial_number == second.serial
    crl = x509.load_pem_x509_crl(ca.layout.crl.read_bytes())
    assert [r.serial_number for r in crl] == [first.serial]
    # after a revocation the node may be enrolled again without --replace
    ca.revoke("0d0a0001")
    assert ca.issue_node("0d0a0001").state() == "valid"


@needs_openssl
def test_an_expired_certificate_is_expired_for_openssl_and_no_cert_outlives_its_ca(tmp_path):
    ca = FleetCA.init(tmp_path / "ca", valid_days=365)
    old = ca.issue_node("0d0a0001", valid_days=1, now=NOW - dt.timedelta(days=3))
    assert old.state() == "expired"
    assert "certificate has expired" in openssl_verify(ca, ca.layout.node_cert("0d0a0001"))
    # expired, so a new one needs no --replace
    new = ca.issue_node("0d0a0001")
    assert new.not_after == ca.cert.not_valid_after_utc  # capped at the CA's own expiry


# -- gateways -----------------------------------------------------------------------------


@needs_openssl
def test_a_gateway_gets_a_broker_certificate_for_its_hosts_and_a_client_certificate(ca):
    broker, client = ca.issue_gateway("lamp17", ["lamp17.local", "10.0.0.17"])
    assert broker.name == client.name == "gw-lamp17"
    assert (broker.role, client.role) == ("broker", "gateway")
    lay = ca.layout
    server = load_cert(lay.server_cert("gw-lamp17"))
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"lamp17.local", "localhost"}
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {
        "10.0.0.17", "127.0.0.1", "::1"}
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    gw = load_cert(lay.client_cert("gw-lamp17"))
    assert fleet_ca.common_name(gw) == "gw-lamp17"
    for key in (lay.server_key("gw-lamp17"), lay.client_key("gw-lamp17")):
        assert mode(key) == 0o600
    assert mode(lay.gateway_dir("gw-lamp17").parent) == 0o700
    s, c = lay.server_cert("gw-lamp17"), lay.client_cert("gw-lamp17")
    assert openssl_verify(ca, s, "-purpose", "sslserver", "-verify_ip", "127.0.0.1") \
        .endswith("OK")
    assert openssl_verify(ca, s, "-purpose", "sslserver", "-verify_hostname", "lamp17.local") \
        .endswith("OK")
    assert "mismatch" in openssl_verify(ca, s, "-verify_hostname", "lamp18.local")
    assert openssl_verify(ca, c, "-purpose", "sslclient").endswith("OK")
    # the broker's certificate cannot log in as a client, the client's cannot serve
    assert "unsuitable" in openssl_verify(ca, s, "-purpose", "sslclient")
    assert "unsuitable" in openssl_verify(ca, c, "-purpose", "sslserver")
    assert lay.gateways() == ["gw-lamp17"]


@pytest.mark.parametrize("name, hosts, words", [
    ("Lamp17", ["lamp17.local"], "gateway name 'Lamp17'"),
    ("lamp_17", ["lamp17.local"], "gateway name"),
    ("-lamp", ["lamp17.local"], "gateway name"),
    ("lamp17", [], "give the host name"),
    ("lamp17", ["Lamp 17"], "host 'lamp 17'"),
    ("lamp17", ["lamp17..local"], "host"),
])
def test_bad_gateway_names_and_hosts_are_refused_with_the_value(ca, name, hosts, words):
    with pytest.raises(CAError, match=words):
        ca.issue_gateway(name, hosts)
    assert ca.records == []


def test_gateway_ids_take_the_prefix_once():
    assert gateway_id("lamp17") == gateway_id("gw-lamp17") == "gw-lamp17"


@needs_openssl
def test_name_constraints_limit_broker_host_names_but_not_node_common_names(tmp_path):
    ca = FleetCA.init(tmp_path / "ca", permitted_dns=["gw.dordrecht.nl"])
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert {n.value for n in nc.value.permitted_subtrees} == {"gw.dordrecht.nl", "localhost"}
    ca.issue_gateway("lamp17", ["lamp17.gw.dordrecht.nl"])
    with pytest.raises(CAError, match="outside the CA's name constraints"):
        ca.issue_gateway("lamp18", ["lamp18.local"])
    ca.issue_node("0d0a0001")
    # OpenSSL applies DNS constraints to a CN that looks like a host name; a node id does not
    assert openssl_verify(ca, ca.layout.node_cert("0d0a0001"), "-purpose", "sslclient") \
        .endswith("OK")
    assert openssl_verify(ca, ca.layout.server_cert("gw-lamp17"), "-verify_hostname",
                          "lamp17.gw.dordrecht.nl").endswith("OK")


# -- revocation ---------------------------------------------------------------------------


@needs_openssl
def test_revoking_a_node_lists_it_in_a_freshly_signed_crl_that_openssl_enforces(ca):
    ca.issue_node("0d0a0001")
    kept = ca.issue_node("0d0a0002")
    number_before = x509.load_pem_x509_crl(ca.layout.crl.read_bytes()).extensions \
        .get_extension_for_class(x509.CRLNumber).value.crl_number
    (gone,) = ca.revoke("0d0a0001", reason="key_compromise", now=NOW)
    crl = x509.load_pem_x509_crl(ca.layout.crl.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > \
        number_before
    entry = crl.get_revoked_certificate_by_serial_number(gone.serial)
    assert entry.revocation_date_utc == NOW
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(kept.serial) is None
    check = ("-crl_check", "-CRLfile", str(ca.layout.crl))
    assert "certificate revoked" in openssl_verify(ca, ca.layout.node_cert("0d0a0001"), *check)
    assert openssl_verify(ca, ca.layout.node_cert("0d0a0002"), *check).endswith("OK")
    # again: nothing left to revoke, the CRL still lists it
    assert ca.revoke("0d0a0001") == []
    assert "certificate revoked" in openssl_verify(ca, ca.layout.node_cert("0d0a0001"), *check)


def test_revoking_a_gateway_revokes_both_its_certificates(ca):
    ca.issue_gateway("lamp17", ["lamp17.local"])
    done = ca.revoke(gateway_id("lamp17"))
    assert {r.role for r in done} == {"broker", "gateway"}
    crl = x509.load_pem_x509_crl(ca.layout.crl.read_bytes())
    assert {r.serial_number for r in crl} == {r.serial for r in done}


def test_revoking_what_was_never_issued_or_with_an_unknown_reason_is_refused(ca):
    ca.issue_node("0d0a0001")
    with pytest.raises(CAError, match="0d0a0009: no certificate was issued"):
        ca.revoke("0d0a0009")
    with pytest.raises(CAError, match="reason 'lost'"):
        ca.revoke("0d0a0001", reason="lost")


@needs_openssl
def test_a_crl_past_its_next_update_fails_every_client_in_openssl(ca):
    """Why `dordt fleet ca crl` exists: Mosquitto checks the CRL's dates too."""
    ca.issue_node("0d0a0001")
    ca.write_crl(valid_days=1, now=NOW - dt.timedelta(days=2))
    out = openssl_verify(ca, ca.layout.node_cert("0d0a0001"), "-crl_check", "-CRLfile",
                         str(ca.layout.crl))
    assert "CRL has expired" in out


# -- the ledger and the files -------------------------------------------------------------


def test_the_ledger_survives_reopening_and_holds_no_keys(ca):
    ca.issue_node("0d0a0001")
    ca.issue_gateway("lamp17", ["lamp17.local"])
    ca.revoke("0d0a0001", now=NOW)
    again = FleetCA.open(ca.layout.root)
    assert again.records == ca.records
    doc = json.loads(ca.layout.index.read_text())
    assert doc["format"] == "dordt-ca-index" and doc["version"] == 1
    assert [c["name"] for c in doc["certificates"]] == ["0d0a0001", "gw-lamp17", "gw-lamp17"]
    text = ca.layout.index.read_text()
    assert "PRIVATE" not in text
    for key in (ca.layout.ca_key, ca.layout.node_key("0d0a0001")):
        assert not any(s in text for s in key_secrets(key))


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(ca, monkeypatch):
    ca.issue_node("0d0a0001")
    crl_before = ca.layout.crl.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fleet_ca.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        ca.revoke("0d0a0001")
    assert ca.layout.crl.read_bytes() == crl_before
    assert not [p for p in ca.layout.root.rglob(".*")]


@pytest.mark.parametrize("damage, words", [
    (lambda lay: lay.ca_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n"),
     "ca.key: not a readable, unencrypted PEM private key"),
    (lambda lay: lay.index.unlink(), "ledger is missing"),
    (lambda lay: lay.index.write_text('{"format": "dordt-ca-index", "version": 7}'),
     "ledger version 7"),
    (lambda lay: lay.index.write_text(json.dumps({
        "format": "dordt-ca-index", "version": 1, "crl_number": 1,
        "certificates": [{"serial": "zz"}]})), r"certificates\[0\]: not a certificate record"),
    (lambda lay: lay.ca_cert.write_text("junk"), "ca.crt: not a PEM certificate"),
])
def test_damaged_ca_material_gives_errors_that_name_the_file(ca, damage, words):
    damage(ca.layout)
    with pytest.raises(CAError, match=words):
        FleetCA.open(ca.layout.root)


def test_a_key_that_is_not_the_cas_is_refused(ca, tmp_path):
    other = FleetCA.init(tmp_path / "other")
    shutil.copy(other.layout.ca_key, ca.layout.ca_key)
    with pytest.raises(CAError, match="does not belong to"):
        FleetCA.open(ca.layout.root)


def test_keys_never_appear_in_repr_or_errors(ca):
    ca.issue_node("0d0a0001")
    ca.issue_gateway("lamp17", ["lamp17.local"])
    lay = ca.layout
    secrets = [s for k in (lay.ca_key, lay.node_key("0d0a0001"), lay.client_key("gw-lamp17"))
               for s in key_secrets(k)]
    texts = [repr(ca), repr(lay), str(ca.records), repr(ca.records[0])]
    # an error about the key file itself must not quote it: damage it and open
    good_key = lay.ca_key.read_text()
    lay.ca_key.write_text(good_key.replace("\n", "\n!", 1))
    with pytest.raises(CAError) as err:
        FleetCA.open(lay.root)
    texts += [str(err.value), repr(err.value)]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert not any(s in text for s in secrets), text


# -- gateway bundle -----------------------------------------------------------------------


def test_a_gateway_bundle_holds_only_what_that_gateway_needs(ca, tmp_path):
    ca.issue_node("0d0a0001")
    ca.issue_gateway("lamp17", ["lamp17.local"])
    ca.issue_gateway("lamp18", ["lamp18.local"])
    bundle = ca.export_gateway("lamp17", tmp_path / "bundle")
    files = sorted(str(p.relative_to(bundle.root)) for p in bundle.root.rglob("*")
                   if p.is_file())
    assert files == ["ca.crt", "crl.pem", "gateways/gw-lamp17/client.crt",
                     "gateways/gw-lamp17/client.key", "gateways/gw-lamp17/server.crt",
                     "gateways/gw-lamp17/server.key"]
    assert mode(bundle.root) == 0o700
    assert mode(bundle.client_key("gw-lamp17")) == mode(bundle.server_key("gw-lamp17")) == 0o600
    assert bundle.gateways() == ["gw-lamp17"]
    with pytest.raises(CAError, match="a gateway bundle, which has no CA key"):
        FleetCA.open(bundle.root)
    with pytest.raises(CAError, match="gw-lamp19 has no certificates"):
        ca.export_gateway("lamp19", tmp_path / "b19")
    with pytest.raises(CAError, match="another directory"):
        ca.export_gateway("lamp17", ca.layout.root)


# -- command line ---------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = dordt_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_ca_commands_from_init_to_bundle(tmp_path, capsys):
    d = str(tmp_path / "ca")
    outputs = []
    for argv in (
        ("init", "--dir", d),
        ("issue-node", "--dir", d, "--node", "0d0a0001"),
        ("issue-node", "--dir", d, "--node", "0d0a0002", "--days", "30"),
        ("issue-gateway", "--dir", d, "--name", "lamp17", "--host", "lamp17.local",
         "--host", "10.0.0.17"),
        ("revoke", "--dir", d, "--node", "0d0a0001", "--reason", "key_compromise"),
        ("crl", "--dir", d, "--days", "90"),
        ("list", "--dir", d),
        ("export-gateway", "--dir", d, "--name", "lamp17", "--out", str(tmp_path / "b")),
    ):
        code, out, err = run(capsys, "fleet", "ca", *argv)
        assert (code, err) == (0, ""), (argv, err)
        outputs.append(out)
    listing = outputs[6]
    assert "0d0a0001" in listing and "revoked" in listing
    assert listing.count("valid") == 3  # 0d0a0002 and the gateway's two
    assert "next update" in listing
    lay = Layout(d)
    assert (load_cert(lay.node_cert("0d0a0002")).not_valid_after_utc - NOW).days in (29, 30)
    assert (crl_next_update(lay.crl) - NOW).days in (89, 90)
    assert (tmp_path / "b" / "gateways" / "gw-lamp17" / "server.key").exists()
    secrets = [s for k in (lay.ca_key, lay.node_key("0d0a0002")) for s in key_secrets(k)]
    for out in outputs:
        assert "PRIVATE" not in out and not any(s in out for s in secrets)
    # the keyring commands are untouched
    ring = str(tmp_path / "keyring.json")
    assert run(capsys, "fleet", "enrol", "--keyring", ring, "--node", "0d0a0001",
               "--kind", "air", "--zone", "spoorzone", "--site", "spz-01")[0] == 0
    assert run(capsys, "fleet", "revoke", "--keyring", ring, "--node", "0d0a0001")[0] == 0
    assert "revoked" in run(capsys, "fleet", "list", "--keyring", ring)[1]


@pytest.mark.parametrize("argv, words", [
    (("issue-node", "--node", "0D0A0001"), "--node '0D0A0001': give 8 lower-case hex"),
    (("issue-node", "--node", "0d0a0001", "--days", "0"), "--days 0"),
    (("issue-node", "--node", "0d0a0003"), "node 0d0a0003 already has a valid certificate"),
    (("issue-gateway", "--name", "Lamp", "--host", "x.local"), "gateway name 'Lamp'"),
    (("revoke", "--node", "0d0a0009"), "0d0a0009: no certificate was issued"),
    (("revoke", "--node", "0d0a0003", "--reason", "lost"), "reason 'lost'"),
    (("revoke", "--gateway", "lamp99"), "gw-lamp99: no certificate was issued"),
    (("export-gateway", "--name", "lamp99", "--out", "OUT"), "gw-lamp99 has no certificates"),
    (("init",), "already holds a CA"),
])
def test_ca_command_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, words):
    d = str(tmp_path / "ca")
    assert run(capsys, "fleet", "ca", "init", "--dir", d)[0] == 0
    assert run(capsys, "fleet", "ca", "issue-node", "--dir", d, "--node", "0d0a0003")[0] == 0
    argv = tuple(str(tmp_path / "out") if a == "OUT" else a for a in argv)
    code, out, err = run(capsys, "fleet", "ca", argv[0], "--dir", d, *argv[1:])
    assert code == 2
    assert err.startswith("dordt: ") and words in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_ca_commands_on_a_missing_ca_say_how_to_make_one(tmp_path, capsys):
    code, _, err = run(capsys, "fleet", "ca", "issue-node", "--dir", str(tmp_path / "none"),
                       "--node", "0d0a0001")
    assert code == 2 and "dordt fleet ca init" in err
