"""A simulated hour of a noisy BLE street at a gateway: hundreds of non-fleet advertisers
(phones that rotate their addresses every 15 minutes, and beacons and gadgets with static
addresses) around the fleet's own advertising nodes.  Afterwards no non-fleet address, in
any spelling or as a hash, may be in any file the gateway wrote or any line it logged at
DEBUG level; the store audit with the full watch list must hold.

The radio is the only stand-in (bleak's real BleakScanner over a backend that hands it
advertisements, as tests/gateway/test_ingest_ble.py does); the gateway, its pipeline,
outbox, accountant, audit log and local store are the real ones."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time

from audit.store import audit_store
from gateway.anonymise import default_policy_path, load_policy
from gateway.forward.local import LocalStore
from gateway.ingest.ble import BleIngest
from gateway.logs import JsonFormatter
from gateway.pipeline import Gateway
from simulators.emulators.ble import ROTATION_MS, make_phone
from simulators.fleet import stranger
from simulators.framegen import FrameGenerator
from tests.gateway.test_ingest_ble import Air, advert, fleet_advert
from tests.helpers import wait_until

STEP_S = 10  # each advertiser is heard once per 10 simulated seconds
ADVERTISERS = 300
STATIC = 90


def colon(addr: bytes) -> str:
    return ":".join(f"{b:02X}" for b in addr)


def payload(rng: random.Random, i: int):
    r = rng.randbytes
    kinds = [
        lambda: advert({0x004C: bytes.fromhex("1005") + r(6)}),  # iPhone nearby
        lambda: advert({0x004C: bytes.fromhex("1219") + r(25)}),  # Find My
        lambda: advert({0x0075: bytes.fromhex("4204") + r(20)}),  # Samsung
        lambda: advert({0x0006: bytes.fromhex("030080") + r(10)}),  # Windows
        lambda: advert(name=f"Band {r(2).hex()}"),  # a wearable's name
        lambda: advert({0xFFFF: b"\xd1" + r(40)}),  # our marker, no frame
    ]
    return kinds[i % len(kinds)]()


def test_an_hour_of_a_noisy_ble_street_leaves_no_trace_of_any_non_fleet_device(tmp_path):
    rng = random.Random(2026)
    gen = FrameGenerator(seed=21, cadence_s=60, status_every=10)
    start = int(time.time()) // 60 * 60 - 3600
    phones = [make_phone(rng, i, 0, 3600 * 1000, rng.uniform(2, 40),
                         10**12 if i < STATIC else ROTATION_MS) for i in range(ADVERTISERS)]
    log_path = tmp_path / "gateway.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    rootlog = logging.getLogger()
    old_level = rootlog.level
    rootlog.addHandler(handler)
    rootlog.setLevel(logging.DEBUG)
    air = Air()
    data, store = tmp_path / "gw", tmp_path / "store.sqlite"
    gateway = Gateway(gen.keyring(), LocalStore(store), data, None, client_id="ble-hour")
    ble = BleIngest(gateway.queue, scanner_class=air.bleak_scanner_class(),
                    is_fleet_node=lambda n: gateway.verifier.keyring.get(n) is not None,
                    silence_restart_s=None)
    gateway.links.append(ble)
    used: set[bytes] = set()
    fleet_frames = 0
    gateway.start()
    try:
        wait_until(ble.scanning.is_set, 10, "the BLE scanner")
        scanner = air.running()
        for step in range(3600 // STEP_S):
            t_ms = step * STEP_S * 1000
            heard = []
            for i, p in enumerate(phones):
                addr = p.address_at(t_ms)
                used.add(addr)
                heard.append((colon(addr), payload(rng, i)))
            if (step + 1) % (60 // STEP_S) == 0:  # a window closed: the fleet advertises
                t_s = start + (step + 1) * STEP_S
                for _k, frame in gen.frames(t_s):
                    heard += [(colon(rng.randbytes(6)), fleet_advert(frame))] * 2
                    fleet_frames += 1
                heard.append((colon(rng.randbytes(6)), fleet_advert(stranger(5, t_s)[1])))
            rng.shuffle(heard)

            async def deliver(batch=heard):
                for address, adv in batch:
                    scanner.deliver(address, adv)

            asyncio.run_coroutine_threadsafe(deliver(), scanner.loop).result(30)
        wait_until(lambda: gateway.stats.accepted == fleet_frames, 60, "the fleet's frames")
        wait_until(lambda: gateway.outbox.depth() == 0, 60, "the outbox to drain")
    finally:
        gateway.stop()
        rootlog.removeHandler(handler)
        rootlog.setLevel(old_level)
        handler.close()
    assert ble.foreign + ble.invalid >= ADVERTISERS * 3600 // STEP_S
    assert len(used) > ADVERTISERS + (ADVERTISERS - STATIC) * 3  # rotations happened
    assert log_path.stat().st_size > 0

    watch = [colon(a) for a in sorted(used)]
    policy = load_policy(default_policy_path())
    result = audit_store(data, f"sqlite:{store}", policy, logs=[log_path], watch=watch,
                         keyring=gen.keyring())
    assert result.ok, result.lines()
    assert result.figures["files_scanned"] >= 4  # outbox, accountant, audit log, log, ...
    assert result.figures["store_points"] > 0

    # the scan has the power to see one: a single hash of one address in the log fails it
    planted = tmp_path / "planted.log"
    planted.write_text(log_path.read_text() + '{"message": "device '
                       + hashlib.sha256(sorted(used)[7]).hexdigest() + '"}\n')
    found = audit_store(None, None, policy, logs=[planted], watch=watch)
    assert any("non-fleet radio address" in f.message for f in found.findings)
