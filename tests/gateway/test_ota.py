"""The gateway's OTA server (gateway/ota.py, docs/ota.md §3-§4) message by message: what a
`get` is answered with (and every way one is refused), offers and their re-reading, `state`
messages as `ota` points, the `[ota]` config.  Its publish is the edge injected here; the
whole path through Mosquitto with a node is tests/firmware/test_ota.py and, on the virtual
board, tests/provisioning/test_ota_board.py."""

from __future__ import annotations

import json
import os

import pytest

from fleet.offers import OTA_STATES, OffersError, read_offers
from gateway.config import ConfigError, load_config
from gateway.ota import OtaServer, OtaSettings
from tests.fixtures.ota import ReleaseShop

NODE = "0d0a0e01"
ZONE = "maasterras"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    shop = ReleaseShop(tmp_path_factory.mktemp("ota-shop"))
    shop.build(3)
    return shop


class Sent(list):
    def __call__(self, topic, payload):
        self.append((topic, payload))
        return True


def server(shop, clock=None, chunk=1024, zones=None):
    sent = Sent()
    zones = zones if zones is not None else {NODE: ZONE}
    srv = OtaServer(OtaSettings(shop.releases, shop.offers, chunk, offer_every_s=60),
                    "gw-test", zones.get, sent, clock=clock or (lambda: 1000.0))
    return srv, sent


def get(srv, body, node=NODE):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = srv.answer_get(ZONE, node, payload)
    head, _, data = msg.partition(b"\n")
    return json.loads(head), data


def test_a_get_is_answered_with_the_files_bytes_at_most_a_chunk(shop):
    srv, sent = server(shop, chunk=512)
    rel = shop.releases / "3"
    entry = max(json.loads((rel / "release.json").read_bytes())["files"],
                key=lambda e: e["size"])
    data = (rel / "files" / entry["path"]).read_bytes()
    head, got = get(srv, {"serial": 3, "path": entry["path"], "offset": 100, "length": 4096})
    assert head == {"serial": 3, "path": entry["path"], "offset": 100, "total": len(data)}
    assert got == data[100:612]  # the gateway's chunk size bounds it, not the node's ask
    assert sent[-1][0] == f"dordt/v1/{ZONE}/{NODE}/ota/chunk"
    sig = (rel / "release.sig").read_bytes()
    head, got = get(srv, {"serial": 3, "path": "release.sig", "offset": 0, "length": 1024})
    assert got == sig and head["total"] == len(sig)
    # at the end of the file: no bytes, and the total (the node knows it has it all)
    head, got = get(srv, {"serial": 3, "path": "release.sig", "offset": len(got),
                          "length": 1024})
    assert got == b"" and head["offset"] == head["total"]
    assert srv.counts["chunks"] == 3 and srv.counts["chunk_bytes"] == 512 + len(sig)


@pytest.mark.parametrize("body, why", [
    ({"serial": 3, "path": "../../keys/release.key", "offset": 0, "length": 10}, "no file"),
    ({"serial": 3, "path": "/etc/passwd", "offset": 0, "length": 10}, "no file"),
    ({"serial": 3, "path": "files/MANIFEST.json", "offset": 0, "length": 10}, "no file"),
    ({"serial": 3, "path": "firmware/nothing.mpy", "offset": 0, "length": 10}, "no file"),
    ({"serial": 9, "path": "release.json", "offset": 0, "length": 10}, "no release 9"),
    ({"serial": 3, "path": "release.json", "offset": -1, "length": 10}, "outside"),
    ({"serial": 3, "path": "release.json", "offset": 10**9, "length": 10}, "outside"),
    ({"serial": 3, "path": "release.json", "offset": 0, "length": -5}, "outside"),
    ({"serial": "3", "path": "release.json", "offset": 0, "length": 10}, "'serial'"),
    ({"serial": 3, "path": "release.json", "offset": True, "length": 10}, "'offset'"),
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{" + b" " * 600 + b"}", "over 512 bytes"),
])
def test_a_bad_get_gets_an_error_and_no_bytes(shop, body, why):
    srv, sent = server(shop)
    head, data = get(srv, body)
    assert why in head["error"] and data == b""
    assert set(head) == {"serial", "path", "error"}
    assert srv.counts["gets_refused"] == 1 and srv.counts["chunks"] == 0
    assert len(sent) == 1


def test_a_node_the_gateway_does_not_serve_gets_nothing_of_a_release(shop):
    srv, _ = server(shop, zones={})
    head, data = get(srv, {"serial": 3, "path": "release.json", "offset": 0, "length": 10})
    assert "not served" in head["error"] and data == b""


def test_offers_follow_the_file_and_a_bad_file_keeps_the_last_good_one(shop):
    now = [1000.0]
    shop.offer({NODE: 3})
    srv, sent = server(shop, clock=lambda: now[0])
    srv.tick()  # start: every named node is offered to
    assert [json.loads(p) for t, p in sent] == [
        {"serial": 3, "version": "0.2.0", "size": json.loads(
            (shop.releases / "3" / "release.json").read_bytes())["size"], "chunk": 1024}]
    assert sent[0][0] == f"dordt/v1/{ZONE}/{NODE}/ota/offer"
    # frames from the node: offered again only after offer_every_s
    assert srv.on_frames([NODE, NODE]) == 0
    now[0] += 61
    assert srv.on_frames([NODE]) == 1 and len(sent) == 2
    # a broken file is not taken: the last good offers stay
    shop.offers.write_text("{broken")
    os.utime(shop.offers, ns=(1, 1))
    assert srv.reload_offers() is False
    assert srv.counts["offers_file_bad"] == 1 and srv.stats()["offered_nodes"] == 1
    # an empty offers list: nothing more offered
    shop.offer({})
    assert srv.reload_offers() is True and srv.stats()["offered_nodes"] == 0
    now[0] += 61
    assert srv.on_frames([NODE]) == 0


def test_a_confirmed_refused_or_rolled_back_release_is_offered_no_more(shop):
    now = [1000.0]
    shop.offer({NODE: 3})
    srv, sent = server(shop, clock=lambda: now[0])
    for state in ("downloading", "switched"):
        srv.record_state(ZONE, NODE, json.dumps({"serial": 3, "version": "0.2.0",
                                                 "state": state, "detail": ""}).encode())
        assert srv.awaiting_confirmation(NODE)
    for final in ("confirmed", "refused", "rolled_back"):
        srv.record_state(ZONE, NODE, json.dumps({"serial": 3, "state": final}).encode())
        now[0] += 61
        assert srv.on_frames([NODE]) == 0 and not srv.awaiting_confirmation(NODE)
    assert sent == []


def test_state_messages_become_ota_points_and_bad_ones_are_dropped(shop):
    srv, _ = server(shop)
    point = srv.record_state(ZONE, NODE, json.dumps({
        "serial": 3, "version": "0.2.0", "state": "staged", "detail": "x" * 300}).encode())
    assert point.measurement == "ota"
    assert point.tags == {"zone": ZONE, "node": NODE, "gateway": "gw-test"}
    assert point.fields == {"serial": 3.0, "state": float(OTA_STATES["staged"]),
                            "version": 200.0}
    assert srv.take_points() == [point] and srv.take_points() == []
    for bad in (b"{}", b"nope", json.dumps({"serial": 3, "state": "exploded"}).encode(),
                json.dumps({"serial": "3", "state": "staged"}).encode()):
        assert srv.record_state(ZONE, NODE, bad) is None
    assert srv.record_state(ZONE, "0d0a0eff", json.dumps(
        {"serial": 3, "state": "staged"}).encode()) is None  # not a node of this gateway
    assert srv.counts["states_refused"] == 5 and srv.counts["state.staged"] == 1
    assert srv.record_state(ZONE, NODE, json.dumps(
        {"serial": 3, "state": "staged", "version": "junk"}).encode()).fields["version"] == 0


@pytest.mark.parametrize("text, why", [
    ("{}", "not an offers file"),
    ('{"format": "dordt-ota-offers", "version": 1, "offers": {}}', "is not a list"),
    ('{"format": "dordt-ota-offers", "version": 1, "offers": [{"node": "0D0A0E01", '
     '"serial": 1}]}', "8 hex digits"),
    ('{"format": "dordt-ota-offers", "version": 1, "offers": [{"node": "0d0a0e01", '
     '"serial": 0}]}', "integer >= 1"),
])
def test_a_malformed_offers_file_says_what_is_wrong(tmp_path, text, why):
    (tmp_path / "offers.json").write_text(text)
    with pytest.raises(OffersError, match=why):
        read_offers(tmp_path / "offers.json")


CONFIG = """
[gateway]
id = "gw-1"
data_dir = "data"
keyring = "keyring.json"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[store]
url = "sqlite:store.sqlite"
"""


@pytest.mark.parametrize("ota, why", [
    ('releases = "rel"', "set both releases"),
    ('offers = "offers.json"', "set both releases"),
    ('releases = "rel"\noffers = "o.json"\nchunk_bytes = 4096', "64 to 2048"),
    ('releases = "rel"\noffers = "o.json"\noffer_every_s = 0', "at least 1"),
    ('releases = "rel"\noffers = "o.json"\nchunk = 5', "Did you mean 'chunk_bytes'"),
])
def test_the_ota_config_is_checked_before_anything_runs(tmp_path, ota, why):
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG + "[ota]\n" + ota + "\n")
    with pytest.raises(ConfigError, match=why):
        load_config(path)


def test_an_ota_config_names_its_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG + '[ota]\nreleases = "rel"\noffers = "o.json"\n')
    cfg = load_config(path)
    assert cfg.path_of("ota", "releases") == tmp_path / "rel"
    assert cfg["ota"]["chunk_bytes"] == 1024


def test_a_gateway_built_from_its_config_serves_the_configured_releases(tmp_path, shop):
    from fleet.keyring import Keyring, NodeEntry
    from gateway.pipeline import Gateway

    Keyring([NodeEntry(int(NODE, 16), "air", ZONE, "spz-01", {0: bytes(32)})]).save(
        tmp_path / "keyring.json")
    path = tmp_path / "gw.toml"
    config = CONFIG.replace("sqlite:store.sqlite", f"sqlite:{tmp_path / 'store.sqlite'}")
    path.write_text(config + f'[ota]\nreleases = "{shop.releases}"\noffers = "{shop.offers}"\n'
                    'chunk_bytes = 256\noffer_every_s = 5\n')
    gw = Gateway.from_config(load_config(path))
    try:
        assert gw.ota is not None
        assert gw.ota.settings == OtaSettings(shop.releases, shop.offers, 256, 5)
        assert gw._zone_of(NODE) == ZONE and gw._zone_of("0d0a0eff") is None
        # its requests arrive on the gateway's own session (gateway/ingest/mqtt.py extra)
        assert ("dordt/v1/+/+/ota/get", 1) in gw.ingest.extra
    finally:
        gw.outbox.close()
        gw.anonymiser.close()
