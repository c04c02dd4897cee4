"""The emission manifest: what each node kind can send, generated from the firmware source.

In:  a firmware source tree (default: this checkout's `firmware/`).  The metric registry
(`firmware/metrics.py`) is loaded from that tree's own file; window ranges, defaults, the
status cadence and the fault bits are read from the node code's constants (sampler
modules and `config.py`) without running it.
Out: a JSON-able dict (`build_manifest`) and its Markdown (`to_markdown`), stamped with
the SHA-256 of the firmware source it was generated from (every `firmware/**/*.py`, by
path and bytes) and with each file's own hash, so `compare()` can say which files changed
when a manifest no longer matches the code.
On failure: `AuditInputError` naming the file and what is missing (a firmware tree
without a registry, a sampler whose window constants moved: update `_WINDOW_RULES`).

The committed manifest (`audit/manifest.json`) is the one the privacy officer approved;
`dordt audit manifest --check` reports any drift from the code, and the traffic audit
holds recordings to the approved one.  After a reviewed firmware change, regenerate it
with `dordt audit manifest --out audit/manifest.json`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
from pathlib import Path

from audit.findings import AuditInputError, CheckResult

FORMAT = "dordt-emission-manifest"
VERSION = 1
APPROVED_PATH = Path(__file__).with_name("manifest.json")
KINDS = ("air", "noise", "crowd")

# What never leaves a node of each kind, and why: the design claims of docs/privacy.md §2.
# The audits (traffic, store, linkability) are the evidence for each.
NEVER_LEAVES = {
    "crowd": ["Bluetooth (MAC) addresses of phones and other devices",
              "any hash, truncated hash or sketch of an address (kept in RAM for one window, "
              "under a key replaced every window)",
              "the per-window hashing key",
              "per-device signal strength or timing of single sightings"],
    "noise": ["audio samples (kept only in a RAM buffer that every read overwrites)",
              "band levels over windows shorter than 1 s"],
    "air": ["nothing about people is measured"],
}
PERSONAL_DATA = {
    "crowd": "processed on the node only: device addresses are hashed in RAM for one window "
             "to count distinct devices; only counts leave",
    "noise": "none leaves: audio stays in RAM on the node; only sound levels leave",
    "air": "none: physical measurements only",
}

# Where each kind's reporting window is set in the node code, and how to read its range.
# (module, defaults dict, key, how the range is written)
_WINDOW_RULES = {
    "crowd": ("measure/crowd.py", "_DEFAULTS", "window_s", ("dict", "_RANGES")),
    # the noise sampler's start-up checks live in noise_design.py (loaded, used, dropped)
    "noise": ("measure/noise.py", "DEFAULTS", "interval_s",
              ("regex", r"interval_s < (\d+) or interval_s > (\d+)"),
              "measure/noise_design.py"),
    "air": ("measure/air.py", "DEFAULTS", "interval_s",
            ("regex", r'_number\(cfg, "interval_s", (\d+), (\d+)\)')),
}
_STATUS_EVERY = re.compile(r'"status_every", "intervals\.status_every", (\d+), (\d+), (\d+)')


def default_firmware_root() -> Path:
    return Path(__file__).resolve().parent.parent / "firmware"


def firmware_files(root: Path) -> dict[str, str]:
    """{path relative to the tree: sha256 hex} of every Python source file."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def firmware_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(files.items()):
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def _load_registry(root: Path):
    path = root / "metrics.py"
    if not path.is_file():
        raise AuditInputError(f"{root}: no metrics.py: not a firmware source tree "
                              "(give the firmware/ folder)")
    spec = importlib.util.spec_from_file_location(f"_audit_metrics_{abs(hash(root))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken registry is the operator's input, not our crash
        raise AuditInputError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    return module


def _assigned(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def _fault_mask(tree: ast.Module) -> int:
    """OR of every FAULT_* = const(0x..) constant of a sampler module."""
    mask = 0
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.startswith("FAULT_")
                and isinstance(node.value, ast.Call) and node.value.args
                and isinstance(node.value.args[0], ast.Constant)
                and isinstance(node.value.args[0].value, int)):
            mask |= node.value.args[0].value
    return mask


def _window(root: Path, kind: str) -> dict:
    rel, defaults_name, key, (how, arg), *range_file = _WINDOW_RULES[kind]
    path = root / rel
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot be read ({exc.strerror})") from None
    tree = ast.parse(source)
    defaults = _assigned(tree, defaults_name) or {}
    if key not in defaults:
        raise AuditInputError(f"{path}: no {defaults_name}[{key!r}]: the sampler's window "
                              "setting moved; update audit/manifest.py _WINDOW_RULES")
    if how == "dict":
        lo, hi = (_assigned(tree, arg) or {}).get(key, (None, None))
    else:
        checks = source
        if range_file:
            try:
                checks = (root / range_file[0]).read_text(encoding="utf-8")
            except OSError as exc:
                raise AuditInputError(f"{root / range_file[0]}: cannot be read "
                                      f"({exc.strerror})") from None
        m = re.search(arg, checks)
        lo, hi = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if lo is None:
        raise AuditInputError(f"{path}: the range of {key} is not where audit/manifest.py "
                              "looks for it; update _WINDOW_RULES")
    return {"setting": key, "default_s": defaults[key], "min_s": lo, "max_s": hi,
            "fault_mask": _fault_mask(tree), "source": f"firmware/{rel}"}


def build_manifest(root: str | Path | None = None) -> dict:
    root = Path(root) if root else default_firmware_root()
    if not root.is_dir():
        raise AuditInputError(f"{root}: no such firmware folder")
    reg = _load_registry(root)
    files = firmware_files(root)
    # the config defaults are checked in config.py or, loaded only while checking,
    # config_check.py
    config_src = "".join((root / name).read_text(encoding="utf-8")
                         for name in ("config.py", "config_check.py") if (root / name).is_file())
    m = _STATUS_EVERY.search(config_src)
    status_every = int(m.group(1)) if m else None

    def row(metric) -> dict:
        return {"id": f"0x{metric.id:02x}", "name": metric.name, "unit": metric.unit,
                "resolution": 10.0 ** metric.exp if metric.exp < 0 else float(10 ** metric.exp),
                "min": metric.min, "max": metric.max}

    by_group: dict[str, list[dict]] = {}
    for metric in sorted(reg.BY_ID.values(), key=lambda m: m.id):
        by_group.setdefault(metric.group, []).append(row(metric))
    kinds = {}
    for kind in KINDS:
        window = _window(root, kind)
        kinds[kind] = {
            "kind_id": reg.KIND_IDS[kind],
            "metrics": by_group.get(kind, []),
            "window": window,
            "cadence": f"one measurement frame per window ({window['setting']}, default "
                       f"{window['default_s']} s, {window['min_s']}..{window['max_s']} s)",
            "never_leaves": NEVER_LEAVES[kind],
            "personal_data": PERSONAL_DATA[kind],
        }
    kinds["crowd"]["max_count"] = _crowd_table_limit(root)
    return {
        "format": FORMAT,
        "version": VERSION,
        "firmware_sha256": firmware_hash(files),
        "firmware_files": files,
        "kinds": kinds,
        "status": {
            "metrics": by_group.get(reg.GROUP_STATUS, []),
            "cadence": (f"a status frame every {status_every} measurement frames (default)"
                        if status_every else "status frames: cadence not in the config code"),
            "status_every_default": status_every,
        },
    }


def _crowd_table_limit(root: Path) -> int:
    """The most devices a crowd window can count: 3/4 of the largest hash table allowed."""
    tree = ast.parse((root / "measure/crowd.py").read_text(encoding="utf-8"))
    slots = (_assigned(tree, "_RANGES") or {}).get("table_slots", (0, 16384))[1]
    return slots * 3 // 4


def load_manifest(path: str | Path | None = None) -> dict:
    path = Path(path) if path else APPROVED_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditInputError(f"{path}: no such manifest; make one with "
                              "`dordt audit manifest --out FILE`") from None
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AuditInputError(f"{path}: not a dordt emission manifest (format {FORMAT!r})")
    return doc


def allowed_metrics(manifest: dict) -> dict[str, dict[int, dict]]:
    """{kind: {metric id: row}} a measurement frame may carry; "status" for status frames."""
    out = {kind: {int(r["id"], 16): r for r in spec["metrics"]}
           for kind, spec in manifest["kinds"].items()}
    out["status"] = {int(r["id"], 16): r for r in manifest["status"]["metrics"]}
    return out


def compare(approved: dict, current: dict, approved_name: str = "the manifest") -> CheckResult:
    """Does the approved manifest still describe the code?  Names what changed."""
    result = CheckResult("manifest")
    result.figures["firmware_sha256"] = current["firmware_sha256"][:16]
    result.figures["firmware_files"] = len(current["firmware_files"])
    if approved.get("firmware_sha256") == current["firmware_sha256"] and \
            approved.get("kinds") == current["kinds"] and approved.get("status") == \
            current["status"]:
        return result
    old_files, new_files = approved.get("firmware_files", {}), current["firmware_files"]
    changed = sorted(f for f in set(old_files) | set(new_files)
                     if old_files.get(f) != new_files.get(f))
    result.add(
        f"{approved_name} was generated from firmware {approved.get('firmware_sha256', '?')[:16]}"
        f", the code is now {current['firmware_sha256'][:16]}: it no longer matches the code"
        + (f" (changed: {', '.join('firmware/' + f for f in changed[:8])})" if changed else "")
        + "; review the change and regenerate it with `dordt audit manifest --out FILE`",
        where="firmware")
    for kind in (*KINDS, "status"):
        old = {r["name"]: r for r in _rows(approved, kind)}
        new = {r["name"]: r for r in _rows(current, kind)}
        for name in sorted(set(new) - set(old)):
            result.add(f"{kind} nodes can now emit a metric the approved manifest does not "
                       f"list: {name} ({new[name]['id']}, {new[name]['unit']})", where=kind)
        for name in sorted(set(old) - set(new)):
            result.add(f"{kind} metric {name} is no longer in the code", where=kind)
        for name in sorted(set(old) & set(new)):
            if old[name] != new[name]:
                result.add(f"{kind} metric {name} changed: {_diff(old[name], new[name])}",
                           where=kind)
        if kind != "status":
            ow = approved.get("kinds", {}).get(kind, {}).get("window")
            nw = current["kinds"][kind]["window"]
            if ow != nw:
                result.add(f"{kind} window settings changed: {_diff(ow or {}, nw)}", where=kind)
    return result


def _rows(manifest: dict, kind: str) -> list[dict]:
    if kind == "status":
        return manifest.get("status", {}).get("metrics", [])
    return manifest.get("kinds", {}).get(kind, {}).get("metrics", [])


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def to_markdown(manifest: dict) -> str:
    out = ["# What each node kind can emit", "",
           f"Generated from the firmware source, SHA-256 `{manifest['firmware_sha256']}` "
           f"({len(manifest['firmware_files'])} files).", ""]
    for kind, spec in manifest["kinds"].items():
        out += [f"## {kind} nodes", "", f"- Cadence: {spec['cadence']}.",
                f"- Personal data: {spec['personal_data']}.",
                "- Never leaves the node: " + "; ".join(spec["never_leaves"]) + ".", "",
                "| id | metric | unit | resolution | range |", "|---|---|---|---|---|"]
        out += [f"| {r['id']} | `{r['name']}` | {r['unit']} | {r['resolution']:g} | "
                f"{r['min']:g} .. {r['max']:g} |" for r in spec["metrics"]]
        out.append("")
    out += ["## Status frames (any kind)", "", f"- {manifest['status']['cadence']}.", "",
            "| id | metric | unit | resolution | range |", "|---|---|---|---|---|"]
    out += [f"| {r['id']} | `{r['name']}` | {r['unit']} | {r['resolution']:g} | "
            f"{r['min']:g} .. {r['max']:g} |" for r in manifest["status"]["metrics"]]
    return "\n".join(out) + "\n"
