"""Over-the-air updates on the virtual board (docs/ota.md; issue 12's acceptance): the
firmware installed in slot a of the board's flash, booted by its own boot.py
(firmware/slots.py BOOT_PY), pulls a release from a real gateway (gateway/ota.py) through
a real Mosquitto over the board's umqtt.simple, and switches to it.

The virtual board does not run main.py, so each power-on is driven from the raw REPL:
node.run(board.build(), until=...) for a bounded run.  The node's reset (ota.py calls
hw.reset, machine.reset() on a board) ends that command and the test presses the board's
RST (VirtualBoard.reset: a hard reset, boot.py runs again).  A power cut is
VirtualBoard.unplug() then plug(): what the finished commands wrote is on the flash, a
file still open is not (tools/micropython/board.mjs), as on littlefs.
"""

from __future__ import annotations

import shutil
import time

import pytest

from dordt.errors import UserError
from firmware import protocol, slots
from fleet.keyring import Keyring, NodeEntry
from gateway.forward.local import LocalStore
from gateway.ota import OtaSettings
from gateway.pipeline import Gateway
from provisioning import vboard_net
from provisioning.virtual_board import RECORDS_ENV, VirtualBoard
from tests.fixtures.ota import (
    DOWNLOADING,
    OTA_DONE,
    STAGED,
    ReleaseShop,
    board_flash,
    board_run,
    board_where,
    ota_state,
)
from tests.helpers import wait_until

NODE = 0x0D0A0C01
NAME = protocol.node_name(NODE)
KEY = bytes(range(0x60, 0x80))
ZONE = "spoorzone"

pytestmark = [pytest.mark.timeout(600), pytest.mark.services, pytest.mark.micropython]

@pytest.fixture
def ota_board(tmp_path, monkeypatch, mosquitto):
    """A gateway serving releases, and a virtual board with slot a installed, enrolled
    (config, key, release.pub) and booted."""
    assert vboard_net.umqtt_source() is not None, vboard_net.UMQTT_HINT
    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records"))
    shop = ReleaseShop(tmp_path / "shop")
    flash = tmp_path / "board-flash"
    board_flash(flash, shop.pub_hex, NAME, KEY, ZONE, mosquitto.port)
    keyring = Keyring([NodeEntry(NODE, "air", ZONE, "spz-01", {0: KEY})])
    gw = Gateway(keyring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                 f"mqtt://{mosquitto.host}:{mosquitto.port}", client_id="ota-board-gw",
                 housekeeping_s=0.5,
                 ota=OtaSettings(shop.releases, shop.offers, 1024, offer_every_s=2.0))
    gw.start()
    assert gw.ingest.wait_connected(10)
    board = VirtualBoard(flash, wifi=True)
    try:
        board.start()
    except UserError as exc:
        gw.stop()
        pytest.fail(str(exc), pytrace=False)
    w = type("OtaBoard", (), {})()
    w.shop, w.flash, w.gw, w.board = shop, flash, gw, board
    try:
        yield w
    finally:
        board.stop()
        gw.stop()


def run_node(w, until, max_ms=200_000, trial_ms=600_000):
    return board_run(w.board, until, max_ms, trial_ms)


def where(w):
    return board_where(w.board)


def power_cut(w):
    w.board.unplug()
    w.board.plug()
    got = where(w)
    assert got["path"] in ("/fw/a", "/fw/b"), got  # bootable: the old or the new release
    return got


def test_an_update_applies_through_a_dropped_link_and_a_power_cut_at_every_step(ota_board):
    w = ota_board
    w.shop.build(1, version=(0, 2, 0), patch=_pad)
    w.shop.offer({NAME: 1})
    t0 = time.monotonic()
    assert where(w)["version"] == [0, 1, 0]

    # downloading: the Wi-Fi drops mid-chunk, the node reconnects and resumes
    w.board.net.drop_after_received(3000)
    out = run_node(w, DOWNLOADING)
    assert out["result"] == "stopped"
    assert out["link_errors"] >= 1  # the link dropped, and the download went on
    state = ota_state(w.flash)
    assert state["job"]["phase"] == "files" and state["job"]["file"] >= 3
    assert power_cut(w)["path"] == "/fw/a"  # cut while downloading: the old release runs

    # staged: every file in slot b and checked; the power goes before the switch
    out = run_node(w, STAGED)
    assert out["result"] == "stopped" and ota_state(w.flash)["job"]["phase"] == "staged"
    assert power_cut(w)["path"] == "/fw/a"

    # switched, before the reset: the power goes instead of the reset
    out = run_node(w, "False")
    assert out["result"] == "reset" and out["pointer"]["slot"] == "b"
    assert out["pointer"]["trial"]
    got = power_cut(w)
    assert got["path"] == "/fw/b" and got["version"] == [0, 2, 0]  # the new release, on trial

    # the first trial boot: the power goes before the health check passes
    got = power_cut(w)
    assert got["path"] == "/fw/b" and got["pointer"]["trial"]

    out = run_node(w, OTA_DONE)
    assert out["result"] == "stopped" and out["version"] == [0, 2, 0]
    assert out["pointer"]["slot"] == "b" and not out["pointer"]["trial"]
    assert out["update_modules"] == []  # the OTA code left the node's heap with the update
    assert ota_state(w.flash) == {"serial": 1, "version": "0.2.0"}
    wait_until(lambda: w.gw.ota.counts["state.confirmed"] == 1, 20, "the confirmed state")
    print(f"\nvirtual board update with a link drop and four power cuts: "
          f"{time.monotonic() - t0:.1f} s, {w.gw.ota.counts['chunk_bytes']} bytes in "
          f"{w.gw.ota.counts['chunks']} chunks")
    # after a reset it still runs the new release, confirmed
    w.board.reset()
    got = where(w)
    assert got["path"] == "/fw/b" and not got["pointer"]["trial"]


def _pad(tree):
    """firmware/ticks.py 20 KB bigger (a constant nothing reads): a download of a few
    dozen chunks, so a cut lands in the middle of it."""
    path = tree / "ticks.py"
    path.write_text(path.read_text() + "\n_PAD = %r\n" % ("ota test padding " * 1250))


def _broken_sensors(tree):
    """A release whose air sampler never closes a window: its health check cannot pass."""
    path = tree / "measure" / "air.py"
    text = path.read_text()
    marker = "    def poll(self, now_ms):\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + "        return None\n", 1))


def test_a_release_whose_health_check_fails_rolls_back_by_itself(ota_board):
    w = ota_board
    w.shop.build(1, version=(0, 2, 0), patch=_broken_sensors)
    w.shop.offer({NAME: 1})
    out = run_node(w, "False")
    assert out["result"] == "reset" and out["pointer"]["slot"] == "b"
    paths = []
    for _ in range(slots.MAX_TRIAL_BOOTS + 3):
        w.board.reset()  # the node's reset (RST): boot.py runs, a trial boot is counted
        got = where(w)
        paths.append(got["path"])
        if got["path"] == "/fw/a":
            break
        assert got["version"] == [0, 2, 0]
        out = run_node(w, OTA_DONE, max_ms=60_000, trial_ms=6000)
        assert out["result"] == "reset"  # not healthy in time: reset
    assert paths == ["/fw/b"] * slots.MAX_TRIAL_BOOTS + ["/fw/a"]
    got = where(w)
    assert got["version"] == [0, 1, 0] and got["pointer"]["rolled_back_from"] == "b"
    # the old firmware reports the rollback and never takes that release again
    out = run_node(w, "n.uptime_ms > 8000", max_ms=20_000)
    assert out["result"] == "stopped" and out["path"] == "/fw/a"
    state = ota_state(w.flash)
    assert state["bad"] == [1] and "job" not in state
    wait_until(lambda: w.gw.ota.counts["state.rolled_back"] == 1, 20, "the rolled_back state")
    shutil.rmtree(w.shop.releases / "1", ignore_errors=True)
