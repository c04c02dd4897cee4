"""Linkability audit: can anyone link a phone across windows or nodes from what the fleet
emits?  Runs the real crowd firmware (`firmware/measure/crowd.py`, the node's own
source, in CPython) on simulated populations (simulators/emulators/ble.py) and plays a
linking game against it.

Attacker model.  The attacker holds everything the fleet emits, stores and logs: every
crowd frame's counts and RSSI bins of every node and window (the store and the gateway
hold no more than that; the store audit checks they hold no identifier).  The attacker
knows the layout, the population sizes, which node heard the target in window 1 and
that it moved on.  The attacker does not hold a node's RAM while it runs.

The game, one trial: a target phone (one that keeps its address, or one that rotates it
every 15 minutes) is among `crowd` phones at node A in window 1.  In window 2 it is at
node B or node C (a fair coin), and an unknown decoy phone at the same distance is at the
other; both have `crowd - 1` other phones around them.  The attacker sees the three
nodes' outputs for both windows and says B or C.  Chance is 1/2.  Reported: accuracy with
a 95 % Wilson interval, per phone type, and the same attacker against a leaky design that
emits per-device hashes under one stable key (what the Enschede counters amounted to),
which shows the game can detect linkage when there is any.

Alongside: the window key changes every window, and after a window is closed neither the
old key nor its SipHash state nor any of the window's hashes is left in the sampler;
after close() the key state is zero; and two different populations of equal size and
signal strength give identical output.

In: trial count, seed (`key_seed` None: the node's keys come from the OS, as on a board).
Out: a `CheckResult` ("linkability") with those numbers; a finding when the attacker
beats chance (the interval lies above 1/2), when the leaky baseline fails to (the game
lost its power), or when a key check fails.
"""

from __future__ import annotations

import math
import random

from audit.findings import CheckResult
from firmware.measure import crowd as crowd_fw
from simulators.emulators.ble import ROTATION_MS, EmulatedScanner, Phone, Population, make_phone
from simulators.node_host import SeededRng, SimClock

CHANCE = 0.5
STATIC_ROTATION_MS = 10**12  # a phone that never changes its address
_NEAR_M = (2.0, 12.0)


class _Hw:
    """The hal parts a crowd sampler uses: clock, rng, ble."""

    def __init__(self, clock, rng, ble):
        self.clock, self.rng, self.ble = clock, rng, ble


class _KeyLog:
    """Wraps the node's rng to keep, for the audit only, the keys it handed out."""

    def __init__(self, rng):
        self._rng = rng
        self.keys: list[bytes] = []

    def urandom(self, n):
        key = self._rng.urandom(n)
        self.keys.append(bytes(key))
        return key


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def _sampler_bytes(sampler) -> bytes:
    """Everything the sampler object holds in buffers and ints, as bytes to search."""
    out = bytearray()
    for value in vars(sampler).values():
        if hasattr(value, "tobytes"):
            out += value.tobytes()
        elif isinstance(value, (bytes, bytearray)):
            out += value
    return bytes(out)


def _run_node(phones: list[Phone], window_s: int, windows: int, node_rng, pop_seed: int,
              key_checks: CheckResult | None) -> list[tuple[int, ...]]:
    """Run one crowd node over `windows` windows; its outputs as (count, bins...)."""
    clock = SimClock()
    scanner = EmulatedScanner(Population(phones, seed=pop_seed, loss=0.1), clock)
    keys = _KeyLog(node_rng)
    sampler = crowd_fw.CrowdSampler(_Hw(clock, keys, scanner),
                                    {"window_s": window_s, "table_slots": 64})
    outputs = []
    states = [sampler._state.tobytes()]
    for w in range(windows):
        clock.advance(window_s * 1000)
        out = sampler.poll(clock.ticks_ms())
        assert out is not None
        outputs.append((out["crowd_count"], *(out[f"rssi_bin_{i}"] for i in range(5))))
        states.append(sampler._state.tobytes())
        if key_checks is not None:
            held = _sampler_bytes(sampler)
            old_key = keys.keys[w] if w < len(keys.keys) else b""
            old_state = states[w]
            if (old_key and old_key in held) or old_state in held:
                key_checks.add(f"after window {w + 1} the crowd sampler still holds that "
                               "window's key or key state", "firmware/measure/crowd.py")
            if any(sampler._table):
                key_checks.add(f"after window {w + 1} the crowd sampler's hash table still "
                               "holds hashes of the window just closed",
                               "firmware/measure/crowd.py")
    if key_checks is not None:
        if len(set(states)) != len(states) or len(set(keys.keys)) != len(keys.keys):
            key_checks.add("the crowd sampler used the same key in two windows",
                           "firmware/measure/crowd.py")
        if len(keys.keys) != windows + 1:  # counted at the RNG, not by the sampler
            key_checks.add(f"the crowd sampler drew {len(keys.keys)} keys for {windows} "
                           "windows (one per window and one to start is expected)",
                           "firmware/measure/crowd.py")
        sampler.close()
        if any(sampler._state) or any(sampler._table):
            key_checks.add("after close() the crowd sampler still holds key state or hashes",
                           "firmware/measure/crowd.py")
    return outputs


def _leaky_hashes(phones: list[Phone], t0_ms: int, t1_ms: int, key_state) -> set[int]:
    """What a node with one stable key would emit: a pseudonym per address heard."""
    out = set()
    for p in phones:
        if p.present(t0_ms, t1_ms):
            addr = p.address_at(max(p.arrive_ms, t0_ms))
            out.add(crowd_fw.siphash24(key_state, addr, len(addr)))
    return out


def _trial(rng: random.Random, static: bool, crowd: int, window_s: int, node_rng,
           key_checks: CheckResult | None) -> tuple[bool, bool]:
    """One game; (attacker right on the fleet's output, attacker right on a leaky design)."""
    w_ms = window_s * 1000
    rotation = STATIC_ROTATION_MS if static else ROTATION_MS
    ids = iter(range(10**6))

    def phone(arrive, leave, distance=None, rot=ROTATION_MS):
        return make_phone(rng, next(ids), arrive, leave,
                          distance if distance is not None else rng.uniform(*_NEAR_M), rot)

    target = phone(0, w_ms, rot=rotation)
    decoy = phone(w_ms, 2 * w_ms, target.distance_m, rotation)
    decoy.shadow_db = target.shadow_db
    moved = Phone(target.phone_id, w_ms, 2 * w_ms, target.distance_m, target.adv_interval_ms,
                  target.rotation_ms, target.rotation_phase_ms, target.shadow_db,
                  target.secret)
    to_c = rng.random() < 0.5
    at_a = [target] + [phone(0, w_ms) for _ in range(crowd - 1)]
    at_b = [decoy if to_c else moved] + [phone(w_ms, 2 * w_ms) for _ in range(crowd - 1)]
    at_c = [moved if to_c else decoy] + [phone(w_ms, 2 * w_ms) for _ in range(crowd - 1)]
    out_a = _run_node(at_a, window_s, 2, node_rng, rng.randrange(1 << 30), key_checks)
    out_b = _run_node(at_b, window_s, 2, node_rng, rng.randrange(1 << 30), None)
    out_c = _run_node(at_c, window_s, 2, node_rng, rng.randrange(1 << 30), None)

    # The attacker: the node whose window-2 histogram is closer to A's window-1 histogram
    # (the target's signal strength is in A's bins); a tie is a coin.
    def distance(out):
        return sum(abs(x - y) for x, y in zip(out[1][1:], out_a[0][1:]))

    db, dc = distance(out_b), distance(out_c)
    guess_c = dc < db if db != dc else rng.random() < 0.5
    # The same attacker against pseudonyms under one stable key: the overlap decides.
    state = [0] * 16
    crowd_fw.siphash_key_state(bytes(rng.randrange(256) for _ in range(16)), state)
    seen_a = _leaky_hashes(at_a, 0, w_ms, state)
    ob = len(seen_a & _leaky_hashes(at_b, w_ms, 2 * w_ms, state))
    oc = len(seen_a & _leaky_hashes(at_c, w_ms, 2 * w_ms, state))
    leaky_c = oc > ob if ob != oc else rng.random() < 0.5
    return guess_c == to_c, leaky_c == to_c


def equal_counts_identical(n: int = 12, rssi_dbm: int = -65, window_s: int = 60) -> bool:
    """Two different populations of n devices at one signal strength: same output?"""
    outs = []
    for salt in (1, 2):
        clock = SimClock()

        class Ble:
            def start(self, cb):
                self.cb = cb

            def stop(self):
                pass

        ble = Ble()
        sampler = crowd_fw.CrowdSampler(_Hw(clock, SeededRng(salt), ble), {"window_s": window_s})
        prng = random.Random(salt * 7919)
        for _ in range(n):
            addr = prng.randbytes(6)
            for _rep in range(3):
                ble.cb(addr, rssi_dbm)
        clock.advance(window_s * 1000)
        outs.append(dict(sampler.poll(clock.ticks_ms())))
    return outs[0] == outs[1]


def audit_linkability(trials: int = 400, seed: int = 1, crowd: int = 6, window_s: int = 10,
                      key_seed: int | None = None) -> CheckResult:
    result = CheckResult("linkability")
    rng = random.Random(seed)
    node_rng = SeededRng(key_seed) if key_seed is not None else SeededRng(None)
    groups = {"static": [0, 0, 0], "rotating": [0, 0, 0]}  # n, right, leaky right
    for t in range(trials):
        static = t % 2 == 0
        right, leaky_right = _trial(rng, static, crowd, window_s, node_rng,
                                    result if t < 4 else None)
        g = groups["static" if static else "rotating"]
        g[0] += 1
        g[1] += right
        g[2] += leaky_right
    total = [sum(g[i] for g in groups.values()) for i in range(3)]
    figures = {"attacker": "holds every count and RSSI bin the fleet emits and stores; "
                           "guesses which of two nodes the target moved to",
               "trials": trials, "chance": CHANCE}
    for name, (n, right, leaky) in [*groups.items(), ("all", total)]:
        lo, hi = wilson(right, n)
        llo, lhi = wilson(leaky, n)
        figures[name] = {"trials": n, "accuracy": round(right / n, 3) if n else None,
                         "ci95": [round(lo, 3), round(hi, 3)],
                         "leaky_design_accuracy": round(leaky / n, 3) if n else None,
                         "leaky_ci95": [round(llo, 3), round(lhi, 3)]}
    result.figures.update(figures)
    lo, hi = wilson(total[1], total[0])
    if lo > CHANCE:
        result.add(f"an attacker holding the fleet's output linked a phone across windows and "
                   f"nodes in {total[1]} of {total[0]} trials ({total[1] / total[0]:.1%}, 95 % "
                   f"interval {lo:.1%}..{hi:.1%}): better than chance", "linkability")
    llo, _ = wilson(total[2], total[0])
    if llo <= CHANCE:
        result.add(f"the same attacker could not link phones even on a leaky design "
                   f"({total[2]} of {total[0]}): the game has too few trials to show anything",
                   "linkability")
    if not equal_counts_identical():
        result.add("two different populations of equal size and signal strength gave different "
                   "crowd output: the output depends on more than the count", "linkability")
    result.figures["equal_counts_identical"] = not any(
        "equal size" in f.message for f in result.findings)
    result.figures["key_checks"] = "ok" if not any(
        f.where == "firmware/measure/crowd.py" for f in result.findings) else "failed"
    return result
