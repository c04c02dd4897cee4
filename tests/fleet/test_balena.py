"""Gateways on balena: the real balena-sdk, through fleet/balena.py and `dordt fleet balena`,
against the loopback stand-in of the balena API (tests/fixtures/balena_api.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from dordt.cli import main
from fleet import balena
from fleet.registry import Registry

OLD = "1" * 32       # the gateway release every device runs at the start
NEW = "2" * 32       # the release being rolled out
FAILED = "3" * 32    # a release whose build failed: not pinnable
OTHER = "4" * 32     # a release of another fleet
GATEWAYS = {"gw-spz-01": "spoorzone", "gw-spz-02": "spoorzone", "gw-mst-01": "maasterras",
            "gw-spb-01": "spuiboulevard"}
STORE_TOKEN = "influx-token-s3cr3t-9f8e7d6c5b4a"


def uuid_of(name: str) -> str:
    return (name.encode().hex() * 4)[:32]


class Fleet:
    """A registry with four gateways, a balena fleet with their devices, and `cli()` that
    runs `dordt fleet balena ...` against both."""

    def __init__(self, api, tmp_path, capsys):
        self.api, self.tmp_path, self.capsys = api, tmp_path, capsys
        self.registry = tmp_path / "fleet.sqlite"
        with Registry.open(self.registry, create=True) as reg:
            reg.sync_zones()
            for name, zone in GATEWAYS.items():
                reg.add_gateway(name, zone)
        self.app = api.add_application("dordt/gateways")
        other_app = api.add_application("dordt/elsewhere")
        self.old = api.add_release(self.app, OLD, created_at="2026-11-01T10:00:00.000Z")
        self.new = api.add_release(self.app, NEW)
        api.add_release(self.app, FAILED, status="failed")
        api.add_release(other_app, OTHER)
        for i, name in enumerate(GATEWAYS):
            api.add_device(self.app, uuid_of(name), f"lamppost-{i}", running=self.old,
                           last_seen=f"2026-12-04T1{i}:00:00.000Z")
        self.token_file = tmp_path / "balena.key"
        self.token_file.write_text(api.token + "\n")

    def cli(self, *args: str, token_file=None, api_url=None) -> tuple[int, str, str]:
        """`dordt fleet balena ARGS` on this registry, key file and stand-in."""
        return self.run(*args, "--token-file", str(token_file or self.token_file),
                        api_url=api_url)

    def run(self, *args: str, api_url=None) -> tuple[int, str, str]:
        """The same without a key file: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = main(["fleet", "balena", *args, "--registry", str(self.registry),
                     "--api-url", api_url or self.api.url])
        out, err = self.capsys.readouterr()
        return code, out, err

    def link_all(self) -> None:
        for name in GATEWAYS:
            assert self.cli("link", name, uuid_of(name))[0] == 0

    def reg(self) -> Registry:
        return Registry.open(self.registry)


@pytest.fixture
def fleet(balena_api, tmp_path, capsys, monkeypatch) -> Iterator[Fleet]:
    for var in ("BALENA_API_KEY", "DORDT_BALENA_API_URL", "DORDT_FLEET_REGISTRY",
                "DORDT_FLEET_MASTER_KEY", "DORDT_FLEET_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    yield Fleet(balena_api, tmp_path, capsys)
    # balena-sdk, as fleet/balena.py drives it, never sends what the API calls malformed
    assert [r for r in balena_api.rejected if r[0] == 400] == []


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in err
    return err


# -- link ---------------------------------------------------------------------------------


def test_link_checks_the_device_on_balena_and_records_it(fleet):
    code, out, err = fleet.cli("link", "gw-spz-01", uuid_of("gw-spz-01"))
    assert code == 0, err
    assert "lamppost-0" in out and "dordt/gateways" in out
    with fleet.reg() as reg:
        row = reg.db.execute("SELECT * FROM balena_devices").fetchone()
        assert (row["gateway"], row["uuid"], row["fleet"]) == (
            "gw-spz-01", uuid_of("gw-spz-01"), "dordt/gateways")
        # last seen read from balena went into the registry's gateway
        assert reg.gateway("gw-spz-01")["last_seen"] == "2026-12-04T10:00:00Z"
        assert reg.gateway("gw-spz-01")["software"] == OLD  # the release it runs

    code, _, err = fleet.cli("link", "gw-spz-02", "f" * 32)  # no such device on balena
    assert code == 1 and "no such device" in _one_line(err)
    code, _, err = fleet.cli("link", "gw-spz-02", "not-a-uuid")
    assert code == 2 and "full uuid" in _one_line(err)
    code, _, err = fleet.cli("link", "gw-nowhere", uuid_of("gw-spz-02"))
    assert code == 2 and "gw-nowhere" in _one_line(err)
    code, _, err = fleet.cli("link", "gw-spz-02", uuid_of("gw-spz-01"))  # taken
    assert code == 2 and "linked to gateway gw-spz-01" in _one_line(err)
    with fleet.reg() as reg:
        assert reg.db.execute("SELECT count(*) FROM balena_devices").fetchone()[0] == 1


# -- sync ---------------------------------------------------------------------------------


def _settings(tmp_path, spoorzone_bucket: str = "spoorzone") -> str:
    (tmp_path / "influx.token").write_text(STORE_TOKEN + "\n")
    path = tmp_path / "balena-zones.toml"
    path.write_text(f"""
[defaults]
mqtt_url = "mqtts://127.0.0.1:8883"
store_url = "https://twin.dordrecht.example:8086"
store_org = "dordt"
store_bucket = "dordt"
store_token_file = "influx.token"

[zones.spoorzone]
store_bucket = "{spoorzone_bucket}"
log_level = "debug"
""")
    return str(path)


def test_sync_sets_each_zone_as_device_variables_and_tags(fleet, tmp_path):
    fleet.link_all()
    api = fleet.api
    spz = uuid_of("gw-spz-01")
    # The operator's own variable and a stale one of ours, an old tag of ours
    dev = api.device(spz)["id"]
    api.tables["device_environment_variable"][900] = {"id": 900, "device": dev,
                                                      "name": "OPERATOR_NOTE", "value": "x"}
    api.tables["device_environment_variable"][901] = {"id": 901, "device": dev,
                                                      "name": "DORDT_OLD", "value": "y"}
    api.tables["device_tag"][902] = {"id": 902, "device": dev, "tag_key": "dordt.old",
                                     "value": "z"}
    settings = _settings(tmp_path)

    code, out, err = fleet.cli("sync", "--settings", settings)
    assert code == 0, err
    assert api.env_vars(spz) == {
        "OPERATOR_NOTE": "x", "DORDT_ZONE": "spoorzone", "DORDT_GATEWAY": "gw-spz-01",
        "DORDT_MQTT_URL": "mqtts://127.0.0.1:8883",
        "DORDT_STORE_URL": "https://twin.dordrecht.example:8086", "DORDT_STORE_ORG": "dordt",
        "DORDT_STORE_BUCKET": "spoorzone", "DORDT_LOG_LEVEL": "debug",
        "DORDT_INFLUX_TOKEN": STORE_TOKEN}
    assert api.tags(spz) == {"dordt.zone": "spoorzone", "dordt.gateway": "gw-spz-01",
                             "dordt.store_bucket": "spoorzone"}
    mst = uuid_of("gw-mst-01")
    assert api.env_vars(mst)["DORDT_ZONE"] == "maasterras"
    assert api.env_vars(mst)["DORDT_STORE_BUCKET"] == "dordt"
    assert "DORDT_LOG_LEVEL" not in api.env_vars(mst)
    # the secret is a variable only: never a tag, never printed
    for name in GATEWAYS:
        assert STORE_TOKEN not in json.dumps(api.tags(uuid_of(name)))
    assert STORE_TOKEN not in out + err
    assert "DORDT_OLD" in out and "removed" in out and "secret: value not shown" in out

    # Again: nothing changes, nothing is written, and all four devices are read at once
    # (devices, their variables, their tags: three requests, not three per gateway)
    before = len(api.requests)
    code, out, _ = fleet.cli("sync", "--settings", settings, "--json")
    assert code == 0
    rows = json.loads(out)
    assert {r["action"] for r in rows} == {"unchanged"}
    assert [m for m, _ in api.requests[before:]] == ["GET"] * 3
    assert STORE_TOKEN not in out

    # A zone setting changes: one variable and one tag per spoorzone gateway are updated
    code, out, _ = fleet.cli("sync", "gw-spz-02", "--settings",
                             _settings(tmp_path, "spoorzone-v2"), "--json")
    changed = [(r["what"], r["name"]) for r in json.loads(out) if r["action"] != "unchanged"]
    assert changed == [("variable", "DORDT_STORE_BUCKET"), ("tag", "dordt.store_bucket")]
    assert api.env_vars(uuid_of("gw-spz-02"))["DORDT_STORE_BUCKET"] == "spoorzone-v2"
    assert api.env_vars(spz)["DORDT_STORE_BUCKET"] == "spoorzone"  # not named: untouched


@pytest.mark.parametrize("text, expect", [
    ('[defaults]\nstore_bukket = "x"\n', "Did you mean 'store_bucket'?"),
    ('[zones.spoorzon]\nstore_bucket = "x"\n', "Did you mean 'spoorzone'?"),
    ('[defaults]\nstore_url = "https://user:pw@twin.example"\n', "holds credentials"),
    ('[defaults]\nstore_token_file = "missing.token"\n', "cannot read the secret file"),
    ('[defaults\n', "not a readable TOML file"),
])
def test_sync_refuses_bad_zone_settings(fleet, tmp_path, text, expect):
    fleet.link_all()
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = fleet.cli("sync", "--settings", str(path))
    assert code == 2 and expect in _one_line(err)
    assert "pw@" not in err
    assert fleet.api.env_vars(uuid_of("gw-spz-01")) == {}  # nothing half-written


def test_sync_of_an_unlinked_gateway_says_how_to_link(fleet):
    code, _, err = fleet.cli("sync", "gw-spz-01")
    assert code == 2 and "dordt fleet balena link" in _one_line(err)


# -- status -------------------------------------------------------------------------------


def test_status_reads_online_state_last_seen_and_releases(fleet):
    for name in ("gw-spz-01", "gw-spz-02", "gw-mst-01"):  # gw-spb-01 stays unlinked
        assert fleet.cli("link", name, uuid_of(name))[0] == 0
    fleet.api.device_update(uuid_of("gw-spz-02"), is_online=False)
    fleet.api.device_update(uuid_of("gw-mst-01"), is_running__release=fleet.new["id"],
                            last_connectivity_event="2026-12-04T18:30:05.123Z")
    code, out, err = fleet.cli("status", "--json")
    assert code == 0, err
    rows = {r["gateway"]: r for r in json.loads(out)}
    assert rows["gw-spz-01"]["is_online"] is True
    assert rows["gw-spz-02"]["is_online"] is False
    assert rows["gw-mst-01"]["running_release"] == NEW
    assert rows["gw-mst-01"]["last_seen"] == "2026-12-04T18:30:05Z"
    assert rows["gw-spz-01"]["running_release"] == OLD
    assert rows["gw-spz-01"]["pinned_release"] is None
    assert rows["gw-spb-01"]["balena"] == "not linked"
    assert rows["gw-spb-01"]["is_online"] is None
    with fleet.reg() as reg:
        assert reg.gateway("gw-mst-01")["last_seen"] == "2026-12-04T18:30:05Z"
        assert reg.gateway("gw-mst-01")["software"] == NEW
        assert reg.gateway("gw-spb-01")["last_seen"] is None
    # one read of balena for all linked devices
    code, out, _ = fleet.cli("status")
    assert code == 0
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert table["gw-spz-02"][3] == "no" and table["gw-mst-01"][5] == NEW[:12]
    assert table["gw-spb-01"][2:4] == ["not", "linked"]


# -- pin ----------------------------------------------------------------------------------


def test_pin_to_a_release_and_back_to_following_the_fleet(fleet):
    fleet.link_all()
    code, out, err = fleet.cli("pin", "gw-spz-01", "gw-mst-01", "--release", NEW)
    assert code == 0, err
    assert fleet.api.pinned_commit(uuid_of("gw-spz-01")) == NEW
    assert fleet.api.pinned_commit(uuid_of("gw-mst-01")) == NEW
    assert fleet.api.pinned_commit(uuid_of("gw-spz-02")) is None

    for commit in (FAILED, OTHER, "5" * 32):  # failed build, other fleet's, unknown
        code, _, err = fleet.cli("pin", "gw-spz-02", "--release", commit)
        assert code == 1 and "no successful release" in _one_line(err)
    code, _, err = fleet.cli("pin", "gw-spz-02", "--release", "abc")
    assert code == 2 and "full commit" in _one_line(err)
    assert fleet.api.pinned_commit(uuid_of("gw-spz-02")) is None

    code, out, _ = fleet.cli("pin", "gw-spz-01", "--track")
    assert code == 0 and "follows its fleet" in out
    assert fleet.api.pinned_commit(uuid_of("gw-spz-01")) is None


# -- staged rollout -----------------------------------------------------------------------


def _runs(fleet, *names: str, release: dict) -> None:
    """The devices took their pinned release (what balena's supervisor would report)."""
    for name in names:
        fleet.api.device_update(uuid_of(name), is_running__release=release["id"])


def test_rollout_canary_then_zone_then_all_and_halt_pins_back(fleet):
    fleet.link_all()
    # gw-spb-01 was pinned to the old release by hand before the rollout; the others follow
    # the fleet.  A halt must give each back what it had.
    assert fleet.cli("pin", "gw-spb-01", "--release", OLD)[0] == 0

    code, out, err = fleet.cli("rollout", "start", "--release", NEW, "--canary", "gw-spz-01")
    assert code == 0, err
    assert "stage canary" in out
    pinned = {n: fleet.api.pinned_commit(uuid_of(n)) for n in GATEWAYS}
    assert pinned == {"gw-spz-01": NEW, "gw-spz-02": None, "gw-mst-01": None,
                      "gw-spb-01": OLD}
    code, _, err = fleet.cli("rollout", "start", "--release", NEW, "--canary", "gw-mst-01")
    assert code == 1 and "halt it first" in _one_line(err)

    # The canary has not taken the release yet: the rollout does not reach its zone
    code, _, err = fleet.cli("rollout", "next", "--zone", "spoorzone")
    assert code == 1 and "gw-spz-01 (runs 1111" in _one_line(err)
    assert fleet.api.pinned_commit(uuid_of("gw-spz-02")) is None
    # Running it but offline: still no
    _runs(fleet, "gw-spz-01", release=fleet.new)
    fleet.api.device_update(uuid_of("gw-spz-01"), is_online=False)
    code, _, err = fleet.cli("rollout", "next", "--zone", "spoorzone")
    assert code == 1 and "gw-spz-01 (offline)" in _one_line(err)
    fleet.api.device_update(uuid_of("gw-spz-01"), is_online=True)

    code, _, err = fleet.cli("rollout", "next")
    assert code == 2 and "--zone" in _one_line(err)
    code, out, err = fleet.cli("rollout", "next", "--zone", "spoorzone", "--json")
    assert code == 0, err
    assert json.loads(out)["pinned"] == ["gw-spz-02"]
    assert fleet.api.pinned_commit(uuid_of("gw-spz-02")) == NEW
    assert fleet.api.pinned_commit(uuid_of("gw-mst-01")) is None

    code, out, _ = fleet.cli("status", "--json")
    stages = {r["gateway"]: r["rollout_stage"] for r in json.loads(out)}
    assert stages == {"gw-spz-01": "canary", "gw-spz-02": "zone", "gw-mst-01": None,
                      "gw-spb-01": None}

    _runs(fleet, "gw-spz-02", release=fleet.new)
    code, out, err = fleet.cli("rollout", "next")
    assert code == 0, err
    assert {n: fleet.api.pinned_commit(uuid_of(n)) for n in GATEWAYS} == dict.fromkeys(
        GATEWAYS, NEW)

    code, out, err = fleet.cli("rollout", "halt")
    assert code == 0, err
    assert {n: fleet.api.pinned_commit(uuid_of(n)) for n in GATEWAYS} == {
        "gw-spz-01": None, "gw-spz-02": None, "gw-mst-01": None, "gw-spb-01": OLD}
    code, _, err = fleet.cli("rollout", "halt")
    assert code == 1 and "nothing to halt" in _one_line(err)
    # a new rollout may start after a halt
    assert fleet.cli("rollout", "start", "--release", NEW, "--canary", "gw-mst-01")[0] == 0


def test_rollout_halted_at_the_canary_never_touches_the_rest(fleet):
    fleet.link_all()
    assert fleet.cli("rollout", "start", "--release", NEW, "--canary", "gw-spz-01",
                     "--canary", "gw-mst-01")[0] == 0
    _runs(fleet, "gw-spz-01", release=fleet.new)  # gw-mst-01 never takes it
    code, _, err = fleet.cli("rollout", "next", "--zone", "spoorzone")
    assert code == 1 and "gw-mst-01" in err and "gw-spz-01" not in err
    code, out, _ = fleet.cli("rollout", "halt", "--json")
    assert code == 0
    assert sorted(r["gateway"] for r in json.loads(out)["restored"]) == ["gw-mst-01",
                                                                        "gw-spz-01"]
    assert all(fleet.api.pinned_commit(uuid_of(n)) is None for n in GATEWAYS)
    patched = {path for method, path in fleet.api.requests if method == "PATCH"}
    assert not any(str(fleet.api.device(uuid_of("gw-spz-02"))["id"]) in p for p in patched)


# -- failures an operator meets -----------------------------------------------------------


def test_a_wrong_or_missing_api_key_is_one_line_without_the_key(fleet, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.key"
    wrong.write_text("wrong-key-abcdef0123456789\n")
    code, out, err = fleet.cli("link", "gw-spz-01", uuid_of("gw-spz-01"), token_file=wrong)
    assert code == 2 and "refused the API key (401)" in _one_line(err)
    assert "wrong-key-abcdef0123456789" not in out + err
    with fleet.reg() as reg:
        assert reg.db.execute("SELECT count(*) FROM balena_devices").fetchone()[0] == 0

    code, _, err = fleet.run("status")
    assert code == 2 and "BALENA_API_KEY" in _one_line(err)
    monkeypatch.setenv("BALENA_API_KEY", fleet.api.token)  # the key from the environment
    code, out, err = fleet.run("status", "--json")
    assert code == 0, err
    assert fleet.api.token not in out + err
    code, _, err = fleet.cli("status", token_file=tmp_path / "nope.key")
    assert code == 2 and "no balena API key file" in _one_line(err)


def test_an_unreachable_api_is_one_line(fleet):
    fleet.link_all()
    fleet.api.stop()
    for args in (("status",), ("link", "gw-spz-01", uuid_of("gw-spz-01")),
                 ("pin", "gw-spz-01", "--release", NEW)):
        code, out, err = fleet.cli(*args)
        assert code == 3 and "cannot reach the balena API" in _one_line(err)
        assert fleet.api.token not in out + err


@pytest.fixture
def silent_api_url() -> Iterator[str]:
    """A server that takes the connection and the request and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    yield f"http://127.0.0.1:{silent.getsockname()[1]}/"
    silent.close()


def test_an_api_that_never_answers_is_one_line_after_the_timeout(fleet, silent_api_url):
    started = time.monotonic()
    code, _, err = fleet.cli("link", "gw-spz-01", uuid_of("gw-spz-01"), "--timeout-s", "0.5",
                             api_url=silent_api_url)
    assert code == 3 and "did not answer within 0.5 s" in _one_line(err)
    assert time.monotonic() - started < 5


def test_the_command_process_exits_on_time_with_a_request_left_hanging(fleet, silent_api_url):
    """The abandoned request thread does not keep the `dordt` process alive."""
    run = subprocess.run(
        [sys.executable, "-m", "dordt.cli", "fleet", "balena", "link", "gw-spz-01",
         uuid_of("gw-spz-01"), "--registry", str(fleet.registry), "--token-file",
         str(fleet.token_file), "--timeout-s", "0.5", "--api-url", silent_api_url],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 3 and "did not answer within 0.5 s" in _one_line(run.stderr)
    assert fleet.api.token not in run.stdout + run.stderr


def test_a_url_that_is_not_the_balena_api_is_one_line(fleet):
    """Another web server (a portal, a dashboard URL given by mistake) answering 200."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>welcome</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        code, _, err = fleet.cli("link", "gw-spz-01", uuid_of("gw-spz-01"),
                                 api_url=f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2 and "did not answer like the balena API" in _one_line(err)


def test_the_api_key_appears_in_no_output_log_exception_or_file(fleet, tmp_path, caplog):
    """The whole flow at DEBUG logging; the key is looked for everywhere it could leak."""
    caplog.set_level(logging.DEBUG)
    token = fleet.api.token
    seen = []
    fleet.link_all()
    for args in (("sync", "--settings", _settings(tmp_path)), ("status",), ("status", "--json"),
                 ("pin", "gw-spz-01", "--release", NEW), ("pin", "gw-spz-01", "--track"),
                 ("rollout", "start", "--release", NEW, "--canary", "gw-spz-01"),
                 ("rollout", "next", "--zone", "spoorzone"), ("rollout", "halt")):
        seen.append(fleet.cli(*args))
    client = balena.BalenaClient(fleet.api.url, token)
    for failing in (lambda: client.device("f" * 32), lambda: client.pin([uuid_of("gw-spz-01")],
                                                                          "5" * 32)):
        with pytest.raises(balena.BalenaError) as info:
            failing()
        seen.append((str(info.value), repr(info.value)))
    seen.append(repr(client))
    text = json.dumps(seen) + caplog.text
    assert token not in text and STORE_TOKEN not in caplog.text
    assert token.encode() not in fleet.registry.read_bytes()
    for wal in tmp_path.glob("fleet.sqlite*"):
        assert token.encode() not in wal.read_bytes()
    # balena-sdk's own settings file was never written (it would hold the key)
    assert not (tmp_path / ".balena").exists()


def test_debug_runs_log_requests_and_tracebacks_but_not_the_key(fleet, tmp_path):
    """--debug: urllib3's request log and the traceback of a refused key, in a real process."""
    fleet.link_all()
    wrong = tmp_path / "wrong.key"
    wrong.write_text("wrong-key-abcdef0123456789\n")
    outputs = []
    for token_file in (fleet.token_file, wrong):
        run = subprocess.run(
            [sys.executable, "-m", "dordt.cli", "--debug", "fleet", "balena", "status",
             "--registry", str(fleet.registry), "--token-file", str(token_file),
             "--api-url", fleet.api.url], capture_output=True, text=True, timeout=60)
        outputs.append(run)
    ok, refused = outputs
    assert ok.returncode == 0 and "GET /v7/device?" in ok.stderr  # the debug log is there
    assert refused.returncode != 0 and "Traceback" in refused.stderr
    assert "refused the API key (401)" in refused.stderr
    for run in outputs:
        assert fleet.api.token not in run.stdout + run.stderr
        assert "wrong-key-abcdef0123456789" not in run.stdout + run.stderr


# -- the stand-in is as strict as the API -------------------------------------------------


def test_the_stand_in_refuses_what_the_real_api_refuses(balena_api):
    app = balena_api.add_application("dordt/gateways")
    dev = balena_api.add_device(app, "a" * 32, "gw")["id"]
    url = balena_api.url + "v7/"
    auth = {"Authorization": f"Bearer {balena_api.token}"}

    def get(path, headers=auth):
        return requests.get(url + path, headers=headers, timeout=5)

    assert get("device").status_code == 200
    assert get("device", headers={}).status_code == 401
    assert get("device", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert get("device?$filter=uuid eq 'a").status_code == 400           # open quote
    assert get("device?$filter=(uuid eq 'a'").status_code == 400         # open paren
    assert get("device?$filter=colour eq 'red'").status_code == 400      # unknown field
    assert get("device?$select=id,colour").status_code == 400
    assert get("device?$expand=uuid").status_code == 400                 # not navigation
    assert get("device?$orderby=uuid sideways").status_code == 400
    assert get("device?$top=-1").status_code == 400
    assert get("device?$frobnicate=1").status_code == 400
    assert get("gadget").status_code == 404
    assert requests.post(url + "device_tag", json={"device": dev, "tag_key": "a", "value": "b",
                                                   "colour": "red"},
                         headers=auth, timeout=5).status_code == 400
    assert requests.post(url + "device_tag", json={"device": 999, "tag_key": "a",
                                                   "value": "b"},
                         headers=auth, timeout=5).status_code == 400
    assert requests.post(url + "device_environment_variable",
                         json={"device": dev, "name": "BALENA_HOST_X", "value": "b"},
                         headers=auth, timeout=5).status_code == 400
    assert requests.patch(url + f"device({dev})", json={"is_online": False},
                          headers=auth, timeout=5).status_code == 400   # read-only
    assert requests.patch(url + f"device({dev})", data='{"device_name": "x"}',
                          headers=auth, timeout=5).status_code == 400   # not sent as JSON
    assert requests.patch(url + f"device({dev})", json={"device_name": "x"},
                          headers=auth, timeout=5).status_code == 200
    assert balena_api.device("a" * 32)["device_name"] == "x"
    assert not balena_api.unimplemented
    # what the real API has but the stand-in does not model is refused and recorded, so the
    # fixture fails any test that relied on it
    assert get("device?$count=true").status_code == 501
    assert requests.get(balena_api.url + "actor/v1/whoami", headers=auth,
                        timeout=5).status_code == 501
    assert len(balena_api.unimplemented) == 2
    balena_api.unimplemented.clear()


def test_a_canary_that_never_takes_the_release_halts_the_rollout_by_itself(fleet):
    fleet.link_all()
    assert fleet.cli("pin", "gw-mst-01", "--release", OLD)[0] == 0
    assert fleet.cli("rollout", "start", "--release", NEW, "--canary", "gw-spz-01",
                     "--canary", "gw-mst-01")[0] == 0
    _runs(fleet, "gw-spz-01", release=fleet.new)  # gw-mst-01 never takes it
    # Within the allowed time: the stage waits
    code, _, err = fleet.cli("rollout", "next", "--zone", "spoorzone", "--halt-after-s", "3600")
    assert code == 1 and "stays at stage canary" in _one_line(err)
    assert fleet.api.pinned_commit(uuid_of("gw-spz-01")) == NEW
    # Past it (library call with an injected clock): halted, both canaries pinned back
    with fleet.reg() as reg:
        client = balena.BalenaClient(fleet.api.url, fleet.api.token)
        started = balena.current_rollout(reg)["gateways"][0]["pinned_at"]
        later = dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC) + dt.timedelta(hours=2)
        with pytest.raises(balena.BalenaError) as info:
            balena.rollout_next(reg, client, "spoorzone", halt_after_s=3600, now=later)
        assert "halted: gw-mst-01 (runs 1111" in str(info.value)
        assert balena.current_rollout(reg) is None
    assert fleet.api.pinned_commit(uuid_of("gw-spz-01")) is None
    assert fleet.api.pinned_commit(uuid_of("gw-mst-01")) == OLD
    assert fleet.api.pinned_commit(uuid_of("gw-spz-02")) is None  # the zone never reached
