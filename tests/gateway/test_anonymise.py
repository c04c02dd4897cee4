"""anonymise: the per-zone privacy policy — small-count suppression, exact geometric noise
under a durable per-node per-day epsilon budget, time coarsening — and the policy file's
validation and hash."""

from __future__ import annotations

import copy
import math
import random
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anonymise import (
    BINS,
    BUDGET_SPENT,
    COUNT,
    DAY_S,
    SMALL_COUNT,
    SMALL_RSSI_BIN,
    SUPPRESSED,
    WINDOW_TOO_FINE,
    Anonymiser,
    Policy,
    PolicyError,
    default_policy_path,
    load_policy,
    two_sided_geometric,
)
from gateway.model import Envelope, Reading
from gateway.verify import Verifier
from simulators.fleet import SimFleet

T0 = 1_790_000_000  # 20 s past a whole minute: flooring shows
ROOT = Path(__file__).resolve().parents[2]

DEFAULTS = {
    "crowd_min_count": 5,
    "crowd_noise_epsilon": 0.0,
    "daily_epsilon_budget": 0.0,
    "crowd_time_resolution_s": 0,
    "noise_time_resolution_s": 0,
}


def policy(version=1, zones=None, **defaults) -> Policy:
    doc = {"version": version, "defaults": {**DEFAULTS, **defaults}}
    if zones is not None:
        doc["zones"] = zones
    return Policy.from_dict(doc)


def crowd(
    count=None, bins=None, *, t=T0, window=60, zone="spoorzone", node="0c010013", faults=None
) -> Reading:
    fields = {}
    if count is not None:
        fields[COUNT] = float(count)
    for name, value in zip(BINS, bins or ()):
        fields[name] = float(value)
    if faults is not None:
        fields["crowd_faults"] = float(faults)
    return Reading(node, "crowd", zone, "spz-01", 1, t, window, fields)


def noise_reading(t=T0, window=60, zone="spoorzone") -> Reading:
    fields = {"laeq_db": 61.3, "lamax_db": 70.0, "noise_faults": 0.0}
    return Reading("0c010012", "noise", zone, "spz-01", 1, t, window, fields)


def status_reading(t=T0) -> Reading:
    return Reading(
        "0c010013", "crowd", "spoorzone", "spz-01", 2, t, 60, {"uptime_s": 123.0}, status=True
    )


# -- the shipped policy --------------------------------------------------------------------------


def test_the_shipped_policy_loads_and_says_what_the_docs_say():
    shipped = load_policy(default_policy_path())
    assert default_policy_path() == ROOT / "gateway" / "policy.toml"
    assert shipped.version >= 1
    d = shipped.defaults
    assert (
        d.crowd_min_count,
        d.crowd_noise_epsilon,
        d.crowd_time_resolution_s,
        d.noise_time_resolution_s,
    ) == (5, 0, 60, 0)
    assert not shipped.uses_noise
    version, short = shipped.id.split("/")
    assert int(version) == shipped.version and short == shipped.hash[:12]
    assert len(shipped.digest) == 32 and shipped.digest.hex() == shipped.hash
    anonymiser = Anonymiser(shipped)  # noise off: no state file needed
    assert anonymiser.policy_id == shipped.id and anonymiser.policy_hash == shipped.hash
    assert anonymiser.policy_digest == shipped.digest and anonymiser.policy_version == 1


def test_every_option_is_documented_in_the_shipped_file_and_in_privacy_md():
    text = default_policy_path().read_text()
    doc = (ROOT / "docs" / "privacy.md").read_text()
    for key in DEFAULTS:
        assert f"\n{key} = " in text, key
        assert key in doc, key


# -- small-count suppression ---------------------------------------------------------------------


@given(count=st.integers(0, 300), k=st.integers(0, 50))
def test_a_count_is_withheld_exactly_when_it_is_between_1_and_k_minus_1(count, k):
    [out] = Anonymiser(policy(crowd_min_count=k)).apply([crowd(count)])
    if 0 < count < k:
        assert COUNT not in out.fields and out.fields[SUPPRESSED] == SMALL_COUNT
    else:
        assert out.fields[COUNT] == count and SUPPRESSED not in out.fields


def test_withheld_is_distinguishable_from_zero_and_takes_the_bins_along():
    a = Anonymiser(policy(crowd_min_count=5))
    zero, three, five = a.apply(
        [crowd(0, [0, 0, 0, 0, 0]), crowd(3, [1, 0, 2, 0, 0], faults=4), crowd(5, [0, 0, 5, 0, 0])]
    )
    assert zero.fields == {COUNT: 0.0, **{b: 0.0 for b in BINS}}
    assert three.fields == {SUPPRESSED: SMALL_COUNT, "crowd_faults": 4.0}  # faults stay
    assert five.fields[COUNT] == 5.0 and SUPPRESSED not in five.fields
    assert a.counts == Counter({"suppressed.small_count": 1})


def test_a_small_rssi_bin_withholds_all_bins_but_not_the_count():
    [out] = Anonymiser(policy(crowd_min_count=5)).apply([crowd(20, [0, 6, 12, 2, 0])])
    # bin 3 alone would be 20 - 6 - 12 = 2: withholding only it would not hide it
    assert out.fields == {COUNT: 20.0, SUPPRESSED: SMALL_RSSI_BIN}


def test_bins_without_a_count_are_judged_by_their_sum():
    a = Anonymiser(policy(crowd_min_count=5))
    small, big = a.apply([crowd(None, [1, 1, 0, 0, 0]), crowd(None, [0, 5, 6, 0, 0])])
    assert small.fields == {SUPPRESSED: SMALL_COUNT}
    assert big.fields == {b: float(v) for b, v in zip(BINS, [0, 5, 6, 0, 0])}


# -- untouched readings, purity -----------------------------------------------------------------


def test_status_and_air_readings_pass_unchanged():
    a = Anonymiser(policy(crowd_time_resolution_s=300, noise_time_resolution_s=300))
    status = status_reading()
    air = Reading("0c010011", "air", "spoorzone", "spz-01", 1, T0 + 7, 10, {"pm25_ugm3": 3.0})
    assert a.apply([status, air]) == [status, air]
    assert a.apply([status])[0] is status


readings_st = st.lists(
    st.one_of(
        st.builds(
            lambda c, b, w, dt: crowd(c, b, window=w, t=T0 + dt),
            st.integers(0, 40),
            st.lists(st.integers(0, 20), max_size=5),
            st.sampled_from([10, 60, 300]),
            st.integers(0, 3 * DAY_S),
        ),
        st.builds(
            lambda w, dt: noise_reading(T0 + dt, w),
            st.sampled_from([1, 60]),
            st.integers(0, DAY_S),
        ),
        st.just(status_reading()),
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(readings=readings_st, seed=st.integers(0, 2**32))
def test_apply_never_mutates_keeps_order_and_is_deterministic_for_a_seed(
    readings, seed, tmp_path_factory
):
    p = policy(crowd_noise_epsilon=0.5, daily_epsilon_budget=4.0, crowd_time_resolution_s=60)
    before = copy.deepcopy(readings)
    runs = []
    for _ in range(2):
        state = tmp_path_factory.mktemp("acct") / "privacy.sqlite"
        a = Anonymiser(p, state, rng=random.Random(seed))
        runs.append(a.apply(readings))
        a.close()
    assert readings == before
    assert runs[0] == runs[1]
    assert [(r.node, r.counter, r.kind) for r in runs[0]] == [
        (r.node, r.counter, r.kind) for r in readings
    ]


# -- time coarsening -----------------------------------------------------------------------------


@given(
    t=st.integers(0, 2**31),
    res=st.sampled_from([10, 60, 300, 900, 3600]),
    extra=st.integers(0, 4000),
)
def test_coarsening_floors_the_time_and_rounds_the_window_up(t, res, extra):
    a = Anonymiser(
        policy(crowd_min_count=0, crowd_time_resolution_s=res, noise_time_resolution_s=res)
    )
    window = res + extra
    for r in (crowd(12, t=t, window=window), noise_reading(t, window)):
        [out] = a.apply([r])
        assert out.time_s % res == 0 and t - res < out.time_s <= t
        assert out.window_s % res == 0 and window <= out.window_s < window + res
        assert out.fields == r.fields  # values untouched
        # the coarse interval starts no later than the true one
        assert out.time_s - out.window_s <= t - window


def test_coarsening_is_per_kind_and_per_zone():
    p = policy(
        crowd_time_resolution_s=60,
        zones={"maasterras": {"crowd_time_resolution_s": 300, "noise_time_resolution_s": 60}},
    )
    a = Anonymiser(p)
    outs = a.apply(
        [
            crowd(9, t=T0 + 250, window=300),
            noise_reading(T0 + 250),
            crowd(9, t=T0 + 250, window=300, zone="maasterras"),
            noise_reading(T0 + 250, zone="maasterras"),
        ]
    )
    # T0 is 200 s into a five-minute step and 20 s into a minute
    assert [r.time_s - T0 for r in outs] == [220, 250, 100, 220]
    assert [r.window_s for r in outs] == [300, 60, 300, 60]


def test_a_window_finer_than_the_resolution_is_withheld_at_its_own_time():
    a = Anonymiser(policy(crowd_time_resolution_s=60, noise_time_resolution_s=60))
    fine = [crowd(30, t=T0 + s, window=10, faults=1) for s in range(0, 60, 10)]
    outs = a.apply([*fine, noise_reading(T0, 1)])
    # Coarsened, six 10 s windows of one minute would share one timestamp and overwrite
    # each other in the store.  Withheld, they keep their own times: no values, no leak.
    assert [(r.time_s, r.window_s) for r in outs[:6]] == [(r.time_s, 10) for r in fine]
    for r in outs[:6]:
        assert r.fields == {SUPPRESSED: WINDOW_TOO_FINE, "crowd_faults": 1.0}
    assert outs[6].fields == {SUPPRESSED: WINDOW_TOO_FINE, "noise_faults": 0.0}
    assert a.counts == Counter({"suppressed.window_too_fine": 7})


# -- exact geometric noise -----------------------------------------------------------------------


@pytest.mark.parametrize("eps", [Fraction(1), Fraction(1, 2), Fraction(3, 10)])
def test_geometric_noise_has_the_right_distribution(eps):
    n = 100_000
    rng = random.Random(20261128)
    xs = [two_sided_geometric(eps, rng) for _ in range(n)]
    a = math.exp(-eps)
    var = 2 * a / (1 - a) ** 2
    mean = sum(xs) / n
    sample_var = sum(x * x for x in xs) / n - mean**2
    assert abs(mean) < 5 * math.sqrt(var / n)
    # the variance of the sample variance is about (m4 - var^2) / n; m4 <= 12 var^2 here
    assert abs(sample_var - var) < 5 * math.sqrt(12 * var * var / n)
    counts = Counter(xs)
    # neighbours differ by a factor exp(epsilon): the property the privacy proof rests on
    for z in range(0, 3):
        for lo, hi in ((z, z + 1), (-z, -z - 1)):
            ratio = counts[lo] / counts[hi]
            p_hi = (1 - a) / (1 + a) * a ** abs(hi)
            rel_err = math.sqrt(1 / (n * p_hi) + 1 / (n * p_hi / a))  # Poisson errors
            assert abs(math.log(ratio) - float(eps)) < 5 * rel_err, (lo, hi, ratio)
    # and the whole shape: chi-square against the exact pmf, cells with >= 20 expected
    chi2, cells = 0.0, 0
    for z in range(-60, 61):
        expected = n * (1 - a) / (1 + a) * a ** abs(z)
        if expected >= 20:
            chi2 += (counts[z] - expected) ** 2 / expected
            cells += 1
    assert chi2 < cells + 6 * math.sqrt(2 * cells)


class IntegersOnly:
    """An rng with randrange and nothing else: the sampler never needs a float."""

    def __init__(self, seed):
        self._r = random.Random(seed)
        self.calls = 0

    def randrange(self, n):
        self.calls += 1
        return self._r.randrange(n)


@given(num=st.integers(1, 50), den=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_the_sampler_uses_uniform_integers_only(num, den, seed):
    rng = IntegersOnly(seed)
    assert isinstance(two_sided_geometric(Fraction(num, den), rng), int)
    assert rng.calls > 0


# -- noise, the budget and its accountant --------------------------------------------------------

NOISY = {"crowd_noise_epsilon": 0.25, "daily_epsilon_budget": 1.0}


def test_noise_needs_a_state_file(tmp_path):
    with pytest.raises(PolicyError, match="state file"):
        Anonymiser(policy(**NOISY))
    Anonymiser(policy(**NOISY), tmp_path / "privacy.sqlite").close()


def test_the_budget_stops_releases_for_the_day_and_survives_a_restart(tmp_path):
    state = tmp_path / "privacy.sqlite"
    p = policy(**NOISY)
    a = Anonymiser(p, state, rng=random.Random(1))
    outs = a.apply([crowd(200, t=T0 + 60 * i) for i in range(6)])
    assert [SUPPRESSED in r.fields for r in outs] == [False] * 4 + [True] * 2
    assert all(r.fields[SUPPRESSED] == BUDGET_SPENT for r in outs[4:])
    assert all(COUNT not in r.fields for r in outs[4:])  # never released without noise
    day = T0 // DAY_S
    assert a.epsilon_spent("0c010013", day) == 1.0
    a.close()

    again = Anonymiser(p, state, rng=random.Random(2))  # a restarted gateway
    [same_day, other_node, next_day] = again.apply(
        [
            crowd(200, t=T0 + 3600),
            crowd(200, t=T0 + 3600, node="0c020013"),
            crowd(200, t=(day + 1) * DAY_S + 5),
        ]
    )
    assert same_day.fields == {SUPPRESSED: BUDGET_SPENT}
    assert SUPPRESSED not in other_node.fields and SUPPRESSED not in next_day.fields
    assert again.counts == Counter({"suppressed.budget_spent": 1, "noised": 2})
    again.close()


def test_spending_is_durable_before_any_noise_is_drawn(tmp_path):
    state = tmp_path / "privacy.sqlite"

    class Watching(IntegersOnly):
        seen = []

        def randrange(self, n):
            if not self.seen:  # the first draw: the spending must already be committed
                with sqlite3.connect(state) as db:
                    self.seen.append(db.execute("SELECT spent FROM epsilon_spent").fetchall())
            return super().randrange(n)

    a = Anonymiser(policy(**NOISY), state, rng=Watching(3))
    a.apply([crowd(50, [10, 10, 10, 10, 10])])
    assert Watching.seen == [[("1/4",)]]


def test_a_crash_while_drawing_noise_keeps_the_spending(tmp_path):
    # SQLite's testing culture: a durability claim is a process killed mid-way.
    state = tmp_path / "privacy.sqlite"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from gateway.anonymise import Anonymiser, Policy
        from tests.gateway.test_anonymise import crowd, policy, NOISY

        class Dies:
            def randrange(self, n):
                os._exit(9)  # as abrupt as SIGKILL: no cleanup, no commit

        Anonymiser(policy(**NOISY), {str(state)!r}, rng=Dies()).apply([crowd(80)])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert done.returncode == 9
    after = Anonymiser(policy(**NOISY), state)
    assert after.epsilon_spent("0c010013", T0 // DAY_S) == 0.25  # over-counted, never under
    after.close()


def test_a_failed_accountant_releases_nothing(tmp_path, monkeypatch):
    rng = IntegersOnly(4)
    a = Anonymiser(policy(**NOISY), tmp_path / "privacy.sqlite", rng=rng)

    def disk_full(requests):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(a.accountant, "reserve", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        a.apply([crowd(80)])
    assert rng.calls == 0


def test_noisy_counts_are_whole_non_negative_and_judged_after_the_noise(tmp_path):
    # k applies to the noisy value (post-processing): a true 3 is sometimes released, a
    # true 0 sometimes withheld — judging the true value would itself leak it.
    p = policy(crowd_noise_epsilon=0.5, daily_epsilon_budget=10_000.0)
    a = Anonymiser(p, tmp_path / "privacy.sqlite", rng=random.Random(9))
    outs = a.apply([crowd(c, node=f"{i:08x}") for i in range(600) for c in (0, 3)])
    released = [r.fields[COUNT] for r in outs if COUNT in r.fields]
    assert all(v == int(v) and (v == 0 or v >= 5) for v in released)
    assert any(r.fields[COUNT] >= 5 for r in outs[1::2] if COUNT in r.fields)
    assert any(r.fields.get(SUPPRESSED) == SMALL_COUNT for r in outs[0::2])


def test_with_noise_a_small_noisy_rssi_bin_withholds_all_bins(tmp_path):
    # docs/privacy.md §3/§4.1: the k rule applies to the noisy values, bins included
    p = policy(crowd_noise_epsilon=0.5, daily_epsilon_budget=10_000.0)
    a = Anonymiser(p, tmp_path / "privacy.sqlite", rng=random.Random(3))
    outs = a.apply([crowd(40, [2, 3, 30, 3, 2], node=f"{i:08x}") for i in range(300)])
    for r in outs:
        bins = [r.fields[b] for b in BINS if b in r.fields]
        assert not any(0 < b < 5 for b in bins), r.fields
    assert any(r.fields.get(SUPPRESSED) == SMALL_RSSI_BIN and COUNT in r.fields for r in outs)


def test_count_and_histogram_split_the_epsilon_of_a_release(tmp_path):
    p = policy(crowd_min_count=0, crowd_noise_epsilon=2.0, daily_epsilon_budget=2.0)
    a = Anonymiser(p, tmp_path / "privacy.sqlite", rng=random.Random(11))
    n = 4000
    with_bins = a.apply([crowd(1000, [200] * 5, node=f"{i:08x}") for i in range(n)])
    alone = a.apply([crowd(1000, node=f"{i + n:08x}") for i in range(n)])

    def variance(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    def expected(eps):
        q = math.exp(-eps)
        return 2 * q / (1 - q) ** 2

    v_split = variance([r.fields[COUNT] for r in with_bins])
    v_bin = variance([r.fields[BINS[0]] for r in with_bins])
    v_alone = variance([r.fields[COUNT] for r in alone])
    assert abs(v_split / expected(1.0) - 1) < 0.15  # epsilon 2 shared: 1 each
    assert abs(v_bin / expected(1.0) - 1) < 0.15
    assert abs(v_alone / expected(2.0) - 1) < 0.2  # no histogram: the whole epsilon
    assert a.epsilon_spent("00000000", T0 // DAY_S) == 2.0


def test_a_policy_version_cannot_change_its_values_on_a_gateway(tmp_path):
    state = tmp_path / "privacy.sqlite"
    Anonymiser(policy(version=3, crowd_min_count=5), state).close()
    Anonymiser(policy(version=3, crowd_min_count=5), state).close()  # same values: fine
    with pytest.raises(
        PolicyError,
        match=r"version 3 was used .* bump 'version' "
        r"\(e.g. version = 4\)",
    ):
        Anonymiser(policy(version=3, crowd_min_count=10), state)
    Anonymiser(policy(version=4, crowd_min_count=10), state).close()


# -- the whole stage on real frames ---------------------------------------------------------------


def test_sim_fleet_readings_leave_with_no_small_counts_and_coarse_times():
    fleet = SimFleet(seed=5)
    verifier = Verifier(fleet.keyring(), clock=lambda: T0)
    readings = []
    for i in range(30):  # a quiet night: small counts happen
        t = T0 - 6 * 3600 + 60 * i
        for topic, frame in fleet.tick(t, window_s=60):
            readings.append(verifier.check(Envelope("mqtt", topic, frame, t)))
    assert all(isinstance(r, Reading) for r in readings)
    outs = Anonymiser(load_policy(default_policy_path())).apply(readings)
    assert len(outs) == len(readings)
    crowd_outs = [r for r in outs if r.kind == "crowd" and not r.status]
    assert crowd_outs and all(r.time_s % 60 == 0 for r in crowd_outs)
    for r in crowd_outs:
        c = r.fields.get(COUNT)
        assert c is None or c == 0 or c >= 5
        assert (c is None) == (r.fields.get(SUPPRESSED) in (SMALL_COUNT, BUDGET_SPENT))


# -- validation ----------------------------------------------------------------------------------


def raw(**changes):
    doc = {"version": 1, "defaults": dict(DEFAULTS)}
    for key, value in changes.items():
        if key == "zones":
            doc["zones"] = value
        elif key in ("version", "extra"):
            doc[key] = value
        else:
            doc["defaults"][key] = value
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        ({**raw(), "zone": {}}, r"'zone' is not a valid option\. Did you mean 'zones'\?"),
        (
            {"version": 1, "defaults": {**DEFAULTS, "crowd_min_cont": 3}},
            r"\[defaults\] 'crowd_min_cont' is not a valid option\. Did you mean "
            r"'crowd_min_count'\?",
        ),
        (
            raw(zones={"maasterras": {"crowd_noise_epsilom": 0.1}}),
            r"\[zones\.maasterras\] 'crowd_noise_epsilom' .* Did you mean 'crowd_noise_epsilon'",
        ),
        (
            raw(zones={"maasterras": {"time_resolution_s": 60}}),
            r"Did you mean '(crowd|noise)_time_resolution_s'",
        ),
        (
            raw(crowd_min_count="5"),
            r"\[defaults\] crowd_min_count: expected an integer, got '5' \(a string\); write "
            r"e\.g\. crowd_min_count = 5",
        ),
        (raw(crowd_min_count=True), r"crowd_min_count: expected an integer, got True"),
        (raw(crowd_min_count=5.0), r"crowd_min_count: expected an integer, got 5\.0"),
        (raw(crowd_min_count=-1), r"crowd_min_count: must be 0\.\.65535"),
        (
            raw(crowd_noise_epsilon=-0.5),
            r"crowd_noise_epsilon: must be a finite number >= 0, got -0\.5; 0 turns noise off",
        ),
        (raw(crowd_noise_epsilon=float("nan")), r"crowd_noise_epsilon: must be a finite"),
        (raw(daily_epsilon_budget=float("inf")), r"daily_epsilon_budget: must be a finite"),
        (raw(crowd_noise_epsilon="0.1"), r"crowd_noise_epsilon: expected a number >= 0"),
        (
            raw(crowd_noise_epsilon=1e-9, daily_epsilon_budget=1.0),
            r"crowd_noise_epsilon: 1e-09 is below 1e-06: the noise would dwarf any count",
        ),
        (
            raw(crowd_time_resolution_s=7),
            r"crowd_time_resolution_s: 7 does not divide a day .* use e\.g\. 6 or 8",
        ),
        (raw(noise_time_resolution_s=-60), r"noise_time_resolution_s: must be 0\.\.86400"),
        (raw(crowd_time_resolution_s=172800), r"must be 0\.\.86400 seconds"),
        (
            raw(crowd_noise_epsilon=0.5, daily_epsilon_budget=0.2),
            r"crowd_noise_epsilon = 0\.5 .* needs daily_epsilon_budget >= 0\.5, but it is 0\.2",
        ),
        (
            raw(zones={"maasterras": {"crowd_noise_epsilon": 0.1}}),
            r"\[zones\.maasterras\]: crowd_noise_epsilon = 0\.1 \(from \[zones\.maasterras\]\) "
            r"needs daily_epsilon_budget >= 0\.1, but it is 0\.0 \(from \[defaults\]\).*; set "
            r"daily_epsilon_budget in \[zones\.maasterras\]",
        ),
        (raw(zones={"Maasterras": {}}), r"\[zones\.Maasterras\]: a zone is named by its keyring"),
        (raw(zones={"maasterras": 5}), r"zones\.maasterras: expected a table of options"),
        ({"defaults": dict(DEFAULTS)}, r"'version' is required"),
        (raw(version=0), r"version: expected an integer >= 1, got 0"),
        (raw(version="2"), r"version: expected an integer >= 1, got '2' \(a string\)"),
        ({"version": 1}, r"a \[defaults\] table with every option is required"),
        (
            {
                "version": 1,
                "defaults": {k: v for k, v in DEFAULTS.items() if k != "crowd_min_count"},
            },
            r"\[defaults\] 'crowd_min_count' is required",
        ),
    ],
)
def test_policy_errors_name_the_key_and_the_fix(doc, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(doc, "policy.toml")


def test_policy_errors_are_value_errors_for_the_cli():
    assert issubclass(PolicyError, ValueError)


def test_zone_names_are_checked_against_the_known_zones(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        default_policy_path().read_text() + "\n[zones.maasteras]\ncrowd_min_count = 10\n"
    )
    load_policy(path)  # without a list of zones, any well-formed name is accepted
    with pytest.raises(
        PolicyError,
        match=r"\[zones\.maasteras\] is not a known zone\. Did "
        r"you mean 'maasterras'\?",
    ):
        load_policy(path, known_zones=["spoorzone", "maasterras", "spuiboulevard"])


def test_unreadable_policy_files_name_the_path(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[defaults\n")
    with pytest.raises(PolicyError, match=str(bad)):
        load_policy(bad)


# -- the policy hash -----------------------------------------------------------------------------

SHIPPED = default_policy_path().read_text()


def test_the_hash_ignores_comments_layout_and_number_spelling(tmp_path):
    base = load_policy(default_policy_path())
    stripped = "\n".join(line.split("#")[0].rstrip() for line in SHIPPED.splitlines())
    respelled = (
        stripped.replace("crowd_noise_epsilon = 0.0", "crowd_noise_epsilon=0")
        .replace("\n\n", "\n")
        .replace("daily_epsilon_budget = 0.0", "daily_epsilon_budget = 0.000")
    )
    reordered = "\n".join(
        reversed([ln for ln in respelled.splitlines() if "=" in ln and "version" not in ln])
    )
    reordered = "version = 1\n[defaults]\n" + reordered
    for i, text in enumerate((stripped, respelled, reordered)):
        path = tmp_path / f"p{i}.toml"
        path.write_text(text)
        assert load_policy(path).hash == base.hash, text


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"crowd_min_count": 6},
        {"crowd_noise_epsilon": 0.5, "daily_epsilon_budget": 1.0},
        {"daily_epsilon_budget": 1.0},
        {"crowd_time_resolution_s": 300},
        {"noise_time_resolution_s": 60},
        {"zones": {"maasterras": {"crowd_min_count": 10}}},
        {"zones": {"maasterras": {"noise_time_resolution_s": 1}}},
    ],
)
def test_the_hash_changes_with_any_value_that_changes_what_the_gateway_does(change):
    assert Policy.from_dict(raw(**change)).hash != Policy.from_dict(raw()).hash


def test_the_hash_is_of_the_effective_policy():
    base = Policy.from_dict(raw()).hash
    # a zone whose overrides equal the defaults does nothing: same policy, same hash
    assert Policy.from_dict(raw(zones={"maasterras": {"crowd_min_count": 5}})).hash == base
    assert Policy.from_dict(raw(zones={"maasterras": {}})).hash == base
    # 0.1 and 0.10 are one number
    a = Policy.from_dict(raw(crowd_noise_epsilon=0.1, daily_epsilon_budget=1))
    b = Policy.from_dict(raw(crowd_noise_epsilon=0.10, daily_epsilon_budget=1.0))
    assert a.hash == b.hash and a.canonical_json == b.canonical_json
    assert a.defaults.crowd_noise_epsilon == Fraction(1, 10)


def test_the_line_head_verify_made_travels_only_with_unchanged_fields():
    from gateway.forward import line_head

    k = 5
    released = crowd(40)
    released.window_s = 60
    released.time_s = T0 + 37  # coarsened to the minute: a new Reading, the same fields
    released.head = line_head(released)
    withheld = crowd(3)
    withheld.window_s = 60
    withheld.head = line_head(withheld)  # what verify would have made; must not survive
    out = Anonymiser(policy(crowd_min_count=k, crowd_time_resolution_s=60)).apply(
        [released, withheld])
    assert out[0].time_s == T0 + 37 - (T0 + 37) % 60 and out[0].head == released.head
    assert out[1].head is None and "suppressed" in out[1].fields
    assert "count" not in line_head(out[1])
