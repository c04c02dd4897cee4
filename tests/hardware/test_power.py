"""Power budgets and summer-day storage sizing."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from hardware import power, sites


def test_sun_times_for_dordrecht_match_the_almanac():
    site = sites.find_site("spz-01")
    rise, sets = power.sun_times_utc(site.lat, site.lon, dt.date(2026, 6, 21))
    # Dordrecht, 21 June: sunrise 05:21, sunset 22:04 CEST (UTC+2), within a couple of minutes
    assert abs((rise - rise.replace(hour=3, minute=21, second=0)).total_seconds()) < 150
    assert abs((sets - sets.replace(hour=20, minute=4, second=0)).total_seconds()) < 150
    rise_w, sets_w = power.sun_times_utc(site.lat, site.lon, dt.date(2026, 12, 21))
    assert (sets_w - rise_w) < (sets - rise)  # winter days are shorter


def test_budgets_follow_the_duty_cycle_and_the_kind():
    air_60 = power.budget("air", interval_s=60)
    air_300 = power.budget("air", interval_s=300)
    assert air_300.average_w < air_60.average_w  # the PM fan runs a smaller share of the time
    noise = power.budget("noise")
    crowd = power.budget("crowd")
    assert crowd.average_w > noise.average_w  # BLE scanning costs more than DSP
    assert 0.1 < noise.average_w < 1.0  # a few hundred mW, as a board like this draws


def test_storage_scales_with_the_hours_without_supply():
    site = sites.find_site("mst-02")
    b = power.budget("noise")
    summer = power.storage_for_day(b, site, dt.date(2026, 6, 21))
    spring = power.storage_for_day(b, site, dt.date(2026, 3, 21))
    assert summer.supply_off_h > 16 and spring.supply_off_h < 13
    assert summer.battery_wh > spring.battery_wh
    assert summer.energy_wh == pytest.approx(b.average_w * summer.supply_off_h * 1.2)
    assert summer.battery_ah == pytest.approx(summer.battery_wh / 3.2)
    assert any("NOAA" in a for a in summer.assumptions)


def test_cli_answers_with_a_battery_size_and_its_assumptions():
    r = subprocess.run([sys.executable, "-m", "dordt.cli", "hardware", "power", "--kind",
                        "noise", "--site", "spz-01", "--date", "2026-06-21"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Ah LiFePO4" in r.stdout and "assumptions:" in r.stdout
    assert "sun rises 03:21" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "dordt.cli", "hardware", "power", "--kind",
                          "noise", "--site", "spz-1"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Did you mean 'spz-01'?" in bad.stderr
