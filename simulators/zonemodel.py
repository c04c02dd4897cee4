"""Zone models: what the three zones are like at any moment, deterministic for a seed.

In:  the zones and sites (hardware/data/zones.toml), the scenario (simulators/data/
events.toml: hour profiles per zone and day type, site exposures, scheduled events), a
seed, and a Unix time.  Out: the *truth* at a site for the window ending then — the true
number of phones present (the crowd model's ground truth), the air a perfect sensor would
measure, the sound levels — as a `SiteState`.  Sensors and their noise are the frame
generator's business (simulators/framegen.py); tests compare what the gateway stored with
the truth here.

What shapes the day:
- the calendar: local time (CET/CEST by the EU rule), workday / Saturday / Sunday, Dutch
  public holidays (Easter, King's Day, Ascension, Whit, Christmas, ...);
- hour profiles per zone (commuter peaks at the station, evening and weekend crowds on
  the terraces, shop hours and Thursday late shopping on the boulevard) and road traffic;
- scheduled events from the scenario file (King's Day, a festival, New Year's fireworks
  with their PM2.5 spike) that scale crowds, add music and smoke, close roads;
- weather: a seeded, smooth day-to-day process (pressure fronts, temperature anomalies,
  rain, wind) with stagnant high-pressure episodes that raise background PM, and rain
  that keeps people off the terraces and washes the air;
- intermittent sources: a train timetable past the Spoorzone sites, inland shipping on
  the river past Maasterras.

Everything is a pure function of (seed, site, time): no state advances, so any window of
time can be generated on its own (in parallel, or again later) and gives the same values.

On failure: `ScenarioError` naming the file and key; a site the model does not know raises
KeyError naming it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import math
import random
import struct
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from hardware.sites import NodePlacement, Zone, load_zones

DAY_S = 86400
HOUR_S = 3600
DAY_TYPES = ("workday", "saturday", "sunday", "holiday")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the key."""


# -- calendar ------------------------------------------------------------------------------


def _last_sunday(year: int, month: int) -> dt.date:
    d = dt.date(year, month + 1, 1) - dt.timedelta(days=1) if month < 12 else dt.date(year, 12, 31)
    return d - dt.timedelta(days=(d.weekday() + 1) % 7)


_DST_CACHE: dict[int, tuple[int, int]] = {}


def _dst_bounds(year: int) -> tuple[int, int]:
    """Unix times when summer time starts and ends in the EU: 01:00 UTC on the last Sunday
    of March and of October (Directive 2000/84/EC)."""
    bounds = _DST_CACHE.get(year)
    if bounds is None:
        start = _last_sunday(year, 3)
        end = _last_sunday(year, 10)
        epoch = dt.date(1970, 1, 1)
        bounds = ((start - epoch).days * DAY_S + HOUR_S, (end - epoch).days * DAY_S + HOUR_S)
        _DST_CACHE[year] = bounds
    return bounds


def utc_offset_s(t_s: float) -> int:
    """Offset of Dordrecht's local time (Europe/Amsterdam) from UTC at Unix time t."""
    year = 1970 + int(t_s // (365.2425 * DAY_S))
    start, end = _dst_bounds(year)
    if t_s < start - 200 * DAY_S:  # the year estimate is off near New Year
        start, end = _dst_bounds(year - 1)
    elif t_s > end + 200 * DAY_S:
        start, end = _dst_bounds(year + 1)
    return 7200 if start <= t_s < end else 3600


def local_day_and_hour(t_s: float) -> tuple[dt.date, float]:
    """The local date and the hour of that day (0 <= hour < 24) at Unix time t."""
    local = t_s + utc_offset_s(t_s)
    days = int(local // DAY_S)
    return dt.date(1970, 1, 1) + dt.timedelta(days=days), (local - days * DAY_S) / HOUR_S


def local_to_utc(day: dt.date, hour: float) -> int:
    """Unix time of `hour` o'clock local time on `day` (hour may exceed 24)."""
    noon = (day - dt.date(1970, 1, 1)).days * DAY_S + 12 * HOUR_S
    return int((day - dt.date(1970, 1, 1)).days * DAY_S + hour * HOUR_S - utc_offset_s(noon))


def easter(year: int) -> dt.date:
    """Easter Sunday (Gregorian), the anonymous algorithm (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month = (h + el - 7 * m + 114) // 31
    day = (h + el - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


def kings_day(year: int) -> dt.date:
    """Koningsdag: 27 April, or the 26th when the 27th is a Sunday."""
    d = dt.date(year, 4, 27)
    return d - dt.timedelta(days=1) if d.weekday() == 6 else d


_HOLIDAYS: dict[int, dict[dt.date, str]] = {}


def dutch_holidays(year: int) -> dict[dt.date, str]:
    """The Dutch public holidays that most people have off.  Good Friday is left out (most
    shops and offices are open); Liberation Day counts in lustrum years only, when it is a
    day off for most employees."""
    days = _HOLIDAYS.get(year)
    if days is None:
        e = easter(year)
        days = {
            dt.date(year, 1, 1): "Nieuwjaarsdag",
            e: "Eerste Paasdag",
            e + dt.timedelta(days=1): "Tweede Paasdag",
            kings_day(year): "Koningsdag",
            e + dt.timedelta(days=39): "Hemelvaartsdag",
            e + dt.timedelta(days=49): "Eerste Pinksterdag",
            e + dt.timedelta(days=50): "Tweede Pinksterdag",
            dt.date(year, 12, 25): "Eerste Kerstdag",
            dt.date(year, 12, 26): "Tweede Kerstdag",
        }
        if year % 5 == 0:
            days[dt.date(year, 5, 5)] = "Bevrijdingsdag"
        _HOLIDAYS[year] = days
    return days


def day_type(day: dt.date) -> str:
    """"holiday", "saturday", "sunday" or "workday"."""
    if day in dutch_holidays(day.year):
        return "holiday"
    wd = day.weekday()
    return "saturday" if wd == 5 else "sunday" if wd == 6 else "workday"


# -- scenario ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trains:
    first_h: float
    last_h: float  # may be past midnight: > 24
    minutes: tuple[int, ...]
    weekend_every: int
    passby_s: float
    level_db: float


@dataclass(frozen=True)
class Ships:
    per_hour: float
    passby_s: float
    level_db: float
    pm25_ugm3: float


@dataclass(frozen=True)
class ZoneProfile:
    id: str
    phones_peak: float
    traffic_scale: float
    weather_sensitivity: float
    hours: dict[str, tuple[float, ...]]  # day type or weekday name -> 24 values
    trains: Trains | None = None
    ships: Ships | None = None

    def profile(self, day: dt.date, kind: str) -> tuple[float, ...]:
        return _pick_profile(self.hours, day, kind, self.id)


@dataclass(frozen=True)
class SiteTraits:
    capacity: float = 1.0
    road: float = 1.0
    track_db: float = 0.0
    river_db: float = 0.0
    heat_c: float = 0.3


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    start_h: float
    hours: float
    ramp_h: float
    zones: tuple[str, ...]
    yearly: tuple[int, int] | None = None
    rule: str | None = None
    dates: tuple[dt.date, ...] = ()
    days: int = 1
    peak_h: float | None = None  # hours after local midnight of the start day
    crowd: float = 1.0
    crowd_add: float = 0.0
    noise_db: float | None = None
    traffic: float = 1.0
    pm25_ugm3: float = 0.0
    decay_h: float = 1.0

    def start_days(self, year: int) -> list[dt.date]:
        """The days in `year` on which an occurrence of this event starts."""
        firsts: list[dt.date] = []
        if self.yearly is not None:
            firsts.append(dt.date(year, *self.yearly))
        if self.rule == "kingsday":
            firsts.append(kings_day(year))
        firsts += [d for d in self.dates if d.year == year]
        return [f + dt.timedelta(days=i) for f in firsts for i in range(self.days)]


@dataclass(frozen=True)
class Scenario:
    traffic: dict[str, tuple[float, ...]]
    zones: dict[str, ZoneProfile]
    sites: dict[str, SiteTraits]
    events: tuple[Event, ...]
    path: str = ""

    def traffic_profile(self, day: dt.date) -> tuple[float, ...]:
        return _pick_profile(self.traffic, day, "traffic", "traffic")


def _pick_profile(hours: dict[str, tuple[float, ...]], day: dt.date, kind: str,
                  where: str) -> tuple[float, ...]:
    kind_of_day = day_type(day)
    if kind_of_day == "holiday":
        keys = ("holiday", "sunday")
    elif kind_of_day == "workday":
        keys = (WEEKDAYS[day.weekday()], "workday")
    else:
        keys = (kind_of_day,)
    for key in keys:
        if key in hours:
            return hours[key]
    raise ScenarioError(f"{where}: no hour profile for {keys[-1]} ({kind})")


def default_scenario_path() -> Path:
    return Path(str(resources.files("simulators") / "data" / "events.toml"))


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Read and check a scenario file (default: simulators/data/events.toml)."""
    path = Path(path) if path else default_scenario_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    traffic = _profiles(doc.get("traffic"), f"{path}: traffic")
    zones_doc = doc.get("zones")
    if not isinstance(zones_doc, dict) or not zones_doc:
        raise ScenarioError(f"{path}: needs a [zones.<name>] table per zone")
    zones = {}
    for zid, spec in zones_doc.items():
        where = f"{path}: zones.{zid}"
        zones[zid] = ZoneProfile(
            id=zid,
            phones_peak=_num(spec, "phones_peak", where, 0, 100000),
            traffic_scale=_num(spec, "traffic_scale", where, 0, 10, 1.0),
            weather_sensitivity=_num(spec, "weather_sensitivity", where, 0, 1, 0.3),
            hours=_profiles(spec, where),
            trains=_trains(spec.get("trains"), where + ".trains"),
            ships=_ships(spec.get("ships"), where + ".ships"),
        )
    sites = {}
    for sid, spec in (doc.get("sites") or {}).items():
        where = f"{path}: sites.{sid}"
        if not isinstance(spec, dict):
            raise ScenarioError(f"{where} must be a table")
        unknown = set(spec) - set(SiteTraits.__dataclass_fields__)
        if unknown:
            raise ScenarioError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: "
                                f"{', '.join(SiteTraits.__dataclass_fields__)}")
        sites[sid] = SiteTraits(**{k: _num(spec, k, where, -50, 100) for k in spec})
    events = tuple(_event(e, f"{path}: events[{i}]", zones)
                   for i, e in enumerate(doc.get("events") or []))
    return Scenario(traffic, zones, sites, events, str(path))


def _num(spec: dict, key: str, where: str, lo: float, hi: float,
         default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ScenarioError(f"{where}.{key} must be a number in {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def _profiles(spec: object, where: str) -> dict[str, tuple[float, ...]]:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where} must be a table of hour profiles")
    out = {}
    for key, values in spec.items():
        if key not in DAY_TYPES and key not in WEEKDAYS:
            continue
        if (not isinstance(values, list) or len(values) != 24
                or not all(isinstance(v, (int, float)) and v >= 0 for v in values)):
            raise ScenarioError(f"{where}.{key} must be 24 numbers >= 0 (00:00 .. 23:00)")
        out[key] = tuple(float(v) for v in values)
    for key in ("workday", "saturday", "sunday"):
        if key not in out:
            raise ScenarioError(f"{where}.{key}: missing hour profile (24 numbers)")
    return out


def _clock(value: object, where: str) -> float:
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        raise ScenarioError(f"{where} must be a local time \"HH:MM\", got {value!r}")
    try:
        h, m = int(value[:2]), int(value[3:])
    except ValueError:
        raise ScenarioError(f"{where} must be a local time \"HH:MM\", got {value!r}") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ScenarioError(f"{where} must be a local time \"HH:MM\", got {value!r}")
    return h + m / 60


def _trains(spec: object, where: str) -> Trains | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where} must be a table")
    first, last = _clock(spec.get("first"), where + ".first"), _clock(
        spec.get("last"), where + ".last")
    minutes = spec.get("minutes")
    if not isinstance(minutes, list) or not all(isinstance(m, int) and 0 <= m < 60
                                                for m in minutes):
        raise ScenarioError(f"{where}.minutes must be a list of minutes 0..59")
    return Trains(first, last + 24 if last < first else last, tuple(minutes),
                  int(_num(spec, "weekend_every", where, 1, 10, 1)),
                  _num(spec, "passby_s", where, 1, 600), _num(spec, "level_db", where, 0, 140))


def _ships(spec: object, where: str) -> Ships | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where} must be a table")
    return Ships(_num(spec, "per_hour", where, 0.01, 60), _num(spec, "passby_s", where, 1, 3600),
                 _num(spec, "level_db", where, 0, 140), _num(spec, "pm25_ugm3", where, 0, 500, 0))


def _event(spec: object, where: str, zones: dict[str, ZoneProfile]) -> Event:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where} must be a table")
    for key in ("id", "name"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise ScenarioError(f"{where}.{key} must be a non-empty string")
    where = f"{where} ({spec['id']})"
    yearly = None
    if "yearly" in spec:
        try:
            month, day = (int(x) for x in str(spec["yearly"]).split("-"))
            dt.date(2024, month, day)
        except ValueError:
            raise ScenarioError(f"{where}.yearly must be \"MM-DD\", got "
                                f"{spec['yearly']!r}") from None
        yearly = (month, day)
    rule = spec.get("rule")
    if rule not in (None, "kingsday"):
        raise ScenarioError(f"{where}.rule {rule!r}: the known rule is \"kingsday\"")
    try:
        dates = tuple(dt.date.fromisoformat(d) for d in spec.get("dates", []))
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}.dates must be a list of \"YYYY-MM-DD\"") from None
    if yearly is None and rule is None and not dates:
        raise ScenarioError(f"{where}: say when: yearly = \"MM-DD\", rule = \"kingsday\" "
                            "or dates = [\"YYYY-MM-DD\", ...]")
    ev_zones = spec.get("zones", list(zones))
    for z in ev_zones:
        if z not in zones:
            raise ScenarioError(f"{where}.zones: {z!r} is not one of {sorted(zones)}")
    start = _clock(spec.get("start"), where + ".start")
    hours = _num(spec, "hours", where, 0.1, 72)
    peak = None
    if "peak" in spec:
        peak = _clock(spec["peak"], where + ".peak")
        if peak < start:
            peak += 24
    noise = spec.get("noise_db")
    return Event(
        id=spec["id"], name=spec["name"], start_h=start, hours=hours,
        ramp_h=_num(spec, "ramp_h", where, 0.01, 24, 1.0), zones=tuple(ev_zones),
        yearly=yearly, rule=rule, dates=dates, days=int(_num(spec, "days", where, 1, 60, 1)),
        peak_h=peak, crowd=_num(spec, "crowd", where, 0, 50, 1.0),
        crowd_add=_num(spec, "crowd_add", where, 0, 100000, 0.0),
        noise_db=None if noise is None else _num(spec, "noise_db", where, 0, 140),
        traffic=_num(spec, "traffic", where, 0, 10, 1.0),
        pm25_ugm3=_num(spec, "pm25_ugm3", where, 0, 1000, 0.0),
        decay_h=_num(spec, "decay_h", where, 0.05, 48, 1.0),
    )


# -- seeded noise ----------------------------------------------------------------------------


def _unit(seed: int, stream: int, k: int) -> float:
    """A uniform number in [-1, 1) that depends only on (seed, stream, k)."""
    h = hashlib.blake2b(struct.pack(">qqq", seed, stream, k), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**63 - 1.0


class _SmoothNoise:
    """Value noise in [-1, 1]: seeded values on a lattice every `period_s`, cosine-
    interpolated between them.  Random access: any t, any order, same answer."""

    def __init__(self, seed: int, stream: int, period_s: float):
        self.seed, self.stream, self.period_s = seed, stream, period_s
        self._cache: dict[int, float] = {}

    def _at(self, k: int) -> float:
        v = self._cache.get(k)
        if v is None:
            if len(self._cache) > 8192:
                self._cache.clear()
            v = self._cache[k] = _unit(self.seed, self.stream, k)
        return v

    def __call__(self, t_s: float) -> float:
        x = t_s / self.period_s
        k = math.floor(x)
        f = (1 - math.cos(math.pi * (x - k))) / 2
        a = self._at(k)
        return a + (self._at(k + 1) - a) * f


def _mix(salt: int, t: int) -> int:
    """A 16-bit index that looks random in (salt, t): Knuth's multiplicative hash."""
    return (((t * 2654435761) ^ salt) * 2246822519 & 0xFFFFFFFF) >> 16


GAUSS_PAD = 64


def gaussian_table(seed: int, size: int = 65536) -> list[float]:
    """`size` standard normal draws (clipped to ±4) for cheap seeded noise, followed by
    GAUSS_PAD more (a copy of the first ones), so `table[i + k]` is valid for any i below
    `size` and k below GAUSS_PAD without masking."""
    rng = random.Random(seed * 7 + 3)
    table = [max(-4.0, min(4.0, rng.gauss(0.0, 1.0))) for _ in range(size)]
    return table + table[:GAUSS_PAD]


def site_salt(seed: int, site_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{seed}/{site_id}".encode(), digest_size=4).digest(), "big")


# -- model -------------------------------------------------------------------------------------


class Weather(NamedTuple):
    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    wind_ms: float
    rain_mm_h: float
    stagnation: float  # 0..1: high pressure and little wind, pollution accumulates
    pm25_background_ugm3: float


class ZoneState(NamedTuple):
    """A zone during the window ending at t (before site exposure)."""

    crowd: float  # the usual crowd level (0..1 of the zone's peak), weather and events in
    crowd_add: float  # extra phones per typical site from events
    traffic: float  # road traffic, relative to a weekday rush hour
    event_db: float  # LAeq of events at a site, dB(A); 0 when none
    event_peak: bool  # an event's climax (fireworks): loud impulses
    event_pm25: float  # PM2.5 added by events, ug/m3
    train_frac: float  # share of the window with a train passing
    ship_frac: float  # share of the window with a ship passing
    events: tuple[str, ...]  # ids of the events under way


class SiteState(NamedTuple):
    """The truth at one site for the window ending at t."""

    phones: int  # ground truth: phones present (what a perfect crowd sensor would count)
    phones_expected: float
    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    gas_resistance_ohm: float
    pm25_ugm3: float
    pm10_ugm3: float
    pm1_ugm3: float
    laeq_db: float
    lamax_db: float
    la10_db: float
    la50_db: float
    la90_db: float


class _Site:
    __slots__ = ("id", "zone", "traits", "salt", "rssi_shares", "train_db", "ship_db",
                 "train_energy", "ship_energy", "ship_pm25")

    def __init__(self, site_id: str, zone: ZoneProfile, traits: SiteTraits, salt: int,
                 rssi_shares: tuple[float, ...]):
        self.id = site_id
        self.zone = zone
        self.traits = traits
        self.salt = salt
        self.rssi_shares = rssi_shares
        self.train_db = zone.trains.level_db - traits.track_db if zone.trains else 0.0
        self.ship_db = zone.ships.level_db - traits.river_db if zone.ships else 0.0
        self.train_energy = 10 ** (self.train_db / 10) if zone.trains else 0.0
        self.ship_energy = 10 ** (self.ship_db / 10) if zone.ships else 0.0
        self.ship_pm25 = zone.ships.pm25_ugm3 if zone.ships else 0.0


class _Minute(NamedTuple):
    """The slow part of a zone, sampled once a minute."""

    crowd: float
    crowd_add: float
    traffic: float
    event_db: float
    event_peak: bool
    event_pm25: float
    events: tuple[str, ...]


MINUTE_S = 60


class ZoneModel:
    """The three zones (or any zones file) for one seed.

    `site_state(site, t)` is the truth at a site for the window ending at t;
    `phones_present(site, t)` its crowd ground truth; `zone_state(zone, t)` and
    `weather(t)` the layers below.  Sites not in the zones file (scaled fleets) are added
    with `add_site`, or from placements given to the constructor.

    Slow processes (weather, hour profiles, events, traffic) are sampled once a minute;
    what changes from one window to the next (people coming and going, trains, ships, the
    sound of the moment) is computed for the window itself.
    """

    def __init__(self, seed: int = 1, zones: list[Zone] | None = None,
                 scenario: Scenario | None = None,
                 placements: list[NodePlacement] | None = None):
        self.seed = seed
        self.scenario = scenario or load_scenario()
        self.zones = zones if zones is not None else load_zones()
        self.gauss = gaussian_table(seed)
        self._sites: dict[str, _Site] = {}
        for zone in self.zones:
            for site in zone.sites:
                self.add_site(site.id, zone.id)
        for p in placements or ():
            if p.site not in self._sites:
                self.add_site(p.site, p.zone)
        s = seed * 101
        self._pressure = (_SmoothNoise(s, 1, 7 * DAY_S), _SmoothNoise(s, 2, 2.5 * DAY_S))
        self._wind = _SmoothNoise(s, 3, 1.5 * DAY_S)
        self._temp = (_SmoothNoise(s, 4, 5 * DAY_S), _SmoothNoise(s, 5, 1.7 * DAY_S))
        self._rain = (_SmoothNoise(s, 6, 3 * HOUR_S), _SmoothNoise(s, 7, 12 * HOUR_S))
        self._humid = _SmoothNoise(s, 8, 9 * HOUR_S)
        self._pm = _SmoothNoise(s, 9, 2 * DAY_S)
        self._minute = -1
        self._minute_weather: Weather | None = None
        self._minute_zones: dict[str, _Minute] = {}
        self._minute_sites: dict[str, tuple] = {}
        self._window_key: tuple | None = None
        self._window_sites: dict[str, SiteState] = {}
        self._window_zones: dict[str, tuple[float, float]] = {}
        self._events_cache: dict[dt.date, list[tuple[Event, int, int, int | None]]] = {}
        self._passing_cache: dict[tuple[str, str, dt.date], list[int]] = {}

    # -- sites ---------------------------------------------------------------------------

    def add_site(self, site_id: str, zone_id: str) -> None:
        profile = self.scenario.zones.get(zone_id)
        if profile is None:
            raise ScenarioError(
                f"{self.scenario.path}: zone {zone_id!r} (of site {site_id!r}) has no "
                f"[zones.{zone_id}] profile; known: {', '.join(sorted(self.scenario.zones))}")
        salt = site_salt(self.seed, site_id)
        traits = self.scenario.sites.get(site_id)
        if traits is None:  # a site the scenario does not describe: draw plausible values
            r = random.Random(salt)
            traits = SiteTraits(capacity=r.uniform(0.6, 1.4), road=r.uniform(0.5, 1.5),
                                track_db=r.uniform(0, 14), river_db=r.uniform(0, 8),
                                heat_c=r.uniform(0.1, 0.8))
        r = random.Random(salt + 1)
        raw = [r.uniform(0.6, 1.4) * s for s in (0.1, 0.2, 0.3, 0.25, 0.15)]
        shares = tuple(x / sum(raw) for x in raw)
        self._sites[site_id] = _Site(site_id, profile, traits, salt, shares)

    def site(self, site_id: str) -> _Site:
        try:
            return self._sites[site_id]
        except KeyError:
            raise KeyError(f"site {site_id!r} is not in the zone model; known: "
                           f"{', '.join(sorted(self._sites))}") from None

    @property
    def site_ids(self) -> list[str]:
        return list(self._sites)

    # -- weather ---------------------------------------------------------------------------

    def weather(self, t_s: float) -> Weather:
        """The city's weather at t (one value for all zones)."""
        day, hour = local_day_and_hour(t_s)
        doy = day.timetuple().tm_yday + hour / 24
        season = -math.cos(2 * math.pi * (doy - 20) / 365.25)  # -1 mid-January, +1 July
        pressure = 1014 + 9 * self._pressure[0](t_s) + 5 * self._pressure[1](t_s)
        wind = min(20.0, max(0.3, 4.5 - 0.22 * (pressure - 1014) + 2.2 * self._wind(t_s)))
        climate = 10.6 + 7.2 * season
        # Summer highs bring heat, winter highs cold (inversions).
        anomaly = (3.0 * self._temp[0](t_s) + 1.5 * self._temp[1](t_s)
                   + 0.12 * (pressure - 1014) * season)
        clear = min(1.0, max(0.0, (pressure - 1006) / 16))
        swing = 2.0 + 4.0 * clear
        diurnal = math.cos(2 * math.pi * (hour - 15) / 24)
        temperature = climate + anomaly + swing * diurnal
        rain = (2.5 * self._rain[0](t_s) + 1.4 * self._rain[1](t_s)
                - 0.18 * (pressure - 1010))
        rain_mm_h = max(0.0, rain - 1.0) * 1.5
        humidity = (80 - 2.6 * swing * diurnal + 14 * min(1.0, rain_mm_h) - 6 * clear
                    + 5 * self._humid(t_s))
        humidity = min(100.0, max(20.0, humidity))
        stagnation = (min(1.0, max(0.0, (pressure - 1017) / 10))
                      * min(1.0, max(0.0, 1 - (wind - 1.5) / 4)))
        night = 1.0 if hour < 7 or hour >= 21 else 0.0
        pm_bg = (7 + 3 * -season + 25 * stagnation * (1 + 0.3 * night)
                 + 2.5 * self._pm(t_s))
        pm_bg = max(2.0, pm_bg) / (1 + 0.4 * rain_mm_h)
        return Weather(temperature, humidity, pressure, wind, rain_mm_h, stagnation, pm_bg)

    # -- events ----------------------------------------------------------------------------

    def events_on(self, day: dt.date) -> list[tuple[Event, int, int, int | None]]:
        """Occurrences that start on `day`: (event, start_s, end_s, peak_s or None)."""
        found = self._events_cache.get(day)
        if found is None:
            found = []
            for ev in self.scenario.events:
                if day in ev.start_days(day.year):
                    start = local_to_utc(day, ev.start_h)
                    peak = None if ev.peak_h is None else local_to_utc(day, ev.peak_h)
                    found.append((ev, start, start + int(ev.hours * HOUR_S), peak))
            if len(self._events_cache) > 512:
                self._events_cache.clear()
            self._events_cache[day] = found
        return found

    # -- the slow layer, once a minute -----------------------------------------------------

    def _at_minute(self, minute: int) -> None:
        if minute == self._minute:
            return
        self._minute = minute
        t_s = minute * MINUTE_S
        self._minute_weather = self.weather(t_s)
        self._minute_zones = {z: self._zone_minute(z, t_s) for z in self.scenario.zones}
        self._minute_sites = {}

    def _zone_minute(self, zone_id: str, t_s: int) -> _Minute:
        zone = self.scenario.zones[zone_id]
        day, hour = local_day_and_hour(t_s)
        crowd = _interp(zone.profile(day, "crowd"), hour)
        traffic = _interp(self.scenario.traffic_profile(day), hour) * zone.traffic_scale
        w = self._minute_weather
        sens = zone.weather_sensitivity
        wet = min(1.0, w.rain_mm_h / 1.5)
        cold = min(1.0, max(0.0, (12 - w.temperature_c) / 12))
        warm = min(1.0, max(0.0, (w.temperature_c - 18) / 10))
        crowd *= max(0.15, 1 - sens * (0.6 * wet + 0.35 * cold) + 0.5 * sens * warm)
        crowd_add = 0.0
        event_energy = 0.0
        event_peak = False
        event_pm = 0.0
        under_way = []
        for back in (1, 0):  # occurrences that started yesterday may still run (New Year)
            for ev, start, end, peak in self.events_on(day - dt.timedelta(days=back)):
                if zone_id not in ev.zones:
                    continue
                env = _envelope(t_s, start, end, ev.ramp_h * HOUR_S)
                if ev.pm25_ugm3:
                    event_pm += ev.pm25_ugm3 * _pm_envelope(
                        t_s, start, end, peak, ev.ramp_h * HOUR_S, ev.decay_h * HOUR_S)
                if env <= 0:
                    continue
                under_way.append(ev.id)
                crowd *= 1 + (ev.crowd - 1) * env
                crowd_add += ev.crowd_add * env
                traffic *= 1 + (ev.traffic - 1) * env
                if ev.noise_db is not None:
                    near_peak = 1.0 if peak is None else 0.4 + 0.6 * math.exp(
                        -(((t_s - peak) / 2400) ** 2))
                    event_energy += env * near_peak * 10 ** (ev.noise_db / 10)
                    event_peak = event_peak or (peak is not None and abs(t_s - peak) < 3600)
        return _Minute(crowd, crowd_add, traffic,
                       10 * math.log10(event_energy) if event_energy > 0 else 0.0,
                       event_peak, event_pm, tuple(under_way))

    def _site_minute(self, site: _Site) -> tuple:
        """(expected phones, its square root, energy of the steady sound sources other
        than people, temperature, humidity, pressure, gas, pm2.5, pm10, pm1, level of an
        event's climax or 0)."""
        z = self._minute_zones[site.zone.id]
        w = self._minute_weather
        tr = site.traits
        expected = site.zone.phones_peak * tr.capacity * z.crowd + z.crowd_add * tr.capacity
        road = z.traffic * tr.road
        energy = (10 ** ((36 + 8 * min(1.0, z.traffic)) / 10)
                  + 10 ** ((56 + 10 * math.log10(max(road, 1e-3))) / 10))
        if z.event_db:
            energy += 10 ** (z.event_db / 10)
        pm25 = w.pm25_background_ugm3 + 4 * road + z.event_pm25
        gas = 250000 * math.exp(-0.6 * road - z.event_pm25 / 150) * (
            1 - 0.005 * (w.humidity_pct - 50))
        base = (expected, math.sqrt(expected + 1.0), energy, w.temperature_c + tr.heat_c,
                w.humidity_pct - 2 * tr.heat_c, w.pressure_hpa, max(2000.0, gas), pm25,
                pm25 * 1.5 + 2.5 * road + 0.4 * w.wind_ms * (w.rain_mm_h == 0), pm25 * 0.68,
                z.event_db if z.event_peak else 0.0)
        self._minute_sites[site.id] = base
        return base

    # -- trains and ships, per window --------------------------------------------------------

    def _passings(self, zone: ZoneProfile, what: str, day: dt.date) -> list[int]:
        """Start times of the train or ship passings of a local day, sorted."""
        key = (zone.id, what, day)
        starts = self._passing_cache.get(key)
        if starts is not None:
            return starts
        starts = []
        if what == "trains":
            trains = zone.trains
            every = trains.weekend_every if day_type(day) != "workday" else 1
            midnight = local_to_utc(day, 0)
            for h in range(int(trains.first_h), int(math.ceil(trains.last_h)) + 1):
                for i, minute in enumerate(trains.minutes):
                    hh = h + minute / 60
                    if i % every == 0 and trains.first_h <= hh <= trains.last_h:
                        starts.append(int(midnight + hh * HOUR_S))
        else:
            ships = zone.ships
            slot_s = HOUR_S / ships.per_hour
            stream = 1000 + sum(zone.id.encode())
            midnight = local_to_utc(day, 0)
            first = math.floor(midnight / slot_s)
            for k in range(first, math.ceil(local_to_utc(day, 24) / slot_s)):
                u = _unit(self.seed, stream, k)
                if u >= -0.8:  # about one slot in ten has no ship
                    starts.append(int((k + (u + 1) / 2) * slot_s))
        if len(self._passing_cache) > 64:
            self._passing_cache.clear()
        self._passing_cache[key] = starts
        return starts

    def _covered(self, zone: ZoneProfile, what: str, t_s: float, window_s: float) -> float:
        """Share of the window [t - window, t] in which a train (ship) passes."""
        if window_s <= 0:
            return 0.0
        duration = zone.trains.passby_s if what == "trains" else zone.ships.passby_s
        lo, hi = t_s - window_s, t_s
        day, _ = local_day_and_hour(t_s)
        covered = 0.0
        for d in (day - dt.timedelta(days=1), day):
            starts = self._passings(zone, what, d)
            i = bisect.bisect_left(starts, lo - duration)
            while i < len(starts) and starts[i] < hi:
                overlap = min(hi, starts[i] + duration) - max(lo, starts[i])
                if overlap > 0:
                    covered += overlap
                i += 1
        return min(1.0, covered / window_s)

    def _window(self, zone: ZoneProfile, t_s: float, window_s: float) -> tuple[float, float]:
        found = self._window_zones[zone.id] = (
            self._covered(zone, "trains", t_s, window_s) if zone.trains else 0.0,
            self._covered(zone, "ships", t_s, window_s) if zone.ships else 0.0)
        return found

    # -- public views ------------------------------------------------------------------------

    def zone_state(self, zone_id: str, t_s: float, window_s: float = 10) -> ZoneState:
        zone = self.scenario.zones[zone_id]
        self._at_minute(int(t_s) // MINUTE_S)
        self._enter_window(t_s, window_s)
        z = self._minute_zones[zone_id]
        trains, ships = self._window_zones.get(zone_id) or self._window(zone, t_s, window_s)
        return ZoneState(z.crowd, z.crowd_add, z.traffic, z.event_db, z.event_peak,
                         z.event_pm25, trains, ships, z.events)

    def expected_phones(self, site_id: str, t_s: float, window_s: float = 10) -> float:
        return self.site_state(site_id, int(t_s), window_s).phones_expected

    def phones_present(self, site_id: str, t_s: int, window_s: float = 10) -> int:
        """Ground truth: how many phones really were at the site in the window ending at
        t (the number a perfect crowd sensor would report)."""
        return self.site_state(site_id, t_s, window_s).phones

    def _enter_window(self, t_s: float, window_s: float) -> None:
        key = (t_s, window_s)
        if key != self._window_key:
            self._window_key = key
            self._window_sites = {}
            self._window_zones = {}

    def site_state(self, site_id: str, t_s: int, window_s: float = 10) -> SiteState:
        """The truth at a site for the window of `window_s` ending at Unix time t."""
        if self._window_key == (t_s, window_s):
            found = self._window_sites.get(site_id)
            if found is not None:
                return found
        else:
            self._enter_window(t_s, window_s)
        site = self._sites.get(site_id) or self.site(site_id)
        minute = int(t_s) // MINUTE_S
        if minute != self._minute:
            self._at_minute(minute)
        base = self._minute_sites.get(site_id) or self._site_minute(site)
        expected, root, energy, temp, humid, pressure, gas, pm25, pm10, pm1, climax = base
        zone = site.zone
        trains, ships = self._window_zones.get(zone.id) or self._window(zone, t_s, window_s)
        g = self.gauss
        i = _mix(site.salt, int(t_s))
        # crowd: the true number fluctuates around the expectation (people come and go)
        phones = int(expected + root * g[i] + 0.5)
        if phones < 0:
            phones = 0
        # sound: steady sources add up as energy (people: 30 dB + 10 lg(1 + n)), trains
        # and ships for the part of the window they are heard
        steady = energy + 1000.0 * (1 + phones)
        l_steady = 10 * math.log10(steady)
        peak = 0.0
        if trains or ships:
            intermittent = trains * site.train_energy + ships * site.ship_energy
            if trains:
                peak = site.train_db + 2
            if ships:
                pm25 += site.ship_pm25 * ships
                pm10 += 1.5 * site.ship_pm25 * ships
                pm1 += 0.68 * site.ship_pm25 * ships
                if site.ship_db + 3 > peak:
                    peak = site.ship_db + 3
            laeq = 10 * math.log10(steady + intermittent) + 0.4 * g[i + 1]
            la10 = laeq + 0.5
        else:
            laeq = l_steady + 0.4 * g[i + 1]
            la10 = 0.0
        if climax:
            bang = climax + 12 + 3 * abs(g[i + 7])
            if bang > peak:
                peak = bang
        la90 = l_steady - 3.5 + 0.3 * g[i + 2]
        la50 = l_steady - 0.8
        if la50 < la90 + 0.5:
            la50 = la90 + 0.5
        if la10 < l_steady + 2.5:
            la10 = l_steady + 2.5
        if la10 < la50 + 0.5:
            la10 = la50 + 0.5
        lamax = la10 + 4 + 2.5 * abs(g[i + 3])
        if lamax < peak:
            lamax = peak
        if lamax < laeq + 1:
            lamax = laeq + 1
        state = _new_tuple(SiteState, (phones, expected, temp, humid, pressure, gas, pm25,
                                       pm10, pm1, laeq, lamax, la10, la50, la90))
        self._window_sites[site_id] = state
        return state


_new_tuple = tuple.__new__


def _interp(profile: tuple[float, ...], hour: float) -> float:
    i = int(hour) % 24
    f = hour - int(hour)
    return profile[i] + (profile[(i + 1) % 24] - profile[i]) * f


def _envelope(t: float, start: float, end: float, ramp: float) -> float:
    """0 outside [start, end]; rises over `ramp`, full, then fades over the last hour."""
    if t <= start or t >= end:
        return 0.0
    return min(1.0, (t - start) / ramp, (end - t) / min(HOUR_S, ramp))


def _pm_envelope(t: float, start: float, end: float, peak: float | None, ramp: float,
                 decay: float) -> float:
    """Smoke: builds up towards the peak, then decays exponentially (also after the end)."""
    if peak is None:
        peak = start + ramp
        if t <= peak:
            return _envelope(t, start, end, ramp)
        base = 1.0 if t <= end else math.exp(-(t - end) / decay)
        return base if t < end + 8 * decay else 0.0
    if t <= start:
        return 0.0
    if t <= peak:
        return ((t - start) / (peak - start)) ** 3
    return math.exp(-(t - peak) / decay) if t < peak + 8 * decay else 0.0
