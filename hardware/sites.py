"""Zones, lamppost sites and node placements, loaded from a data file
(default: hardware/data/zones.toml).  Simulators, power budgets and plots read it here."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from firmware import metrics


class ZonesError(ValueError):
    """A zones file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    zone: str
    lat: float
    lon: float
    kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodePlacement:
    node_id: int
    kind: str
    zone: str
    site: str


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    number: int
    name: str
    about: str
    sites: tuple[Site, ...]


def default_zones_path() -> Path:
    return Path(str(resources.files("hardware") / "data" / "zones.toml"))


def load_zones(path: str | Path | None = None) -> list[Zone]:
    path = Path(path) if path else default_zones_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZonesError(f"{path}: {exc}") from None
    zones = doc.get("zones")
    if not isinstance(zones, dict) or not zones:
        raise ZonesError(f"{path}: needs a [zones.<name>] table")
    out: list[Zone] = []
    seen_sites: set[str] = set()
    for zone, spec in zones.items():
        where = f"{path}: zones.{zone}"
        number = spec.get("number")
        if not isinstance(number, int) or not 0 < number < 0x10000:
            raise ZonesError(f"{where}.number must be an integer 1..65535")
        sites = []
        for s, site in enumerate(spec.get("sites", [])):
            at = f"{where}.sites[{s}]"
            sid = site.get("id")
            if not isinstance(sid, str) or not sid:
                raise ZonesError(f"{at}.id must be a non-empty string")
            if sid in seen_sites:
                raise ZonesError(f"{at}.id {sid!r} is used twice")
            seen_sites.add(sid)
            lat, lon = site.get("lat"), site.get("lon")
            if not isinstance(lat, (int, float)) or not -90 <= lat <= 90:
                raise ZonesError(f"{at}.lat must be degrees north, -90..90")
            if not isinstance(lon, (int, float)) or not -180 <= lon <= 180:
                raise ZonesError(f"{at}.lon must be degrees east, -180..180")
            kinds = site.get("nodes", [])
            for kind in kinds:
                if kind not in metrics.KIND_IDS:
                    raise ZonesError(
                        f"{at}.nodes: {kind!r} is not one of {sorted(metrics.KIND_IDS)}"
                    )
            sites.append(Site(sid, zone, float(lat), float(lon), tuple(kinds)))
        out.append(Zone(zone, number, spec.get("name", zone), spec.get("about", ""),
                        tuple(sites)))
    return out


def find_site(site_id: str, path: str | Path | None = None) -> Site:
    sites = {s.id: s for z in load_zones(path) for s in z.sites}
    if site_id not in sites:
        import difflib

        near = difflib.get_close_matches(site_id, sites, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ZonesError(f"no site {site_id!r}; known sites: {', '.join(sorted(sites))}.{hint}")
    return sites[site_id]


def placement(zone_id: str, site_id: str, kind: str,
              path: str | Path | None = None) -> NodePlacement:
    """The node of `kind` at `site_id` in `zone_id`, checked against the zones file: an
    unknown zone, a site of another zone or a kind the site does not have is a ZonesError
    that says what is known, with a "did you mean" for typos."""
    import difflib

    zones = {z.id: z for z in load_zones(path)}
    if zone_id not in zones:
        near = difflib.get_close_matches(zone_id, zones, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ZonesError(f"zone {zone_id!r} is not in the zones file; known zones: "
                         f"{', '.join(sorted(zones))}.{hint}")
    zone = zones[zone_id]
    sites = {s.id: s for s in zone.sites}
    if site_id not in sites:
        other = next((z.id for z in zones.values() for s in z.sites if s.id == site_id), None)
        if other is not None:
            raise ZonesError(f"site {site_id!r} is in zone {other!r}, not {zone_id!r}: give "
                             f"--zone {other}")
        near = difflib.get_close_matches(site_id, sites, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ZonesError(f"site {site_id!r} is not a site of {zone_id}; its sites: "
                         f"{', '.join(sorted(sites))}.{hint}")
    for found in load_placements(path):
        if found.zone == zone_id and found.site == site_id and found.kind == kind:
            return found
    raise ZonesError(f"site {site_id} has no {kind} node in the zones file (it has "
                     f"{', '.join(sites[site_id].kinds) or 'none'}); add it there first")


def load_placements(path: str | Path | None = None) -> list[NodePlacement]:
    """Every node of every site.  Node ids are derived, so a placement keeps its id:
    zone number << 16 | site number (1-based) << 4 | kind id."""
    out = []
    for zone in load_zones(path):
        for s, site in enumerate(zone.sites, start=1):
            for kind in site.kinds:
                node_id = zone.number << 16 | s << 4 | metrics.KIND_IDS[kind]
                out.append(NodePlacement(node_id, kind, zone.id, site.id))
    return out
