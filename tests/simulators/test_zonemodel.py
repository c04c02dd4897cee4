"""Zone models: the calendar, the daily rhythm of each zone, events, and the crowd's ground
truth as the frames report it."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from firmware import protocol
from simulators.framegen import FrameGenerator
from simulators.zonemodel import (
    ScenarioError,
    ZoneModel,
    day_type,
    dutch_holidays,
    easter,
    kings_day,
    load_scenario,
    local_day_and_hour,
    local_to_utc,
    utc_offset_s,
)

WEDNESDAY = dt.date(2026, 3, 11)
SATURDAY = dt.date(2026, 3, 14)
SUNDAY = dt.date(2026, 3, 15)


@pytest.fixture(scope="module")
def model():
    return ZoneModel(seed=1)


def mean_phones(model, site, day, hour, minutes=30):
    """Mean ground truth over `minutes` of 10 s windows from hour:00."""
    t0 = local_to_utc(day, hour)
    return statistics.mean(model.phones_present(site, t0 + 10 * k) for k in range(minutes * 6))


def test_calendar_knows_dutch_holidays_and_summer_time():
    assert easter(2026) == dt.date(2026, 4, 5) and easter(2025) == dt.date(2025, 4, 20)
    assert kings_day(2025) == dt.date(2025, 4, 26)  # the 27th was a Sunday
    assert kings_day(2026) == dt.date(2026, 4, 27)
    days = dutch_holidays(2026)
    assert days[dt.date(2026, 5, 14)] == "Hemelvaartsdag"
    assert days[dt.date(2026, 5, 25)] == "Tweede Pinksterdag"
    assert dt.date(2025, 5, 5) in dutch_holidays(2025)  # Liberation Day, a lustrum year
    assert dt.date(2026, 5, 5) not in days
    assert [day_type(d) for d in (WEDNESDAY, SATURDAY, SUNDAY, dt.date(2026, 12, 25))] == [
        "workday", "saturday", "sunday", "holiday"]
    switch = int(dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC).timestamp())
    assert utc_offset_s(switch - 1) == 3600 and utc_offset_s(switch) == 7200
    assert local_day_and_hour(local_to_utc(dt.date(2026, 7, 1), 8.5)) == (
        dt.date(2026, 7, 1), 8.5)


def test_spoorzone_has_commuter_peaks_on_workdays_only(model):
    rush = mean_phones(model, "spz-01", WEDNESDAY, 8)
    night = mean_phones(model, "spz-01", WEDNESDAY, 3)
    evening_rush = mean_phones(model, "spz-01", WEDNESDAY, 17.25)
    midday = mean_phones(model, "spz-01", WEDNESDAY, 13)
    weekend_morning = mean_phones(model, "spz-01", SUNDAY, 8)
    assert rush > 10 * night
    assert rush > 1.5 * midday and evening_rush > 1.5 * midday
    assert rush > 3 * weekend_morning


def test_maasterras_is_busiest_on_weekend_evenings(model):
    saturday_evening = mean_phones(model, "mst-01", SATURDAY, 20)
    weekday_morning = mean_phones(model, "mst-01", WEDNESDAY, 10)
    weekday_evening = mean_phones(model, "mst-01", WEDNESDAY, 20)
    assert saturday_evening > 3 * weekday_morning
    assert saturday_evening > 1.2 * weekday_evening


def test_kings_day_fills_the_boulevard(model):
    kings = mean_phones(model, "spb-01", dt.date(2026, 4, 27), 14)
    monday_before = mean_phones(model, "spb-01", dt.date(2026, 4, 20), 14)
    assert kings > 2 * monday_before
    assert "kingsday" in model.zone_state("spuiboulevard", local_to_utc(
        dt.date(2026, 4, 27), 14)).events


def test_new_year_fireworks_spike_pm25(model):
    def pm25(day, hour):
        return model.site_state("spb-02", local_to_utc(day, hour)).pm25_ugm3

    before = pm25(dt.date(2025, 12, 31), 12)
    peak = max(pm25(dt.date(2026, 1, 1), h / 4) for h in range(0, 8))
    after = pm25(dt.date(2026, 1, 1), 14)
    assert peak > 100 and peak > 5 * before
    assert after < peak / 5  # the smoke has cleared by the afternoon
    noise = model.site_state("mst-01", local_to_utc(dt.date(2026, 1, 1), 0.1))
    assert noise.lamax_db > 85  # bangs


def test_trains_pass_the_spoorzone_sites_on_the_timetable(model):
    # the 08:01 train passes within the window ending at 08:01:20
    passing = model.site_state("spz-01", local_to_utc(WEDNESDAY, 8 + 1 / 60 + 20 / 3600))
    quiet = model.site_state("spz-01", local_to_utc(WEDNESDAY, 8 + 5 / 60))
    assert model.zone_state("spoorzone", local_to_utc(WEDNESDAY, 8 + 1 / 60 + 20 / 3600)
                            ).train_frac == 1.0
    assert passing.lamax_db >= 84 and passing.laeq_db > quiet.laeq_db + 10
    assert quiet.la90_db <= quiet.la50_db <= quiet.la10_db <= quiet.lamax_db


def test_ground_truth_is_deterministic_and_seeded():
    t = local_to_utc(WEDNESDAY, 12)
    models = (ZoneModel(seed=4), ZoneModel(seed=4), ZoneModel(seed=5))
    a, b, c = ([m.phones_present("mst-02", t + 10 * k) for k in range(50)] for m in models)
    assert a == b and a != c


def test_crowd_frames_report_the_ground_truth_as_a_sensor_would():
    gen = FrameGenerator(seed=2, cadence_s=10, status_every=0)
    crowd = [n for n in gen.nodes if n.placement.kind == "crowd"]
    ratios = []
    for t in gen.window_ends(local_to_utc(SATURDAY, 13), local_to_utc(SATURDAY, 14)):
        for k, frame in gen.frames(t):
            node = gen.nodes[k]
            if node in crowd:
                counted = dict(protocol.decode(frame).metrics)[0x60]
                truth = gen.model.phones_present(node.placement.site, t, 10)
                ratios.append(counted / truth)
                bins = [dict(protocol.decode(frame).metrics)[0x61 + i] for i in range(5)]
                assert sum(bins) == counted
    assert 0.85 < statistics.mean(ratios) < 0.99  # the sensor hears most phones, not all
    assert statistics.pstdev(ratios) < 0.08


def test_a_broken_scenario_names_the_key(tmp_path):
    bad = tmp_path / "events.toml"
    text = load_scenario().path
    bad.write_text(open(text).read().replace('yearly = "12-31"', 'yearly = "13-31"'))
    with pytest.raises(ScenarioError, match=r"events\[0\] \(new-year\)\.yearly"):
        load_scenario(bad)
    bad.write_text("[traffic]\nworkday = [1]\n")
    with pytest.raises(ScenarioError, match="traffic.workday must be 24 numbers"):
        load_scenario(bad)
