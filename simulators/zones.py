"""Zones, sites and node placements, loaded from a data file (default: data/zones.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from firmware import metrics


class ZonesError(ValueError):
    """A zones file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class NodePlacement:
    node_id: int
    kind: str
    zone: str
    site: str


def default_zones_path() -> Path:
    return Path(str(resources.files("simulators") / "data" / "zones.toml"))


def load_placements(path: str | Path | None = None) -> list[NodePlacement]:
    path = Path(path) if path else default_zones_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZonesError(f"{path}: {exc}") from None
    zones = doc.get("zones")
    if not isinstance(zones, dict) or not zones:
        raise ZonesError(f"{path}: needs a [zones.<name>] table")
    out: list[NodePlacement] = []
    for zone, spec in zones.items():
        where = f"{path}: zones.{zone}"
        number = spec.get("number")
        if not isinstance(number, int) or not 0 < number < 0x10000:
            raise ZonesError(f"{where}.number must be an integer 1..65535")
        for s, site in enumerate(spec.get("sites", []), start=1):
            if not isinstance(site.get("id"), str):
                raise ZonesError(f"{where}.sites[{s - 1}].id must be a string")
            for kind in site.get("nodes", []):
                if kind not in metrics.KIND_IDS:
                    raise ZonesError(
                        f"{where}.sites[{s - 1}].nodes: {kind!r} is not one of "
                        f"{sorted(metrics.KIND_IDS)}"
                    )
                node_id = number << 16 | s << 4 | metrics.KIND_IDS[kind]
                out.append(NodePlacement(node_id, kind, zone, site["id"]))
    return out
