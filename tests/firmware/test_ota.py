"""Over-the-air updates, node side (firmware/ota.py, docs/ota.md §2-§3), end to end on a
host: the real firmware (node.py, uplink, ota.py, slots.py, ota_verify.py) on a host flash,
a real Mosquitto, a real gateway with its OTA server (gateway/ota.py), releases signed by
fleet/release.py.  Reboots are boot.py's slot choice (tests/fixtures/ota.py host_boot) and
a new Node; a power cut is an exception raised at the chosen step, after which the flash
is all that is left.  The same flows on the virtual board: tests/provisioning/test_ota_board.py.
"""

from __future__ import annotations

import json

import pytest

from firmware import node as node_mod
from firmware import ota, protocol, slots
from fleet.keyring import Keyring, NodeEntry
from fleet.offers import OTA_STATE_NAMES
from gateway.forward.local import LocalStore
from gateway.ota import OtaSettings
from gateway.pipeline import Gateway
from simulators import node_host
from tests.fixtures.ota import (
    PROFILE,
    ReleaseShop,
    Reset,
    WallClock,
    host_boot,
    install_slot,
    ota_state,
)
from tests.helpers import wait_until

NODE = 0x0D0A0012
NAME = protocol.node_name(NODE)
KEY = bytes(range(0x40, 0x60))
ZONE = "maasterras"

pytestmark = pytest.mark.services


class PowerCut(BaseException):
    """The power goes: nothing in the firmware may catch it (it is no Exception)."""


class FakeCrowd:
    """A crowd sampler with a reading every `window_s` (its sensors read)."""

    KIND = "crowd"
    broken = False  # a release whose sensors do not read: its health check fails

    def __init__(self, hw, config):
        self.clock = hw.clock
        self.window_ms = config.get("window_s", 1) * 1000
        self.end = self.clock.ticks_add(self.clock.ticks_ms(), self.window_ms)
        self.n = 0

    def poll(self, now_ms):
        if self.clock.ticks_diff(now_ms, self.end) < 0:
            return None
        self.end = self.clock.ticks_add(self.end, self.window_ms)
        if FakeCrowd.broken:
            raise OSError(5, "no sensor")
        self.n += 1
        return {"crowd_count": self.n, "crowd_faults": 0}

    def wait_ms(self, now_ms):
        return max(0, self.clock.ticks_diff(self.end, now_ms))


class Chunks:
    """An mqtt client factory that counts OTA chunks delivered to the node and can drop
    the link (`drop_at`) or cut the power (`cut_at`) when the n-th arrives."""

    def __init__(self):
        self.n = 0
        self.drop_at = None
        self.cut_at = None
        self.clients = []

    def __call__(self, *args):
        client = node_host.paho_client(*args)
        self.clients.append(client)
        chunks = self

        class Wrapped:
            def __getattr__(self, name):
                return getattr(client, name)

            def set_callback(self, f):
                def on_message(topic, msg):
                    if topic.endswith(b"/ota/chunk"):
                        chunks.n += 1
                        if chunks.cut_at is not None and chunks.n == chunks.cut_at:
                            raise PowerCut("power cut while downloading")
                        if chunks.drop_at is not None and chunks.n == chunks.drop_at:
                            client.disconnect()  # the link drops; this chunk is lost
                            return
                    f(topic, msg)

                client.set_callback(on_message)

        return Wrapped()


@pytest.fixture
def world(mosquitto, tmp_path, monkeypatch):
    """A release shop, a gateway serving it, and a node's flash with slot a installed."""
    shop = ReleaseShop(tmp_path / "shop")
    flash = tmp_path / "flash"
    flash.mkdir()
    install_slot(flash, "a")
    (flash / "release.pub").write_bytes(shop.pub_hex)
    node_host.enrol(str(flash), NODE, "crowd", ZONE, "terras-3", KEY,
                    broker={"host": mosquitto.host, "port": mosquitto.port},
                    sampler={"window_s": 1}, board={"profile": PROFILE})
    keyring = Keyring([NodeEntry(NODE, "crowd", ZONE, "terras-3", {0: KEY})])
    gateways = []

    def start_gateway():
        gw = Gateway(keyring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                     f"mqtt://{mosquitto.host}:{mosquitto.port}", client_id="ota-test-gw",
                     housekeeping_s=0.3,
                     ota=OtaSettings(shop.releases, shop.offers, 1024, offer_every_s=1.0))
        gw.start()
        assert gw.ingest.wait_connected(10)
        gateways.append(gw)
        return gw

    FakeCrowd.broken = False
    monkeypatch.setattr(ota, "GET_TIMEOUT_MS", 1500)
    # The node drops ota.py (and slots.py) when an update is done and imports them again for
    # the next; here they stay the modules this test imported and patches.
    real_drop = node_mod.drop_module
    monkeypatch.setattr(node_mod, "drop_module", lambda name: None if name in (
        "firmware.ota", "firmware.slots") else real_drop(name))
    w = type("World", (), {})()
    w.shop, w.flash, w.start_gateway, w.chunks = shop, flash, start_gateway, Chunks()
    w.gateways = gateways
    w.boot = lambda **kw: boot(w, **kw)
    yield w
    for gw in gateways:
        gw.stop()


def boot(w, max_ms=30_000, until=None):
    """Power the node on: boot.py's slot choice, then node.run until `until(node)`, a
    reset (returned as "reset"), or `max_ms`.  Returns (slot booted, Node or "reset")."""
    slot = w.booted = host_boot(w.flash)
    assert slot is not None, "no bootable slot: the node is bricked"
    hw = node_host.host_hardware(str(w.flash), clock=WallClock(), mqtt=w.chunks)

    def reset():
        raise Reset()

    hw.reset = reset
    try:
        n = node_mod.run(hw, max_ms=max_ms, sampler_factory=FakeCrowd, until=until)
    except Reset:
        return slot, "reset"
    finally:  # a reset or power cut ends the board's connection with it
        for client in w.chunks.clients:
            client.disconnect()
        w.chunks.clients.clear()
    return slot, n


def job_done(n):
    return n.ota is None and "job" not in ota_state_of(n)


def ota_state_of(n):
    return ota.read_state(n.hw.flash)


def test_an_offered_release_is_pulled_staged_switched_and_confirmed(world):
    rel = world.shop.build(1)
    world.shop.offer({NAME: 1})
    gw = world.start_gateway()
    slot, result = world.boot()
    assert (slot, result) == ("a", "reset")  # switched to b on trial, then reset
    pointer = slots.read_pointer(str(world.flash))
    assert pointer["slot"] == "b" and pointer["trial"] and pointer["previous"] == "a"
    assert pointer["manifest"] == rel.manifest_sha256
    assert ota_state(world.flash)["job"]["phase"] == "switched"
    # only the changed modules came over the air; the rest was copied from slot a
    changed = [f for f in rel.files if f["path"] in ("MANIFEST.json", "firmware/node.mpy")]
    assert gw.ota.counts["chunk_bytes"] < sum(f["size"] for f in rel.files) / 4
    assert gw.ota.counts["chunk_bytes"] >= sum(f["size"] for f in changed)

    slot, n = world.boot(until=job_done)
    assert slot == "b" and n != "reset"
    pointer = slots.read_pointer(str(world.flash))
    assert pointer["slot"] == "b" and not pointer["trial"]
    assert ota_state(world.flash) == {"serial": 1, "version": "0.2.0"}
    assert slots.status(str(world.flash))["slots"]["b"]["version"] == "0.2.0"
    wait_until(lambda: gw.ota.counts["state.confirmed"] == 1, 10, "the confirmed state")
    for state in ("offered", "downloading", "staged", "switched", "confirmed"):
        assert gw.ota.counts[f"state.{state}"] == 1, state
    # no further offers of a release the node confirmed
    offers = gw.ota.counts["offers"]
    slot, n = world.boot(max_ms=3000)
    assert slot == "b" and n.ota is None and gw.ota.counts["offers"] == offers
    # the states reached the store as `ota` points
    wait_until(lambda: gw.outbox.depth() == 0, 10, "the outbox")
    points = gw.store.points("ota", "state", NAME)
    assert [OTA_STATE_NAMES[int(p.value)] for p in points][-1:] == ["confirmed"]
    # and the gateway's health counts the update
    ota_health = gw.health.snapshot()["ota"]
    assert ota_health["chunks"] > 0 and ota_health["state.confirmed"] == 1
    assert 'dordt_gateway_ota_states_total{state="confirmed"} 1' in gw.health.prometheus_text()
    # a restarted gateway (which forgot the states) offers again: the node says confirmed
    gw.stop()
    world.gateways.remove(gw)
    gw = world.start_gateway()
    slot, n = world.boot(max_ms=4000)
    assert slot == "b" and n.ota is None
    wait_until(lambda: gw.ota.counts["state.confirmed"] >= 1, 10, "confirmed again")
    assert gw.ota.counts["chunks"] == 0 and not gw.ota.awaiting_confirmation(NAME)


def test_a_link_dropped_mid_download_resumes_where_it_stopped(world):
    world.shop.build(1, patch=pad)  # 40 KB more of firmware/ticks.mpy to pull
    world.shop.offer({NAME: 1})
    gw = world.start_gateway()
    world.chunks.drop_at = 25
    slot, result = world.boot(max_ms=60_000)
    assert result == "reset"
    assert world.chunks.n > 25
    assert slots.read_pointer(str(world.flash))["slot"] == "b"
    sent = gw.ota.counts["chunk_bytes"]
    rel = world.shop.releases / "1"
    needed = sum(f["size"] for f in json.loads((rel / "release.json").read_bytes())["files"]
                 if f["path"] in ("MANIFEST.json", "firmware/node.mpy", "firmware/ticks.mpy"))
    needed += (rel / "release.json").stat().st_size + (rel / "release.sig").stat().st_size
    assert needed > 40_000
    assert needed <= sent < needed + 2 * 1024  # resumed: a chunk again at most, not all


def pad(tree):
    """Make firmware/ticks.py 40 KB bigger (a string constant nothing reads)."""
    path = tree / "ticks.py"
    path.write_text(path.read_text() + "\n_PAD = %r\n" % ("ota test padding " * 2500))


def _cut_at_state(monkeypatch, state):
    real = ota.OtaClient._say

    def say(self, serial, version, s, detail):
        real(self, serial, version, s, detail)
        if s == state:
            raise PowerCut(state)

    monkeypatch.setattr(ota.OtaClient, "_say", say)
    return lambda: monkeypatch.setattr(ota.OtaClient, "_say", real)


def test_a_power_cut_at_every_step_leaves_a_bootable_node_that_finishes(world, monkeypatch):
    """One update cut at each step in turn: in the middle of a chunk, after the release
    checked (downloading), when staged, after the switch before the reset, and in the first
    trial boot before the confirm.  After each the node boots the old or the new release."""
    world.shop.build(1, patch=pad)
    world.shop.offer({NAME: 1})
    world.start_gateway()
    booted = []

    def cut(arm):
        disarm = arm()  # the step's power cut, armed; returns what disarms it
        with pytest.raises(PowerCut):
            world.boot()
        disarm()
        booted.append(world.booted)  # the slot that power-on ran (boot() asserts there is one)

    def mid_chunk():
        world.chunks.cut_at = 3
        return lambda: setattr(world.chunks, "cut_at", None)

    def before_confirm():
        real = slots.confirm

        def confirm(root="/"):
            raise PowerCut("before the confirm")

        monkeypatch.setattr(slots, "confirm", confirm)
        return lambda: monkeypatch.setattr(slots, "confirm", real)

    cut(mid_chunk)
    assert ota_state(world.flash)["job"]["phase"] == "meta"
    for step, phase in (("downloading", "files"), ("staged", "staged"),
                        ("switched", "switched")):
        cut(lambda s=step: _cut_at_state(monkeypatch, s))
        assert ota_state(world.flash)["job"]["phase"] == phase, step
    cut(before_confirm)
    assert booted == ["a", "a", "a", "a", "b"]
    pointer = slots.read_pointer(str(world.flash))
    assert pointer["slot"] == "b" and pointer["trial"] and pointer["boots"] == 1
    slot, n = world.boot(until=job_done)
    assert slot == "b" and n != "reset"
    pointer = slots.read_pointer(str(world.flash))
    assert pointer["slot"] == "b" and not pointer["trial"]
    assert ota_state(world.flash) == {"serial": 1, "version": "0.2.0"}


def test_a_release_that_fails_its_health_check_rolls_back_by_itself(world, monkeypatch):
    world.shop.build(1)
    world.shop.offer({NAME: 1})
    gw = world.start_gateway()
    monkeypatch.setattr(ota, "TRIAL_TIMEOUT_MS", 1500)
    assert world.boot() == ("a", "reset")
    FakeCrowd.broken = True  # the new release's sensors never read
    boots = []
    for _ in range(slots.MAX_TRIAL_BOOTS + 1):
        slot, n = world.boot(max_ms=10_000, until=job_done)
        boots.append(slot)
        if slot == "a":
            break
        assert n == "reset"  # not confirmed in TRIAL_TIMEOUT_MS: reset, one boot used up
    assert boots == ["b"] * slots.MAX_TRIAL_BOOTS + ["a"]
    pointer = slots.read_pointer(str(world.flash))
    assert pointer["slot"] == "a" and pointer["rolled_back_from"] == "b"
    state = ota_state(world.flash)
    assert state["bad"] == [1] and "job" not in state and state.get("serial", 0) == 0
    wait_until(lambda: gw.ota.counts["state.rolled_back"] == 1, 10, "the rolled_back state")
    # the release is not taken again, even when offered again
    FakeCrowd.broken = False
    slot, n = world.boot(max_ms=3000)
    assert slot == "a" and slots.read_pointer(str(world.flash))["slot"] == "a"


def test_a_release_signed_by_another_key_is_refused_and_nothing_switches(world, tmp_path):
    other = ReleaseShop(tmp_path / "other-shop")
    other.build(1)
    (other.releases / "1").rename(world.shop.releases / "1")
    world.shop.offer({NAME: 1})
    gw = world.start_gateway()
    slot, n = world.boot(max_ms=8000, until=lambda n: gw.ota.counts["state.refused"] >= 1)
    assert n != "reset"
    assert slots.read_pointer(str(world.flash))["slot"] == "a"
    assert "job" not in ota_state(world.flash)
    wait_until(lambda: gw.ota.counts["state.refused"] >= 1, 10, "the refused state")
    assert not (world.flash / "fw" / "b" / "MANIFEST.json").exists()


def test_a_newer_release_offered_mid_download_replaces_the_older_one(world, monkeypatch):
    world.shop.build(1, patch=pad)
    world.shop.build(2, version=(0, 3, 0))
    world.shop.offer({NAME: 1})
    gw = world.start_gateway()
    undo = _cut_at_state(monkeypatch, "downloading")
    with pytest.raises(PowerCut):
        world.boot()
    undo()
    assert ota_state(world.flash)["job"]["serial"] == 1
    world.shop.offer({NAME: 2})  # the rollout moved on while the node was off
    for _ in range(6):
        slot, n = world.boot(until=job_done)
        if n != "reset" and ota_state(world.flash).get("serial") == 2:
            break
    assert ota_state(world.flash) == {"serial": 2, "version": "0.3.0"}
    pointer = slots.read_pointer(str(world.flash))
    assert not pointer["trial"]
    assert slots.status(str(world.flash))["slots"][pointer["slot"]]["version"] == "0.3.0"
    wait_until(lambda: gw.ota.counts["state.confirmed"] >= 1, 10, "the confirmed state")
