"""Register exports: an Algoritmeregister entry for crowd counting and for noise
measurement, and a sensor-register entry per node.

In:  the keyring (which nodes exist, their kind, zone and site; its keys are never read
into the exports), the zones file (site positions, WGS84), the privacy policy, the
emission manifest, and the privacy officer's `audit.toml` (audit/audit.sample.toml
documents it) for every field that needs a human decision.
Out: a JSON-able dict {"algorithm_register": [...], "sensor_register": [...],
"missing": [...]} and its Markdown.  Positions are given in WGS84 and in RD New
(EPSG:28992), transformed by PROJ (pyproj).
On failure: an unreadable audit.toml is `AuditInputError` (exit 2).  A field the
officer has not filled in is None in the entry, listed under "missing" and reported as
a finding (exit 1): never invented, never left blank.

Field lists: ALGORITHM_FIELDS follow the main fields of the Algoritmeregister
publication standard (name, organisation, short description, purpose and impact, status,
begin date, considerations, human intervention, risk management, legal basis, impact
assessments, data and source, technical working, provider, source code, contact);
SENSOR_FIELDS those of a municipal sensor register.  `validate()` checks an export
against them.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

from audit.findings import AuditInputError, CheckResult

ALGORITHM_FIELDS = (
    "name", "organisation", "short_description", "purpose_and_impact", "status",
    "begin_date", "considerations", "human_intervention", "risk_management", "legal_basis",
    "impact_assessment_dpia", "data_and_source", "technical_working", "provider",
    "source_code", "contact",
)
SENSOR_FIELDS = (
    "node", "sensor_type", "owner", "contact", "personal_data", "purpose", "legal_basis",
    "location_wgs84", "location_rd_new", "active_from", "active_until", "what_is_measured",
    "retention",
)
# audit.toml keys for the fields that need a human decision
_ALGO_HUMAN = {"organisation": ("organisation", "organisation"),
               "contact": ("organisation", "contact"),
               "provider": ("organisation", "provider"),
               "source_code": ("organisation", "source_code"),
               "purpose_and_impact": ("algorithms", "purpose_and_impact"),
               "status": ("algorithms", "status"),
               "begin_date": ("algorithms", "begin_date"),
               "considerations": ("algorithms", "considerations"),
               "human_intervention": ("algorithms", "human_intervention"),
               "legal_basis": ("algorithms", "legal_basis"),
               "impact_assessment_dpia": ("algorithms", "dpia")}
_SENSOR_HUMAN = ("owner", "contact", "legal_basis", "retention", "active_from", "active_until")
_SENSOR_TYPE = {
    "crowd": "Bluetooth LE scanner (passive), counts devices per window",
    "noise": "sound level meter (MEMS microphone), A-weighted levels",
    "air": "air quality (temperature, humidity, pressure, gas, particulate matter)",
}
ALGORITHMS = {"crowd": "Crowd counting", "noise": "Noise measurement"}


def load_audit_config(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditInputError(f"{path}: no such audit config; start from "
                              "audit/audit.sample.toml") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuditInputError(f"{path}: not a readable TOML file ({exc})") from None
    known = {"requirements", "organisation", "algorithms", "sensors"}
    for key in doc:
        if key not in known:
            raise AuditInputError(f"{path}: [{key}] is not an audit.toml table; use "
                                  f"{', '.join(sorted(known))} (audit/audit.sample.toml)")
    return doc


def required_min_count(config: dict) -> int:
    value = config.get("requirements", {}).get("crowd_min_count", 5)
    if type(value) is not int or value < 1:
        raise AuditInputError(f"audit.toml: [requirements] crowd_min_count must be an integer "
                              f">= 1, got {value!r}")
    return value


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    text = str(value).strip()
    return text or None


def rd_new(lat: float, lon: float) -> tuple[float, float]:
    """WGS84 degrees -> RD New (EPSG:28992) metres, through PROJ."""
    from pyproj import Transformer

    x, y = _transformer(Transformer).transform(lon, lat)
    return round(x, 1), round(y, 1)


_TRANSFORMER = None


def _transformer(cls):
    global _TRANSFORMER
    if _TRANSFORMER is None:
        _TRANSFORMER = cls.from_crs("EPSG:4326", "EPSG:28992", always_xy=True)
    return _TRANSFORMER


def _policy_summary(policy, kind: str) -> str:
    zp = policy.defaults
    parts = [f"policy {policy.id}"]
    if kind == "crowd":
        parts.append(f"crowd counts of 1..{zp.crowd_min_count - 1} withheld (k = "
                     f"{zp.crowd_min_count}), with their signal-strength bins")
        parts.append(f"times floored to {zp.crowd_time_resolution_s} s")
        parts.append("random noise off" if not zp.noise_on else
                     f"noise epsilon {float(zp.crowd_noise_epsilon):g} per release, daily budget "
                     f"{float(zp.daily_epsilon_budget):g}")
    else:
        parts.append("no audio leaves the node; band levels over at least 1 s")
        if zp.noise_time_resolution_s:
            parts.append(f"times floored to {zp.noise_time_resolution_s} s")
    for zone, z in sorted(policy.zones.items()):
        if z != zp:
            parts.append(f"zone {zone}: k = {z.crowd_min_count}, noise epsilon "
                         f"{float(z.crowd_noise_epsilon):g}, "
                         f"budget {float(z.daily_epsilon_budget):g}")
    return "; ".join(parts)


def _metric_list(manifest: dict, kind: str) -> str:
    return ", ".join(f"{r['name']} ({r['unit']})" for r in manifest["kinds"][kind]["metrics"])


def build_registers(keyring, zones, policy, manifest: dict, config: dict) -> dict:
    missing: list[str] = []
    algos = []
    org = config.get("organisation", {})
    common = {k: v for k, v in config.get("algorithms", {}).items() if not isinstance(v, dict)}
    sites = {s.id: s for z in zones for s in z.sites}
    zone_names = ", ".join(z.name for z in zones)
    for kind, title in ALGORITHMS.items():
        own = config.get("algorithms", {}).get(kind, {})
        spec = manifest["kinds"][kind]
        entry = {
            "name": f"{title}, Dordt sensor fleet ({zone_names})",
            "short_description": (
                "Crowd sensors on lampposts count the Bluetooth devices nearby without storing "
                "or sending any identifier; a gateway withholds small counts and coarsens time "
                "before the counts reach the city's digital twin." if kind == "crowd" else
                "Noise sensors on lampposts measure A-weighted sound levels; no audio is "
                "stored or sent; the levels go to the city's digital twin."),
            "risk_management": _policy_summary(policy, kind) + "; never leaves the node: "
            + "; ".join(spec["never_leaves"]),
            "data_and_source": f"{kind} nodes in the test zones emit: "
                               f"{_metric_list(manifest, kind)}; personal data: "
                               f"{spec['personal_data']}",
            "technical_working": (
                f"on the node: {spec['cadence']}; the gateway verifies each signed frame and "
                f"applies {_policy_summary(policy, kind)}; every forwarded batch carries the "
                f"policy hash and the gateway's signature. Emission manifest generated from "
                f"firmware {manifest['firmware_sha256'][:16]}."),
        }
        for fld, (table, key) in _ALGO_HUMAN.items():
            source = org if table == "organisation" else {**common, **own}
            value = _text(source.get(key))
            entry[fld] = value
            if value is None:
                missing.append(f"algorithm register ({kind}): {fld} — audit.toml "
                               f"[{'organisation' if table == 'organisation' else 'algorithms'}]"
                               f" {key}")
        algos.append({f: entry.get(f) for f in ALGORITHM_FIELDS})

    sensors_cfg = config.get("sensors", {})
    per_node = sensors_cfg.get("nodes", {})
    purposes = sensors_cfg.get("purpose", {})
    sensors = []
    for e in sorted(keyring, key=lambda e: e.node_id):
        if e.revoked:
            continue
        spec = manifest["kinds"][e.kind]
        site = sites.get(e.site)
        entry = {
            "node": e.node, "zone": e.zone, "site": e.site,
            "sensor_type": _SENSOR_TYPE[e.kind],
            "personal_data": {"yes": e.kind == "crowd", "which": spec["personal_data"]},
            "purpose": _text(purposes.get(e.kind)),
            "location_wgs84": {"lat": site.lat, "lon": site.lon} if site else None,
            "location_rd_new": dict(zip(("x", "y"), rd_new(site.lat, site.lon))) if site
            else None,
            "what_is_measured": _metric_list(manifest, e.kind),
        }
        if entry["purpose"] is None:
            missing.append(f"sensor register ({e.node}): purpose — audit.toml "
                           f"[sensors.purpose] {e.kind}")
        if site is None:
            missing.append(f"sensor register ({e.node}): location — site {e.site!r} is not in "
                           "the zones file")
        own = per_node.get(e.node, {})
        for fld in _SENSOR_HUMAN:
            value = _text(own.get(fld, sensors_cfg.get(fld)))
            entry[fld] = value
            if value is None:
                missing.append(f"sensor register ({e.node}): {fld} — audit.toml [sensors] {fld}")
        sensors.append(entry)
    return {"format": "dordt-registers", "version": 1, "algorithm_register": algos,
            "sensor_register": sensors, "missing": missing}


def validate(doc: dict) -> list[str]:
    """Problems of an export against the field lists (empty when it conforms)."""
    problems = []
    for i, entry in enumerate(doc.get("algorithm_register", [])):
        for fld in ALGORITHM_FIELDS:
            if fld not in entry:
                problems.append(f"algorithm_register[{i}] has no field {fld}")
            elif entry[fld] in ("", []):
                problems.append(f"algorithm_register[{i}].{fld} is blank")
    for i, entry in enumerate(doc.get("sensor_register", [])):
        for fld in SENSOR_FIELDS:
            if fld not in entry:
                problems.append(f"sensor_register[{i}] has no field {fld}")
            elif entry[fld] in ("", []):
                problems.append(f"sensor_register[{i}].{fld} is blank")
    if len(doc.get("algorithm_register", [])) != len(ALGORITHMS):
        problems.append("the algorithm register needs an entry for crowd counting and one "
                        "for noise measurement")
    return problems


def check_registers(doc: dict) -> CheckResult:
    result = CheckResult("registers")
    for problem in validate(doc):
        result.add(problem, "registers")
    for item in doc["missing"]:
        result.add(f"{item} is missing: the privacy officer must fill it in before the entry "
                   "is published", "audit.toml")
    result.figures.update(algorithm_entries=len(doc["algorithm_register"]),
                          sensor_entries=len(doc["sensor_register"]),
                          missing=len(doc["missing"]))
    return result


_MISSING = "**MISSING: to be filled in by the privacy officer (audit.toml)**"


def to_markdown(doc: dict) -> str:
    out = ["# Register entries", "", "## Algoritmeregister", ""]
    for entry in doc["algorithm_register"]:
        out += [f"### {entry['name']}", ""]
        for fld in ALGORITHM_FIELDS[1:]:
            value = entry.get(fld)
            shown = value if value is not None else _MISSING
            out.append(f"- **{fld.replace('_', ' ')}**: {shown}")
        out.append("")
    out += ["## Sensor register", ""]
    for e in doc["sensor_register"]:
        out += [f"### Node {e['node']} ({e['zone']}, {e['site']})", ""]
        for fld in SENSOR_FIELDS[1:]:
            value = e.get(fld)
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            shown = value if value is not None else _MISSING
            out.append(f"- **{fld.replace('_', ' ')}**: {shown}")
        out.append("")
    if doc["missing"]:
        out += ["## Missing fields", ""] + [f"- {m}" for m in doc["missing"]] + [""]
    return "\n".join(out)
