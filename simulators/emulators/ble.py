"""Bluetooth LE advertisements from a simulated population of phones, for crowd nodes.

In:  a population (who is where, when) and a SimClock (simulators/node_host.py).
Out: `EmulatedScanner`, the hal `ble` part: start(callback) makes it call
callback(addr, rssi) for every advertisement heard while the clock advances, in time
order, exactly as the board's Bluetooth IRQ does.  Ground truth stays here: which phones
were present in any window (`present_in`), which addresses they used (`addresses_in`).

The model, and its sources:
- Each phone advertises every `adv_interval_ms` (100 ms .. 1 s, typical of phones' BLE
  beacons and Exposure-Notification-style services) plus advDelay, a random 0..10 ms added
  to every advertising event (Bluetooth Core 5.4 Vol 6 Part B §4.4.2.2.1).
- Its address is a resolvable private address (two most significant bits 0b01, Core Vol 6
  Part B §1.3.2.2) that it replaces every `rotation_ms` (the recommended
  TGAP(private_addr_int) is 15 min, Core Vol 3 Part C Appendix A), at a random phase.
- RSSI: log-distance path loss, RSSI = P(1 m) - 10 n log10(d) + shadowing + fading, with
  P(1 m) = -59 dBm, n = 2.5 (outdoor street, body-worn), a per-phone shadowing
  (pocket, body: normal, sd 2 dB) and a per-advertisement fading (normal, sd 2 dB, cut
  at +-2 sd).  An advertisement is missed by the scanner with probability `loss` (scan
  window, channel, collisions).
Deterministic for a seed.  CPython only (random.Random); tests/firmware run MicroPython
with a small inline feed instead.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from dataclasses import dataclass, field

TX_POWER_1M_DBM = -59.0
PATH_LOSS_EXPONENT = 2.5
FADING_SD_DB = 2.0
SHADOW_SD_DB = 2.0
ROTATION_MS = 15 * 60 * 1000
ADV_DELAY_MAX_MS = 10


def mean_rssi(distance_m: float, shadow_db: float = 0.0) -> float:
    return (TX_POWER_1M_DBM - 10.0 * PATH_LOSS_EXPONENT * math.log10(max(distance_m, 0.3))
            + shadow_db)


def distance_for(rssi_dbm: float) -> float:
    """The distance at which the mean RSSI (no shadowing) is `rssi_dbm`."""
    return 10.0 ** ((TX_POWER_1M_DBM - rssi_dbm) / (10.0 * PATH_LOSS_EXPONENT))


@dataclass
class Phone:
    phone_id: int
    arrive_ms: int
    leave_ms: int
    distance_m: float
    adv_interval_ms: int
    rotation_ms: int
    rotation_phase_ms: int
    shadow_db: float
    secret: bytes = field(repr=False)

    def address_at(self, t_ms: int) -> bytes:
        """The resolvable private address in use at time t."""
        epoch = (t_ms + self.rotation_phase_ms) // self.rotation_ms
        raw = bytearray(hashlib.sha256(self.secret + epoch.to_bytes(8, "big")).digest()[:6])
        raw[0] = (raw[0] & 0x3F) | 0x40  # RPA: top bits 0b01
        return bytes(raw)

    def present(self, t0_ms: int, t1_ms: int) -> bool:
        return self.arrive_ms < t1_ms and self.leave_ms > t0_ms


class Population:
    def __init__(self, phones: list[Phone], seed: int = 1, loss: float = 0.1):
        self.phones = phones
        self.loss = loss
        self._rng = random.Random(seed * 7919 + 17)

    # -- ground truth ------------------------------------------------------------------------

    def present_in(self, t0_ms: int, t1_ms: int, max_distance_m: float | None = None,
                   min_mean_rssi: float | None = None) -> set:
        """Phones present at some time in [t0, t1): within `max_distance_m`, and/or with a
        mean RSSI (path loss and their shadowing, before fading) of at least
        `min_mean_rssi`.  A node with an RSSI floor F hears every phone whose mean is
        above F + 2 sd of fading on every advertisement, and none below F - 2 sd."""
        return {p.phone_id for p in self.phones if p.present(t0_ms, t1_ms)
                and (max_distance_m is None or p.distance_m <= max_distance_m)
                and (min_mean_rssi is None
                     or mean_rssi(p.distance_m, p.shadow_db) >= min_mean_rssi)}

    def addresses_in(self, t0_ms: int, t1_ms: int, phone_ids=None) -> set:
        """Addresses the phones used in [t0, t1) (each rotation boundary checked)."""
        out = set()
        for p in self.phones:
            if (phone_ids is not None and p.phone_id not in phone_ids) or not p.present(
                    t0_ms, t1_ms):
                continue
            a, b = max(t0_ms, p.arrive_ms), min(t1_ms, p.leave_ms)
            t = a
            while t < b:
                out.add(p.address_at(t))
                t = ((t + p.rotation_phase_ms) // p.rotation_ms + 1) * p.rotation_ms \
                    - p.rotation_phase_ms
        return out

    # -- the radio ---------------------------------------------------------------------------

    def rssi(self, phone: Phone) -> int:
        fade = max(-2 * FADING_SD_DB, min(2 * FADING_SD_DB, self._rng.gauss(0.0, FADING_SD_DB)))
        return int(round(mean_rssi(phone.distance_m, phone.shadow_db) + fade))


def make_phone(rng: random.Random, phone_id: int, arrive_ms: int, leave_ms: int,
               distance_m: float, rotation_ms: int = ROTATION_MS) -> Phone:
    return Phone(
        phone_id=phone_id,
        arrive_ms=arrive_ms,
        leave_ms=leave_ms,
        distance_m=distance_m,
        adv_interval_ms=rng.randint(100, 1000),
        rotation_ms=rotation_ms,
        rotation_phase_ms=rng.randrange(rotation_ms),
        shadow_db=max(-2 * SHADOW_SD_DB, min(2 * SHADOW_SD_DB, rng.gauss(0.0, SHADOW_SD_DB))),
        secret=rng.randbytes(16),
    )


def crowd(n: int, seed: int, start_ms: int = 0, end_ms: int = 10**12, near_m=(2.0, 15.0),
          far: int = 0, far_m=(80.0, 200.0), first_id: int = 0,
          rotation_ms: int = ROTATION_MS) -> list[Phone]:
    """`n` phones present from start to end within `near_m`, plus `far` phones out of
    range (their mean RSSI is well below -95 dBm)."""
    rng = random.Random(seed)
    phones = [make_phone(rng, first_id + i, start_ms, end_ms, rng.uniform(*near_m),
                         rotation_ms) for i in range(n)]
    phones += [make_phone(rng, first_id + n + i, start_ms, end_ms, rng.uniform(*far_m),
                          rotation_ms) for i in range(far)]
    return phones


def street(seed: int, duration_ms: int, arrivals_per_min: float = 6.0,
           dwell_mean_s: float = 300.0, max_distance_m: float = 60.0,
           first_id: int = 0) -> list[Phone]:
    """People passing and lingering: Poisson arrivals, exponential dwell (at least 10 s),
    distances uniform up to `max_distance_m` (the farther ones are out of range)."""
    rng = random.Random(seed)
    phones, t, i = [], 0.0, 0
    rate_per_ms = arrivals_per_min / 60000.0
    while True:
        t += rng.expovariate(rate_per_ms)
        if t >= duration_ms:
            return phones
        dwell = max(10.0, rng.expovariate(1.0 / dwell_mean_s)) * 1000.0
        phones.append(make_phone(rng, first_id + i, int(t), int(t + dwell),
                                 rng.uniform(1.0, max_distance_m)))
        i += 1


class EmulatedScanner:
    """The hal `ble` part, driven by a SimClock."""

    def __init__(self, population: Population, clock):
        self.population = population
        self._clock = clock
        self._cb = None
        self._heap: list = []
        self._arrivals = sorted(population.phones, key=lambda p: p.arrive_ms)
        self._next_arrival = 0
        self._rng = random.Random(len(population.phones) * 31 + 7)
        self.delivered = 0  # advertisements handed to the callback
        self.missed = 0
        self.starts = 0
        clock.on_advance(self._advance)

    def start(self, callback) -> None:
        self._cb = callback
        self.starts += 1

    def stop(self) -> None:
        self._cb = None

    def _advance(self, t0_ms: int, t1_ms: int) -> None:
        heap, rng, pop = self._heap, self._rng, self.population
        arrivals = self._arrivals
        while (self._next_arrival < len(arrivals)
               and arrivals[self._next_arrival].arrive_ms < t1_ms):
            p = arrivals[self._next_arrival]
            self._next_arrival += 1
            first = max(p.arrive_ms, t0_ms) + rng.randrange(p.adv_interval_ms)
            heapq.heappush(heap, (first, p.phone_id, p))
        cb = self._cb
        while heap and heap[0][0] < t1_ms:
            t, pid, p = heapq.heappop(heap)
            if t >= p.leave_ms:
                continue
            if cb is not None:
                if rng.random() < pop.loss:
                    self.missed += 1
                else:
                    self.delivered += 1
                    cb(p.address_at(t), pop.rssi(p))
            nxt = t + p.adv_interval_ms + rng.randint(0, ADV_DELAY_MAX_MS)
            heapq.heappush(heap, (nxt, pid, p))
