"""Fuzz target: BLE advertisement parsing (docs/protocol.md §5.3).

Input: the manufacturer data of an advertisement; byte 0 picks the company id it is
reported under (ours, or another).  framing.ble_frame never raises; the gateway's
advertisement handler (BleIngest._on_advertisement, as bleak calls it) never fails
(`callback_errors` stays 0), passes on only frames that decode and belong to the fleet,
and drops everything else before it is stored.
"""

from __future__ import annotations

import queue
import sys

import harness

with harness.instrumented():
    from bleak.backends.scanner import AdvertisementData

    from firmware import framing, protocol
    from gateway.ingest.ble import BleIngest

FLEET = {0x0D0A0001, 0x0D0A0002, 0x0D0A0003}
OUT: queue.SimpleQueue = queue.SimpleQueue()
INGEST = BleIngest(OUT, is_fleet_node=lambda n: n in FLEET, dedupe_s=0.0)


def one_input(data: bytes) -> None:
    company = framing.BLE_COMPANY_ID if not data or data[0] & 1 else data[0] << 8 | 0x59
    value = data[1:]
    frame = framing.ble_frame(value)
    assert frame is None or (value[0] == framing.BLE_MARKER and frame == value[1:])
    adv = AdvertisementData(local_name=None, manufacturer_data={company: value},
                            service_data={}, service_uuids=[], tx_power=None, rssi=-70,
                            platform_data=())
    INGEST._on_advertisement(None, adv)
    assert INGEST.callback_errors == 0
    while not OUT.empty():
        env = OUT.get_nowait()
        assert company == framing.BLE_COMPANY_ID and env.payload == frame
        assert protocol.decode(env.payload).node_id in FLEET


def seeds():
    v = harness.vectors()
    for x in v["good"] + v["bad"]:
        frame = bytes.fromhex(x["frame"])
        if 0 < len(frame) <= framing.MAX_FRAME:
            yield b"\x01" + framing.ble_adv_data(frame)[4:]
    yield b"\x02" + framing.ble_adv_data(bytes.fromhex(v["good"][0]["frame"]))[4:]


if __name__ == "__main__":
    harness.run(one_input, seeds, "ble")
    sys.exit(0)
