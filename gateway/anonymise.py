"""Anonymise: Reading → Reading, under the zone's privacy policy (docs/privacy.md).

In:  a group of verified Readings, from the pipeline.
Out: one Reading per input, in the same order, shaped as the zone's policy allows it to
     leave the gateway: crowd counts below k withheld and marked (`suppressed`), optional
     two-sided geometric noise on crowd counts under a per-node per-day epsilon budget,
     timestamps floored to the zone's time resolution.  Status readings and air readings
     pass unchanged.  Inputs are never mutated.
On failure: `apply` raises only when the epsilon accountant cannot record its spending;
     then no noisy value of the group exists, the pipeline commits and acks nothing, and the
     broker redelivers.

The policy is a versioned TOML file (gateway/policy.toml documents every option).
`load_policy` validates it before anything runs: a `PolicyError` names the key and the fix
(exit code 2 at the command line).  `Policy.id` ("<version>/<hash[:12]>") and the full
hash travel with every forwarded batch.

Noise is sampled exactly, with integer arithmetic only (Canonne, Kamath & Steinke, "The
Discrete Gaussian for Differential Privacy", NeurIPS 2020, algorithms 1-2).  The textbook
Laplace sampler in floating point leaks the true value through which doubles it can
produce (Mironov, "On Significance of the Least Significant Bits for Differential Privacy",
CCS 2012); a sampler that never touches a float has no such side door.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import secrets
import sqlite3
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from importlib import resources
from pathlib import Path

from firmware import metrics
from gateway.model import Reading

DAY_S = 86400
MIN_EPSILON = 1e-6  # a smaller non-zero epsilon is a typo, not a policy

# Bumped when `apply` starts to treat the same policy values differently; it is part of the
# hash, so a batch's policy hash says which rules it went through, not only which numbers.
# 2: with noise on, a noisy RSSI bin of 1..k-1 withholds the histogram (as without noise).
SEMANTICS = 2

# The gateway-added field that says a value was withheld, and why (docs/privacy.md).
SUPPRESSED = "suppressed"
SMALL_COUNT = 1
BUDGET_SPENT = 2
WINDOW_TOO_FINE = 3
SMALL_RSSI_BIN = 4
SUPPRESSED_REASONS = {
    SMALL_COUNT: "small_count",
    BUDGET_SPENT: "budget_spent",
    WINDOW_TOO_FINE: "window_too_fine",
    SMALL_RSSI_BIN: "small_rssi_bin",
}

COUNT = "crowd_count"
BINS = tuple(f"rssi_bin_{i}" for i in range(len(metrics.RSSI_BIN_EDGES_DBM) + 1))
assert all(metrics.BY_NAME[b].group == "crowd" for b in (COUNT, *BINS))

# Device health, never data about people: passes even when the values are withheld.
_HEALTH_FIELDS = frozenset(m.name for m in metrics.BY_NAME.values() if m.unit == "bitmask")

_ZONE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the file, the key and the fix."""


def default_policy_path() -> Path:
    """The policy shipped with the gateway (gateway/policy.toml)."""
    return Path(str(resources.files("gateway") / "policy.toml"))


# -- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZonePolicy:
    """The effective options of one zone (or of [defaults])."""

    crowd_min_count: int
    crowd_noise_epsilon: Fraction  # exact: the decimal the file wrote, 0.1 is 1/10
    daily_epsilon_budget: Fraction
    crowd_time_resolution_s: int
    noise_time_resolution_s: int

    @property
    def noise_on(self) -> bool:
        return self.crowd_noise_epsilon > 0

    def canonical(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = float(value) if isinstance(value, Fraction) else value
        return out


# option → (what it is, how to check it).  The sample policy.toml documents each.
_COUNT, _EPSILON, _RESOLUTION = "count", "epsilon", "resolution"
OPTIONS = {
    "crowd_min_count": _COUNT,
    "crowd_noise_epsilon": _EPSILON,
    "daily_epsilon_budget": _EPSILON,
    "crowd_time_resolution_s": _RESOLUTION,
    "noise_time_resolution_s": _RESOLUTION,
}
assert tuple(OPTIONS) == tuple(f.name for f in dataclasses.fields(ZonePolicy))
_TOP = ("version", "defaults", "zones")


@dataclass(frozen=True)
class Policy:
    version: int
    defaults: ZonePolicy
    zones: Mapping[str, ZonePolicy]  # effective options of each zone that has a table
    source: str = "policy"

    def for_zone(self, zone: str) -> ZonePolicy:
        return self.zones.get(zone, self.defaults)

    @property
    def uses_noise(self) -> bool:
        return self.defaults.noise_on or any(z.noise_on for z in self.zones.values())

    @cached_property
    def canonical_json(self) -> str:
        """The effective policy as canonical JSON (sorted keys, no spaces): what the hash
        covers.  Zones whose effective options equal the defaults are left out: they
        change nothing the gateway does."""
        doc = {
            "format": "dordt-privacy-policy",
            "semantics": SEMANTICS,
            "version": self.version,
            "defaults": self.defaults.canonical(),
            "zones": {
                name: zp.canonical()
                for name, zp in sorted(self.zones.items())
                if zp != self.defaults
            },
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_json.encode()).digest()

    @cached_property
    def hash(self) -> str:
        return self.digest.hex()

    @property
    def id(self) -> str:
        return f"{self.version}/{self.hash[:12]}"

    def check_zones(self, known: Iterable[str]) -> None:
        """Raise if the policy names a zone outside `known` (the keyring's and the zones
        file's ids): a typo there would quietly leave that zone on the defaults."""
        known = sorted(set(known))
        for name in self.zones:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {near[0]!r}?" if near else f" Known zones: {known}."
                raise PolicyError(f"{self.source}: [zones.{name}] is not a known zone.{hint}")

    @classmethod
    def from_dict(cls, doc: Mapping, source: str = "policy") -> Policy:
        """Validate a parsed policy document.  Errors name the key and the fix."""
        if not isinstance(doc, Mapping):
            raise PolicyError(f"{source}: a policy is a TOML table, got {_type(doc)}")
        _unknown(doc, _TOP, source, "")
        if "version" not in doc:
            raise PolicyError(
                f"{source}: 'version' is required: an integer, bumped on any "
                "change (e.g. version = 1)"
            )
        version = doc["version"]
        if type(version) is not int or version < 1:
            raise PolicyError(
                f"{source}: version: expected an integer >= 1, got {version!r} ({_type(version)})"
            )
        raw_defaults = doc.get("defaults")
        if not isinstance(raw_defaults, Mapping):
            raise PolicyError(
                f"{source}: a [defaults] table with every option is required "
                f"({', '.join(OPTIONS)}); gateway/policy.toml shows them all"
            )
        _unknown(raw_defaults, OPTIONS, source, "[defaults] ")
        for key in OPTIONS:
            if key not in raw_defaults:
                raise PolicyError(
                    f"{source}: [defaults] {key!r} is required: every option "
                    "needs a default (gateway/policy.toml documents each)"
                )
        defaults = _zone_policy({}, raw_defaults, source, "[defaults]")
        raw_zones = doc.get("zones", {})
        if not isinstance(raw_zones, Mapping):
            raise PolicyError(
                f"{source}: zones: expected tables [zones.<zone>], got {_type(raw_zones)}"
            )
        zones = {}
        for name, raw in raw_zones.items():
            where = f"[zones.{name}]"
            if not _ZONE_NAME.match(name):
                raise PolicyError(
                    f"{source}: {where}: a zone is named by its keyring id, "
                    "lower case letters, digits, '-' or '_' (e.g. maasterras)"
                )
            if not isinstance(raw, Mapping):
                raise PolicyError(
                    f"{source}: zones.{name}: expected a table of options "
                    f"([zones.{name}] with e.g. crowd_min_count = 10), got "
                    f"{_type(raw)}"
                )
            _unknown(raw, OPTIONS, source, f"{where} ")
            zones[name] = _zone_policy(raw_defaults, raw, source, where)
        return cls(version, defaults, zones, source)


def load_policy(path: str | Path, known_zones: Iterable[str] | None = None) -> Policy:
    """Read and validate a policy file; with `known_zones`, also check its zone names."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(
            f"{path}: no such policy file (the shipped default is {default_policy_path()})"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    policy = Policy.from_dict(doc, str(path))
    if known_zones is not None:
        policy.check_zones(known_zones)
    return policy


def _zone_policy(defaults: Mapping, raw: Mapping, source: str, where: str) -> ZonePolicy:
    values = {}
    origin = {}
    for key, kind in OPTIONS.items():
        value, at = (raw[key], where) if key in raw else (defaults[key], "[defaults]")
        values[key] = _option(key, kind, value, source, at)
        origin[key] = at
    eps, budget = values["crowd_noise_epsilon"], values["daily_epsilon_budget"]
    if eps > 0 and budget < eps:
        raise PolicyError(
            f"{source}: {where}: crowd_noise_epsilon = {float(eps)} (from "
            f"{origin['crowd_noise_epsilon']}) needs daily_epsilon_budget >= {float(eps)}, but "
            f"it is {float(budget)} (from {origin['daily_epsilon_budget']}), so nothing could "
            f"ever be released; set daily_epsilon_budget in {where}, or turn noise off with "
            "crowd_noise_epsilon = 0"
        )
    return ZonePolicy(**values)


def _option(key: str, kind: str, value, source: str, where: str):
    at = f"{source}: {where} {key}"
    if kind == _EPSILON:
        if type(value) not in (int, float):
            raise PolicyError(
                f"{at}: expected a number >= 0, got {value!r} ({_type(value)}); "
                f"write e.g. {key} = 0.5"
            )
        if not math.isfinite(value) or value < 0:
            raise PolicyError(
                f"{at}: must be a finite number >= 0, got {value!r}"
                + ("; 0 turns noise off" if key == "crowd_noise_epsilon" else "")
            )
        if key == "crowd_noise_epsilon" and 0 < value < MIN_EPSILON:
            raise PolicyError(
                f"{at}: {value!r} is below {MIN_EPSILON}: the noise would dwarf "
                "any count (s.d. over a million devices); use 0 to turn noise "
                f"off, or at least {MIN_EPSILON}"
            )
        # The decimal as written: 0.1 is exactly 1/10, so the sampler and the accountant
        # work with the number the policy's author meant, not its binary approximation.
        return Fraction(repr(value)) if type(value) is float else Fraction(value)
    if type(value) is not int:
        raise PolicyError(
            f"{at}: expected an integer, got {value!r} ({_type(value)}); "
            f"write e.g. {key} = {5 if kind == _COUNT else 60}"
        )
    if kind == _COUNT:
        if not 0 <= value <= 65535:
            raise PolicyError(
                f"{at}: must be 0..65535 devices, got {value} (0 or 1 turns suppression off)"
            )
        return value
    if not 0 <= value <= DAY_S:
        raise PolicyError(f"{at}: must be 0..86400 seconds, got {value} (0 turns coarsening off)")
    if value and DAY_S % value:
        lower = max(d for d in _DAY_DIVISORS if d < value)
        higher = min((d for d in _DAY_DIVISORS if d > value), default=DAY_S)
        raise PolicyError(
            f"{at}: {value} does not divide a day (86400 s), so its steps would "
            f"drift against UTC midnight; use e.g. {lower} or {higher}"
        )
    return value


_DAY_DIVISORS = tuple(d for d in range(1, DAY_S + 1) if DAY_S % d == 0)


def _unknown(doc: Mapping, valid: Iterable[str], source: str, where: str) -> None:
    valid = list(valid)
    for key in doc:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else f" Valid options: {valid}."
            raise PolicyError(f"{source}: {where}{key!r} is not a valid option.{hint}")


def _type(value) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# -- exact noise -------------------------------------------------------------------------------


def _bernoulli_exp(n: int, d: int, rng) -> bool:
    """True with probability exp(-n/d), using only uniform integers (CKS 2020, alg. 1)."""
    if n > d:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        whole, n = divmod(n, d)
        for _ in range(whole):
            if not _bernoulli_exp(1, 1, rng):
                return False
    # For gamma = n/d in [0, 1]: K counts Bernoulli(gamma/k) successes, k = 1, 2, ..., until
    # the first failure; P(K odd) = sum over j of (-gamma)^j / j! = exp(-gamma).
    k = 1
    while rng.randrange(d * k) < n:
        k += 1
    return k % 2 == 1


def two_sided_geometric(epsilon: Fraction, rng) -> int:
    """One sample Z with P(Z = z) = (1 - a) / (1 + a) * a**|z|, a = exp(-epsilon): the
    discrete Laplace distribution, the epsilon-DP noise for a count of sensitivity 1.

    Exact (CKS 2020, algorithm 2): integer arithmetic and `rng.randrange` only, so the
    output distribution is exactly the one above for any rational epsilon — no float is
    rounded on the way, so no output is more or less likely than the mathematics says.
    """
    s, t = epsilon.numerator, epsilon.denominator  # scale t/s = 1/epsilon
    if s <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp(u, t, rng):
            continue
        v = 0
        while _bernoulli_exp(1, 1, rng):
            v += 1
        y = (u + t * v) // s  # geometric with P(y) ∝ exp(-epsilon * y)
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue  # otherwise 0 would be drawn twice as often as it should
        return -y if negative else y


# -- the epsilon accountant --------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS epsilon_spent (
    node TEXT NOT NULL, day INTEGER NOT NULL,
    spent TEXT NOT NULL,            -- exact, "numerator/denominator"
    spent_approx REAL NOT NULL,     -- the same, for people reading the file
    PRIMARY KEY (node, day)
);
CREATE TABLE IF NOT EXISTS policy_seen (
    version INTEGER NOT NULL, semantics INTEGER NOT NULL, hash TEXT NOT NULL,
    first_s REAL NOT NULL, PRIMARY KEY (version, semantics)
);
"""


class EpsilonAccountant:
    """Epsilon spent per node per UTC day, in a small SQLite file.

    `reserve` grants or refuses a group's releases and makes the grants durable in one
    transaction (synchronous=FULL) before it returns, so the caller draws noise only for
    spending that is already on disk: a crash can over-count, never under-count.  One
    gateway process per file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def spent(self, node: str, day: int) -> Fraction:
        with self._lock:
            row = self._db.execute(
                "SELECT spent FROM epsilon_spent WHERE node=? AND day=?", (node, day)
            ).fetchone()
        return Fraction(row[0]) if row else Fraction(0)

    def reserve(self, requests: list[tuple[str, int, Fraction, Fraction]]) -> list[bool]:
        """For each (node, day, epsilon, budget), in order: grant it if the node's spending
        that day plus epsilon stays within budget.  Granted spending is durable on return."""
        grants = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                totals: dict[tuple[str, int], Fraction] = {}
                for node, day, eps, budget in requests:
                    key = (node, day)
                    if key not in totals:
                        row = db.execute(
                            "SELECT spent FROM epsilon_spent WHERE node=? AND day=?", key
                        ).fetchone()
                        totals[key] = Fraction(row[0]) if row else Fraction(0)
                    ok = totals[key] + eps <= budget
                    if ok:
                        totals[key] += eps
                    grants.append(ok)
                db.executemany(
                    "INSERT OR REPLACE INTO epsilon_spent VALUES (?,?,?,?)",
                    [(n, d, str(v), float(v)) for (n, d), v in totals.items()],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return grants

    def check_policy(self, policy: Policy, now_s: float) -> None:
        """Refuse a policy whose version was used here before with other values."""
        with self._lock:
            row = self._db.execute(
                "SELECT hash FROM policy_seen WHERE version=? AND semantics=?",
                (policy.version, SEMANTICS),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO policy_seen VALUES (?,?,?,?)",
                    (policy.version, SEMANTICS, policy.hash, now_s),
                )
                return
        if row[0] != policy.hash:
            raise PolicyError(
                f"{policy.source}: version {policy.version} was used on this gateway before "
                f"with other values (hash {row[0][:12]}, now {policy.hash[:12]}); bump "
                f"'version' (e.g. version = {policy.version + 1}) so every batch stays "
                "attributable to one policy"
            )


# -- the stage ---------------------------------------------------------------------------------


class Anonymiser:
    """Applies a `Policy` to groups of Readings.

    `state_path` is the accountant's SQLite file; it is required when any zone turns noise
    on (without it a restart would forget the day's spending) and, when given, also guards
    the policy version.  `rng` must offer `randrange`; the default is the operating
    system's CSPRNG (secrets.SystemRandom) — pass a seeded random.Random only in tests.
    `clock` gives Unix seconds (policy first-seen time; "today" in `epsilon_spent`).
    """

    def __init__(
        self,
        policy: Policy,
        state_path: str | Path | None = None,
        rng=None,
        clock: Callable[[], float] = time.time,
    ):
        self.policy = policy
        self.rng = rng if rng is not None else secrets.SystemRandom()
        self.clock = clock
        self.counts: Counter = Counter()  # "suppressed.<reason>", "noised"; in memory
        self.accountant = EpsilonAccountant(state_path) if state_path is not None else None
        if policy.uses_noise and self.accountant is None:
            raise PolicyError(
                f"{policy.source}: crowd noise is on, so the gateway needs a state file for "
                "its epsilon accountant (Anonymiser(state_path=...)); without one a restart "
                "would forget the day's spending"
            )
        if self.accountant is not None:
            self.accountant.check_policy(policy, clock())

    @property
    def policy_id(self) -> str:
        return self.policy.id

    @property
    def policy_hash(self) -> str:
        """SHA-256 of the canonical effective policy, 64 hex digits."""
        return self.policy.hash

    @property
    def policy_digest(self) -> bytes:
        """The same hash as 32 bytes (for provenance records)."""
        return self.policy.digest

    @property
    def policy_version(self) -> int:
        return self.policy.version

    def close(self) -> None:
        if self.accountant is not None:
            self.accountant.close()

    def epsilon_spent(self, node: str, day: int | None = None) -> float:
        """Epsilon `node` has spent on `day` (UTC days since 1970; default today), for
        health and audits; 0.0 when noise is off everywhere."""
        if self.accountant is None:
            return 0.0
        day = int(self.clock() // DAY_S) if day is None else day
        return float(self.accountant.spent(node, day))

    def apply(self, readings: list[Reading]) -> list[Reading]:
        out: list[Reading | None] = [None] * len(readings)
        noisy: list[int] = []
        requests = []
        for i, r in enumerate(readings):
            if r.status or r.kind == "air":  # device health, air: no data about people
                out[i] = r
                continue
            zp = self.policy.for_zone(r.zone)
            if r.kind == "crowd":
                res = zp.crowd_time_resolution_s
                if res and r.window_s < res:
                    out[i] = self._withhold(r, WINDOW_TOO_FINE, 0)  # see _withhold
                elif zp.noise_on and _has_counts(r.fields):
                    noisy.append(i)
                    requests.append(
                        (
                            r.node,
                            r.time_s // DAY_S,
                            zp.crowd_noise_epsilon,
                            zp.daily_epsilon_budget,
                        )
                    )
                else:
                    out[i] = self._exact_crowd(r, zp.crowd_min_count, res)
            elif r.kind == "noise":
                res = zp.noise_time_resolution_s
                if res and r.window_s < res:
                    out[i] = self._withhold(r, WINDOW_TOO_FINE, 0)
                else:
                    out[i] = _coarsen(r, r.fields, res)
            else:
                out[i] = r  # a kind without people data (none yet beside air)
        if noisy:
            # The spending is on disk before a single noisy value exists.
            grants = self.accountant.reserve(requests)
            for i, granted in zip(noisy, grants):
                r = readings[i]
                zp = self.policy.for_zone(r.zone)
                res = zp.crowd_time_resolution_s
                out[i] = (
                    self._noisy_crowd(r, zp, res)
                    if granted
                    else self._withhold(r, BUDGET_SPENT, res)
                )
        return out  # type: ignore[return-value]

    # -- per reading ---------------------------------------------------------------------------

    def _withhold(self, r: Reading, reason: int, res: int) -> Reading:
        # A reading whose window is finer than the resolution is withheld at its own time
        # (res 0): without values it says nothing about anyone, while at the coarse time
        # it would share one timestamp with its neighbours and overwrite them in the store.
        self.counts["suppressed." + SUPPRESSED_REASONS[reason]] += 1
        fields = {k: v for k, v in r.fields.items() if k in _HEALTH_FIELDS}
        fields[SUPPRESSED] = float(reason)
        return _coarsen(r, fields, res)

    def _exact_crowd(self, r: Reading, k: int, res: int) -> Reading:
        fields = r.fields
        bins = [fields[b] for b in BINS if b in fields]
        total = fields.get(COUNT, sum(bins))
        if 0 < total < k:
            return self._withhold(r, SMALL_COUNT, res)
        if any(0 < b < k for b in bins):
            self.counts["suppressed." + SUPPRESSED_REASONS[SMALL_RSSI_BIN]] += 1
            fields = {n: v for n, v in fields.items() if n not in BINS}
            fields[SUPPRESSED] = float(SMALL_RSSI_BIN)
        return _coarsen(r, fields, res)

    def _noisy_crowd(self, r: Reading, zp: ZonePolicy, res: int) -> Reading:
        self.counts["noised"] += 1
        fields = dict(r.fields)
        has_bins = any(b in fields for b in BINS)
        # A device is in the count once and in exactly one RSSI bin, so the count and the
        # histogram are each queries of sensitivity 1 (the bins are disjoint: parallel
        # composition).  Released together they split the release's epsilon.
        eps = zp.crowd_noise_epsilon / ((COUNT in fields) + has_bins)
        for name in (COUNT, *BINS):
            if name in fields:
                noisy = round(fields[name]) + two_sided_geometric(eps, self.rng)
                fields[name] = float(max(0, noisy))  # post-processing: costs no privacy
        total = fields.get(COUNT, sum(fields[b] for b in BINS if b in fields))
        if 0 < total < zp.crowd_min_count:
            return self._withhold(r, SMALL_COUNT, res)
        # The k rule applies to the noisy bins too (docs/privacy.md §3, §4.1): a small bin
        # withholds the whole histogram, as without noise.  Found by `dordt audit store`.
        if any(0 < fields[b] < zp.crowd_min_count for b in BINS if b in fields):
            self.counts["suppressed." + SUPPRESSED_REASONS[SMALL_RSSI_BIN]] += 1
            fields = {n: v for n, v in fields.items() if n not in BINS}
            fields[SUPPRESSED] = float(SMALL_RSSI_BIN)
        return _coarsen(r, fields, res)


def _has_counts(fields: Mapping[str, float]) -> bool:
    return COUNT in fields or any(b in fields for b in BINS)


def _coarsen(r: Reading, fields: dict[str, float], res: int) -> Reading:
    """Floor the timestamp to a multiple of `res`, round the window up to one."""
    if not res:
        if fields is r.fields:
            return r
        time_s, window_s = r.time_s, r.window_s
    else:
        time_s, window_s = r.time_s - r.time_s % res, -(-r.window_s // res) * res
    # Reading(...) rather than dataclasses.replace: a third of the stage's time otherwise.
    return Reading(
        r.node,
        r.kind,
        r.zone,
        r.site,
        r.counter,
        time_s,
        window_s,
        fields,
        r.status,
        r.time_estimated,
        r.head if fields is r.fields else None,  # the line head, when the fields are the same
    )
