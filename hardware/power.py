"""Power budgets per node kind and duty cycle, and the storage a node needs to run through
a summer day on a lamppost that has power only at night.

In:  the hardware profiles (boards, kits, power.toml), a node kind, a site (for its sun
times) and a date.  Out: average power, hours without supply, and the LiFePO4 battery or
supercapacitor that bridges them, with every assumption listed.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from hardware import profiles
from hardware.sites import Site

# -- sun times (NOAA Global Monitoring Laboratory's solar calculator equations) ---------------


def sun_times_utc(lat: float, lon: float, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Sunrise and sunset (UTC) for the apparent sun at −0.833° (refraction and radius).
    Accurate to about a minute at mid latitudes; raises ValueError in polar day/night."""
    gamma = 2 * math.pi / 365 * (day.timetuple().tm_yday - 1)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
                       - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma))
    decl = (0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
            - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma))
    phi = math.radians(lat)
    cos_ha = (math.cos(math.radians(90.833)) / (math.cos(phi) * math.cos(decl))
              - math.tan(phi) * math.tan(decl))
    if not -1 <= cos_ha <= 1:
        raise ValueError(f"no sunrise/sunset at latitude {lat} on {day}")
    ha = math.degrees(math.acos(cos_ha))
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    sunrise = midnight + dt.timedelta(minutes=720 - 4 * (lon + ha) - eqtime)
    sunset = midnight + dt.timedelta(minutes=720 - 4 * (lon - ha) - eqtime)
    return sunrise, sunset


# -- budget ------------------------------------------------------------------------------------


@dataclass
class PowerBudget:
    kind: str
    board: str
    interval_s: float
    loads_w: dict[str, float]  # at the battery
    assumptions: list[str] = field(default_factory=list)

    @property
    def average_w(self) -> float:
        return sum(self.loads_w.values())


def budget(kind: str, board_id: str = "esp32-s3-devkitc-1", interval_s: float = 60.0,
           pm_sensor: str = "sds011", warmup_s: float = 30.0, sample_s: float = 5.0,
           ) -> PowerBudget:
    if kind not in profiles.KINDS:
        raise profiles.ProfileError(f"kind {kind!r}: give one of {', '.join(profiles.KINDS)}")
    model = profiles.load_power_model()
    if board_id not in model["boards"]:
        raise profiles.ProfileError(
            f"board {board_id!r}: no power figures; known: {', '.join(model['boards'])}")
    _, parts = profiles.load_kits()
    b = model["boards"][board_id]
    rail_v = model["supply"]["rail_v"]
    eta = model["supply"]["boost_efficiency"]

    def watts(ma: float) -> float:  # a current on the 5 V rail, as power at the battery
        return ma / 1000 * rail_v / eta

    loads: dict[str, float] = {}
    notes = [
        f"board {board_id}: currents at its 3.3 V rail are drawn from the {rail_v:g} V rail "
        f"through the on-board LDO; battery → {rail_v:g} V boost at {eta:.0%} efficiency",
        f"one reading every {interval_s:g} s, one status frame every 10 readings",
    ]
    if kind == "air":
        loads["mcu (Wi-Fi modem sleep)"] = watts(b["modem_sleep_ma"])
        pm = parts[pm_sensor]
        duty = min(1.0, (warmup_s + sample_s) / interval_s)
        pm_ma = duty * pm.states_ma["active_ma"] + (1 - duty) * pm.states_ma["sleep_ma"]
        loads[f"{pm_sensor} (duty {duty:.0%})"] = watts(pm_ma)
        bme = parts["bme680"]
        heat_duty = 0.15 * 5 / interval_s  # five 150 ms heater cycles per reading
        loads["bme680"] = watts(bme.states_ma["measure_ma"] * 0.01
                                + bme.states_ma["heater_ma"] * heat_duty)
        notes.append(f"{pm_sensor}: {warmup_s:g} s warm-up + {sample_s:g} s sampling per "
                     f"reading, asleep otherwise (airrohr-style duty cycle)")
    elif kind == "noise":
        loads["mcu (continuous DSP)"] = watts(b["active_ma"])
        loads["inmp441"] = watts(parts["inmp441"].states_ma["active_ma"])
        notes.append("noise: the CPU filters audio continuously, so it never sleeps")
    else:
        loads["mcu + BLE scan (100 % window)"] = watts(b["ble_scan_ma"])
        notes.append("crowd: BLE scanning runs continuously to see every phone in a window")
    frames_per_s = 1.1 / interval_s
    loads["radio bursts"] = watts(b["tx_burst_ma"] * b["tx_burst_ms"] / 1000 * frames_per_s)
    loads["board overhead"] = watts(b["board_overhead_ma"])
    return PowerBudget(kind, board_id, interval_s, loads, notes)


@dataclass
class StorageAnswer:
    budget: PowerBudget
    site: Site
    day: dt.date
    supply_off_h: float
    energy_wh: float
    battery_wh: float
    battery_ah: float
    charge_w: float
    supercap_f: float
    assumptions: list[str]


def storage_for_day(b: PowerBudget, site: Site, day: dt.date) -> StorageAnswer:
    model = profiles.load_power_model()
    lamp, li, sc = model["lamp"], model["battery"]["lifepo4"], model["battery"]["supercap"]
    sunrise, sunset = sun_times_utc(site.lat, site.lon, day)
    off = sunrise + dt.timedelta(minutes=lamp["off_after_sunrise_min"])
    on = sunset - dt.timedelta(minutes=lamp["on_before_sunset_min"])
    off_h = (on - off).total_seconds() / 3600
    night_h = 24 - off_h
    energy = b.average_w * off_h * lamp["margin"]
    battery_wh = energy / (li["usable_depth"] * li["end_of_life"] * li["cold_derating"])
    battery_ah = battery_wh / li["cell_v"]
    # the night must run the node and refill the battery
    charge_w = b.average_w + energy / li["charge_efficiency"] / night_h
    joules = energy * 3600 / sc["end_of_life"]
    farads = 2 * joules / (sc["v_max"] ** 2 - sc["v_min"] ** 2)
    assumptions = [
        *b.assumptions,
        f"site {site.id} at {site.lat:.4f} N {site.lon:.4f} E; on {day.isoformat()} the sun "
        f"rises {sunrise:%H:%M} and sets {sunset:%H:%M} UTC (NOAA equations)",
        f"the lamppost supply is off from sunrise + {lamp['off_after_sunrise_min']:g} min to "
        f"sunset − {lamp['on_before_sunset_min']:g} min: {off_h:.2f} h",
        f"{(lamp['margin'] - 1):.0%} reserve on top of that day's energy",
        f"LiFePO4 at {li['cell_v']:g} V/cell, {li['usable_depth']:.0%} usable depth, sized for "
        f"{li['end_of_life']:.0%} capacity at end of life, charged at "
        f"{li['charge_efficiency']:.0%} efficiency during the {night_h:.2f} h night",
        f"supercapacitor alternative between {sc['v_max']:g} V and {sc['v_min']:g} V, "
        f"{sc['end_of_life']:.0%} of its capacitance at end of life",
    ]
    return StorageAnswer(b, site, day, off_h, energy, battery_wh, battery_ah, charge_w,
                         farads, assumptions)
