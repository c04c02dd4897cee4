"""Firmware releases in the fleet: publish one, roll it out in stages, watch the evidence,
halt.

In:
- a release directory (docs/ota.md §1) and the release public key (32 bytes: 64 hex
  digits, as on a node's /release.pub);
- the fleet's nodes (`FleetNode`: kind, zone, board, the gateway serving it; the CLI
  takes them from the registry);
- a store (the gateway's sqlite local store or a VictoriaMetrics URL) holding the
  gateways' `ota` points (docs/ota.md §3) and the nodes' own signed `node_status` points
  (`firmware_version` as MMmmpp, `error_count`).

Out:
- `publish`: the release, verified, copied to the fleet's release store as
  `<releases>/<serial>/` (the layout a gateway's `[ota] releases` serves) and recorded in
  the registry (table `releases`, migration 0010);
- `start`/`step`/`halt`: the rollout's state in the registry (tables `rollouts`,
  `rollout_nodes`, `rollout_events`) and, per gateway, an offers file
  `<offers>/<gateway>/offers.json` (docs/ota.md §4, fleet/offers.py) naming the nodes
  offered the release and not yet updated.

Stages: the canaries, then the rest of one zone, then every other zone of the rollout
(the nodes are planned when the rollout starts; a node enrolled later waits for the next
release).  A stage's nodes are offered the release together; `step` looks at the store and
- advances when every node of the stage confirmed: a `node_status` point from the node,
  at or after its offer, with `firmware_version` equal to the release's version;
- halts by itself when a node of the stage has not confirmed within the stage's timeout
  (`canary_timeout_s` for the canaries), or when any node offered so far (the canaries
  stay watched while their zone updates) had its `error_count` rise by more than
  `max_error_rise` since its offer, or had its gateway report its `ota` state `refused`,
  `failed` or `rolled_back` for this release.  Halting withdraws the offers of every node
  not yet updated (its gateway's offers file is rewritten without them) and records why,
  in one line.  A halted rollout stays halted: the fix is a new release (a new serial).
Time is a parameter (`now_s`) everywhere, so tests drive a rollout through hours in
milliseconds.

On failure: `ReleaseError` (a release that cannot be published: bad signature, changed
file, serial used) and `RolloutError` (a rollout that cannot start or a command that does
not apply), each a sentence naming the value and what to do; the store's faults come as
`EvidenceError`.  Nothing secret passes through here: the release private key is never
read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleet import offers as offers_file
from fleet.files import mkdirs_private
from fleet.offers import OTA_STATE_NAMES, version_code
from fleet.release import ReleaseError

if TYPE_CHECKING:  # cryptography is imported where it is used: `dordt --help` stays quick
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

RELEASE_FORMAT = "dordt-release"
RELEASE_FORMAT_VERSION = 1

OTA_FAILED = frozenset({"refused", "failed", "rolled_back"})

STAGE_CANARY = "canary"
DEFAULT_CANARY_TIMEOUT_S = 3600
DEFAULT_STAGE_TIMEOUT_S = 6 * 3600
DEFAULT_MAX_ERROR_RISE = 5
# How far back an offer looks for a node's error_count: a node sends its status every
# 10 frames (firmware/node.py), 100 s at the default 10 s window.
BASELINE_LOOKBACK_S = 3600
_NODE = re.compile(r"[0-9a-f]{8}")


class RolloutError(ValueError):
    """A rollout command that cannot be done; the message says what and what to do."""


class EvidenceError(OSError):
    """The store could not be read; nothing was changed."""


class _Moved(Exception):
    """Another step changed the rollout after this one read it: this one's change is
    rolled back."""


# -- releases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A release's manifest (docs/ota.md §1) as the fleet records it."""

    serial: int
    version: str
    rollback: bool
    kinds: tuple[str, ...]
    hardware: tuple[str, ...]
    min_firmware: str
    size: int
    created_s: int
    manifest_sha256: str  # of release.json's bytes, so a record names exactly one release
    files: tuple[str, ...] = field(default=(), compare=False)

    @property
    def version_code(self) -> int:
        return version_code(self.version)

    def to_json(self) -> dict:
        return {"serial": self.serial, "version": self.version, "rollback": self.rollback,
                "kinds": list(self.kinds), "hardware": list(self.hardware),
                "min_firmware": self.min_firmware, "size": self.size,
                "created": self.created_s, "manifest_sha256": self.manifest_sha256}


def load_public_key(path: str | Path) -> bytes:
    """The release public key (release.pub, 64 hex digits, as on the nodes): fleet/release.py."""
    from fleet.release import load_public_key as load

    return load(Path(path))


def read_release(path: str | Path, public_key: bytes | Ed25519PublicKey) -> Release:
    """Check a release directory as a node would before taking it (fleet/release.py's
    verify_release: the signature over release.json, the document by the node's own rules,
    every file's size and SHA-256, nothing extra), then read what a rollout plans with.
    Raises ReleaseError."""
    from fleet.release import verify_release

    checked = verify_release(Path(path), public_key)
    try:
        return _release_from_json(checked.doc, hashlib.sha256(checked.json_bytes).hexdigest())
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{Path(path) / 'release.json'}: signed, but not a release this "
                           f"fleet reads ({exc})") from None


def _release_from_json(doc: dict, sha: str) -> Release:
    if doc.get("format") != RELEASE_FORMAT or doc.get("format_version") != RELEASE_FORMAT_VERSION:
        raise ValueError(f"format {doc.get('format')!r} version {doc.get('format_version')!r}, "
                         f"expected {RELEASE_FORMAT!r} version {RELEASE_FORMAT_VERSION}")
    serial = doc["serial"]
    if type(serial) is not int or serial < 1:
        raise ValueError(f"serial {serial!r} is not an integer >= 1")
    version_code(doc["version"])
    version_code(doc["min_firmware"])
    files = doc["files"]
    if not isinstance(files, list) or not files:
        raise ValueError("no files")
    paths = []
    for entry in files:
        p = entry["path"]
        if not isinstance(p, str) or not p or p.startswith("/") or ".." in p.split("/") \
                or "\\" in p:
            raise ValueError(f"file path {p!r} is not a relative path inside files/")
        paths.append(p)
    if len(set(paths)) != len(paths):
        raise ValueError("a file is listed twice")
    if "MANIFEST.json" not in paths:
        raise ValueError("files/MANIFEST.json, the slot manifest, is not listed")
    if doc["size"] != sum(entry["size"] for entry in files):
        raise ValueError(f"size {doc['size']!r} is not the sum of the files' sizes")
    return Release(serial, doc["version"], doc["rollback"] is True,
                   tuple(str(k) for k in doc["kinds"]), tuple(str(h) for h in doc["hardware"]),
                   doc["min_firmware"], int(doc["size"]), int(doc["created"]), sha,
                   tuple(paths))


def publish(book: RolloutBook, release_dir: str | Path, public_key: bytes | Ed25519PublicKey,
            releases_dir: str | Path, now_s: float) -> Release:
    """Verify a release, copy it to `releases_dir/<serial>/` and record it.  A serial is
    used once, ever, and must be above every published one (docs/ota.md §1: nodes refuse
    a serial at or below the last they installed)."""
    release = read_release(release_dir, public_key)
    known = book.release(release.serial)
    if known is not None:
        same = "this same release" if known.manifest_sha256 == release.manifest_sha256 \
            else f"release {known.version}"
        raise ReleaseError(f"serial {release.serial} is already used by {same} (published "
                           "before); a serial is used once: build the release again with "
                           "a new serial")
    highest = book.highest_serial()
    if highest is not None and release.serial < highest:
        raise ReleaseError(f"serial {release.serial} is below the last published serial "
                           f"{highest}: nodes that took it would refuse this one; build "
                           f"the release again with a serial above {highest}")
    _copy_release(Path(release_dir), release, Path(releases_dir), public_key)
    book.add_release(release, Path(releases_dir) / str(release.serial), now_s)
    return release


def _copy_release(src: Path, release: Release, releases_dir: Path,
                  public_key: bytes | Ed25519PublicKey) -> None:
    """Copy only what release.json names (plus the manifest and signature) into a temporary
    directory beside the target, check the copy again (the source may have changed since
    it was checked), then rename it into place: a gateway syncing the store sees the whole
    release or none of it."""
    mkdirs_private(releases_dir)
    target = releases_dir / str(release.serial)
    tmp = releases_dir / f".{release.serial}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    for name in ("release.json", "release.sig"):
        shutil.copyfile(src / name, tmp / name)
    for rel in release.files:
        dst = tmp / "files" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "files" / rel, dst)
    try:
        copied = read_release(tmp, public_key)
    except ReleaseError:
        copied = None
    if copied is None or copied.manifest_sha256 != release.manifest_sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReleaseError(f"{src}: changed while it was being published; nothing was "
                           "published, try again when it is complete")
    if target.exists():  # left by a publish that died before recording it (never recorded)
        shutil.rmtree(target)
    os.replace(tmp, target)


# -- the fleet, as a rollout sees it ------------------------------------------------------------


@dataclass(frozen=True)
class FleetNode:
    node: str  # 8 hex digits
    kind: str
    zone: str
    hardware: str | None  # board profile; None when the registry does not know it
    gateways: tuple[str, ...]  # the gateways that may serve it; none: nothing can be offered
    firmware: str | None = None  # "M.m.p" it runs, as the registry knows; None: unknown


@dataclass(frozen=True)
class RolloutPlan:
    """Which node is offered the release in which stage; stage 0 is the canaries."""

    stages: tuple[tuple[str, tuple[FleetNode, ...]], ...]  # (stage name, nodes)
    skipped: tuple[tuple[str, str], ...] = ()  # (node, why) of nodes left out

    @property
    def nodes(self) -> list[FleetNode]:
        return [n for _, nodes in self.stages for n in nodes]


def fleet_nodes(registry) -> list[FleetNode]:
    """The registry's active nodes with the gateways that may serve each: its own gateway
    when it has one, else every active gateway of its zone (fleet/registry.py)."""
    gateways = [g for g in registry.gateways() if g["state"] == "active"]
    by_zone: dict[str, list[str]] = {}
    for g in gateways:
        by_zone.setdefault(g["zone"], []).append(g["name"])
    active = {g["name"] for g in gateways}
    out = []
    for n in registry.nodes(state="active"):
        own = n.get("gateway")
        serving = ((own,) if own in active else ()) if own else tuple(by_zone.get(n["zone"], ()))
        out.append(FleetNode(n["node"], n["kind"], n["zone"], n.get("hardware") or None,
                             serving, n.get("firmware") or None))
    return out


def plan_rollout(release: Release, nodes: Iterable[FleetNode], canaries: Sequence[str] = (),
                 zones: Sequence[str] = ()) -> RolloutPlan:
    """Stages for `release` over the active `nodes`: the canaries (default: the first node
    of the first zone that the release is for), then the rest of the first zone (`zones[0]`,
    default the first canary's zone), then the rest of `zones` (default: every zone).
    Nodes whose kind or board the release is not for, or that no gateway serves, are left
    out and listed in `skipped`."""
    nodes = sorted(nodes, key=lambda n: n.node)
    by_id = {n.node: n for n in nodes}
    zone_set = set(zones)
    eligible, skipped = [], []
    for n in nodes:
        why = _not_for(release, n)
        if zone_set and n.zone not in zone_set:
            continue
        if why:
            skipped.append((n.node, why))
        else:
            eligible.append(n)
    if not eligible:
        raise RolloutError(f"release {release.serial} ({release.version}) is for no node of "
                           f"{'zones ' + ', '.join(zones) if zones else 'the fleet'}: "
                           f"kinds {', '.join(release.kinds)}, boards "
                           f"{', '.join(release.hardware)}")
    ok = {n.node for n in eligible}
    chosen = []
    for c in canaries:
        if c not in by_id:
            raise RolloutError(f"canary {c!r} is no active node of the registry; give node ids "
                               "from `dordt fleet ls`")
        if c not in ok:
            why = _not_for(release, by_id[c]) or f"it is in zone {by_id[c].zone}, not in " \
                f"--zones {','.join(zones)}"
            raise RolloutError(f"canary {c} cannot take release {release.serial}: {why}")
        if by_id[c] not in chosen:
            chosen.append(by_id[c])
    first_zone = zones[0] if zones else (chosen[0].zone if chosen else eligible[0].zone)
    if not chosen:
        in_zone = [n for n in eligible if n.zone == first_zone]
        if not in_zone:
            raise RolloutError(f"zone {first_zone} has no node release {release.serial} is "
                               "for: give --canary nodes or another first zone")
        chosen = [in_zone[0]]
    taken = {n.node for n in chosen}
    zone_nodes = tuple(n for n in eligible if n.zone == first_zone and n.node not in taken)
    taken |= {n.node for n in zone_nodes}
    rest = tuple(n for n in eligible if n.node not in taken)
    stages = [(STAGE_CANARY, tuple(chosen))]
    if zone_nodes:
        stages.append((f"zone {first_zone}", zone_nodes))
    if rest:
        other = sorted({n.zone for n in rest})
        stages.append((f"zones {', '.join(other)}", rest))
    return RolloutPlan(tuple(stages), tuple(skipped))


def _not_for(release: Release, n: FleetNode) -> str:
    if n.kind not in release.kinds:
        return f"the release is for kinds {', '.join(release.kinds)}, the node is {n.kind}"
    if n.hardware is not None and n.hardware not in release.hardware:
        return f"the release is for boards {', '.join(release.hardware)}, the node is " \
            f"{n.hardware}"
    if not n.gateways:
        return "no active gateway serves it (its own or its zone's)"
    # what the node itself would refuse (docs/ota.md §2), when the registry knows what it
    # runs: offered anyway, it could only stall its stage until the timeout
    try:
        running = version_code(n.firmware) if n.firmware else None
    except ValueError:
        running = None
    if running is not None:
        if running < version_code(release.min_firmware):
            return f"it runs {n.firmware}, below the release's min_firmware " \
                f"{release.min_firmware}"
        if running > release.version_code and not release.rollback:
            return f"it runs {n.firmware}, newer than {release.version} (not a rollback " \
                "release)"
    return ""


# -- evidence from the store --------------------------------------------------------------------


@dataclass(frozen=True)
class StatusSample:
    time_s: int
    firmware_version: int | None  # MMmmpp
    error_count: int | None


@dataclass(frozen=True)
class OtaSample:
    time_s: int
    serial: int
    state: str  # a name of OTA_STATES, or "unknown"
    gateway: str | None = None


@dataclass
class Evidence:
    """Per node, its status samples and its gateway's `ota` samples, oldest first."""

    status: dict[str, list[StatusSample]] = field(default_factory=dict)
    ota: dict[str, list[OtaSample]] = field(default_factory=dict)

    def sort(self) -> Evidence:
        for samples in (*self.status.values(), *self.ota.values()):
            samples.sort(key=lambda s: s.time_s)
        return self


class StoreEvidence:
    """Reads `node_status` and `ota` points of given nodes from a store the way the
    project does: a local store file through `LocalStore.points()` (indexed queries per
    node and field), a VictoriaMetrics URL through gateway/provenance.py's
    `read_victoriametrics` (one export of both measurements)."""

    def __init__(self, spec: str):
        self.spec = spec.strip()
        if self.spec.startswith(("http://", "https://")):
            self._read = self._read_vm
        else:
            path = self.spec.removeprefix("sqlite:").removeprefix("//")
            if not path:
                raise RolloutError(f"store {spec!r}: give sqlite:PATH or http://HOST:PORT")
            self._path = Path(path)
            self._read = self._read_local

    def read(self, since_s: Mapping[str, int], until_s: int) -> Evidence:
        """The points of each node of `since_s` from its own start time to `until_s`."""
        if not since_s:
            return Evidence()
        try:
            return self._read({k: int(v) for k, v in since_s.items()}, int(until_s)).sort()
        except (OSError, sqlite3.Error, ValueError) as exc:
            raise EvidenceError(f"cannot read the store {_redact(self.spec)}: "
                                f"{getattr(exc, 'strerror', None) or exc}; nothing was "
                                "changed, run the step again") from None

    def _read_local(self, since_s: dict[str, int], until_s: int) -> Evidence:
        from gateway.forward.local import LocalStore

        store = LocalStore(self._path, create=False)
        ev = Evidence()
        try:
            for node, since in since_s.items():
                def series(measurement: str, name: str, node=node, since=since
                           ) -> dict[int, float]:
                    return {p.time_s: p.value for p in store.points(measurement, name, node, since)
                            if p.time_s <= until_s}

                fw = series("node_status", "firmware_version")
                errors = series("node_status", "error_count")
                if fw or errors:
                    ev.status[node] = [StatusSample(t, _int(fw.get(t)), _int(errors.get(t)))
                                       for t in fw.keys() | errors.keys()]
                serials, states = series("ota", "serial"), series("ota", "state")
                if serials:
                    ev.ota[node] = [OtaSample(t, int(serials[t]), _state_name(states[t]))
                                    for t in serials.keys() & states.keys()]
        finally:
            store.close()
        return ev

    def _read_vm(self, since_s: dict[str, int], until_s: int) -> Evidence:
        from gateway.provenance import read_victoriametrics

        ev = Evidence()
        for p in read_victoriametrics(self.spec, min(since_s.values()), until_s,
                                      measurements=("node_status", "ota"),
                                      fields=("firmware_version", "error_count", "serial",
                                              "state")):
            node = p.tags.get("node")
            if node not in since_s or p.time_s < since_s[node]:
                continue
            if p.measurement == "node_status":
                ev.status.setdefault(node, []).append(StatusSample(
                    p.time_s, _int(p.fields.get("firmware_version")),
                    _int(p.fields.get("error_count"))))
            elif "serial" in p.fields and "state" in p.fields:
                ev.ota.setdefault(node, []).append(OtaSample(
                    p.time_s, int(p.fields["serial"]), _state_name(p.fields["state"]),
                    p.tags.get("gateway")))
        return ev


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _state_name(value: float) -> str:
    return OTA_STATE_NAMES.get(int(value), "unknown")


def _redact(spec: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", spec)


# -- the rollout's record (registry tables of migration 0010) ------------------------------------


class RolloutBook:
    """The releases and rollouts tables of the registry, over its sqlite3 connection.
    Every change is one transaction."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    # releases
    def release(self, serial: int) -> Release | None:
        row = self.db.execute(
            "SELECT serial, version, rollback, kinds, hardware, min_firmware, size, "
            "created_s, manifest_sha256 FROM releases WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            return None
        return Release(row[0], row[1], bool(row[2]), tuple(json.loads(row[3])),
                       tuple(json.loads(row[4])), row[5], row[6], row[7], row[8])

    def releases(self) -> list[Release]:
        serials = [r[0] for r in self.db.execute("SELECT serial FROM releases ORDER BY serial")]
        return [r for r in (self.release(s) for s in serials) if r is not None]

    def release_path(self, serial: int) -> str | None:
        row = self.db.execute("SELECT path FROM releases WHERE serial = ?",
                              (serial,)).fetchone()
        return None if row is None else row[0]

    def highest_serial(self) -> int | None:
        return self.db.execute("SELECT MAX(serial) FROM releases").fetchone()[0]

    def add_release(self, release: Release, path: Path, now_s: float) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO releases (serial, version, rollback, kinds, hardware, "
                "min_firmware, size, created_s, manifest_sha256, path, published_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (release.serial, release.version, int(release.rollback),
                 json.dumps(list(release.kinds)), json.dumps(list(release.hardware)),
                 release.min_firmware, release.size, release.created_s,
                 release.manifest_sha256, str(path), int(now_s)))

    # rollouts
    def rollout(self, serial: int) -> dict | None:
        cur = self.db.execute("SELECT * FROM rollouts WHERE serial = ?", (serial,))
        row = cur.fetchone()
        if row is None:
            return None
        doc = dict(zip([c[0] for c in cur.description], row, strict=True))
        doc["stages"] = json.loads(doc["stages"])
        return doc

    def rollouts(self, state: str | None = None) -> list[dict]:
        sql = "SELECT serial FROM rollouts"
        params: tuple = ()
        if state is not None:
            sql += " WHERE state = ?"
            params = (state,)
        serials = [r[0] for r in self.db.execute(sql + " ORDER BY serial", params)]
        return [r for r in (self.rollout(s) for s in serials) if r is not None]

    def nodes(self, serial: int) -> list[dict]:
        cur = self.db.execute("SELECT * FROM rollout_nodes WHERE serial = ? ORDER BY stage, node",
                              (serial,))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def events(self, serial: int) -> list[tuple[int, str]]:
        return list(self.db.execute(
            "SELECT at_s, message FROM rollout_events WHERE serial = ? ORDER BY id", (serial,)))

    def offered(self, gateway: str) -> list[tuple[str, int]]:
        """(node, serial) of every node this gateway should offer a release to now."""
        return [(node, serial) for node, serial in self.db.execute(
            "SELECT n.node, n.serial FROM rollout_nodes n, json_each(n.gateways) g "
            "WHERE g.value = ? AND n.state = 'offered' ORDER BY n.node, n.serial", (gateway,))]

    def left_fleet(self, serial: int) -> list[str]:
        """Nodes of the rollout, not yet updated, that the registry no longer has active
        (retired or revoked since the rollout started; fleet/registry.py's nodes)."""
        return [r[0] for r in self.db.execute(
            "SELECT r.node FROM rollout_nodes r JOIN nodes n ON n.node = r.node "
            "WHERE r.serial = ? AND r.state IN ('planned', 'offered') AND n.state != 'active' "
            "ORDER BY r.node", (serial,))]

    def gateways(self, serial: int) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT g.value FROM rollout_nodes n, json_each(n.gateways) g "
            "WHERE n.serial = ? ORDER BY g.value", (serial,))]


# -- the rollout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutSettings:
    canary_timeout_s: int = DEFAULT_CANARY_TIMEOUT_S
    stage_timeout_s: int = DEFAULT_STAGE_TIMEOUT_S
    max_error_rise: int = DEFAULT_MAX_ERROR_RISE

    def check(self) -> None:
        for name in ("canary_timeout_s", "stage_timeout_s"):
            if getattr(self, name) <= 0:
                raise RolloutError(f"--{name.removesuffix('_s').replace('_', '-')} "
                                   f"{getattr(self, name)}: give seconds, more than 0")
        if self.max_error_rise < 0:
            raise RolloutError(f"--max-error-rise {self.max_error_rise}: give 0 or more")


@dataclass(frozen=True)
class StepResult:
    serial: int
    state: str  # running | halted | done
    stage: int
    stage_name: str
    line: str  # one sentence for the operator
    confirmed: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()


class Rollouts:
    """Start, step, halt and report rollouts.  `evidence` reads the store; offers files
    are written under `offers_dir/<gateway>/offers.json`."""

    def __init__(self, book: RolloutBook, offers_dir: str | Path,
                 evidence: StoreEvidence | None = None):
        self.book = book
        self.offers_dir = Path(offers_dir)
        self.evidence = evidence

    # -- start ------------------------------------------------------------------------

    def start(self, serial: int, nodes: Iterable[FleetNode], now_s: float,
              canaries: Sequence[str] = (), zones: Sequence[str] = (),
              settings: RolloutSettings = RolloutSettings(),
              store_spec: str = "") -> StepResult:
        settings.check()
        release = self.book.release(serial)
        if release is None:
            raise RolloutError(f"release {serial} is not published: run `dordt fleet release "
                               "publish DIR` first (`release status` lists published ones)")
        if self.book.rollout(serial) is not None:
            raise RolloutError(f"release {serial} has been rolled out already (see `dordt "
                               f"fleet release status {serial}`); a halted release stays "
                               "halted: publish a fixed one with a new serial")
        running = self.book.rollouts("running")
        if running:
            raise RolloutError(f"the rollout of release {running[0]['serial']} is still "
                               "running: let it finish or halt it first (`dordt fleet "
                               f"release halt {running[0]['serial']}`)")
        plan = plan_rollout(release, nodes, canaries, zones)
        now = int(now_s)
        stages = [name for name, _ in plan.stages]
        members = plan.stages[0][1]
        # the store is read before anything is recorded: a store that cannot be read leaves
        # no half-started rollout behind
        baselines = self._baselines([n.node for n in members], now)
        with self.book.db:
            self.book.db.execute(
                "INSERT INTO rollouts (serial, state, stage, stages, canary_timeout_s, "
                "stage_timeout_s, max_error_rise, store, offers, started_s, stage_started_s, "
                "updated_s, reason) VALUES (?, 'running', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                (serial, json.dumps(stages), settings.canary_timeout_s,
                 settings.stage_timeout_s, settings.max_error_rise, store_spec,
                 str(self.offers_dir), now, now, now))
            self.book.db.executemany(
                "INSERT INTO rollout_nodes (serial, node, gateways, zone, stage, state) "
                "VALUES (?, ?, ?, ?, ?, 'planned')",
                [(serial, n.node, json.dumps(list(n.gateways)), n.zone, i)
                 for i, (_, stage_nodes) in enumerate(plan.stages) for n in stage_nodes])
            self._event(serial, now, f"started: {len(plan.nodes)} node(s) in "
                        f"{len(stages)} stage(s) ({'; '.join(stages)}); "
                        f"{len(plan.skipped)} left out")
            self._mark_offered(serial, 0, [n.node for n in members], baselines, now)
        self.write_offers(serial, now)
        return StepResult(serial, "running", 0, STAGE_CANARY,
                          f"release {serial} ({release.version}) offered to "
                          f"{len(members)} canary node(s): "
                          f"{', '.join(n.node for n in members)}; then "
                          f"{'; then '.join(stages[1:]) or 'done'}"
                          + (f" ({len(plan.skipped)} node(s) left out: the release is not "
                             "for them)" if plan.skipped else ""))

    def _offer_stage(self, serial: int, stage: int, now: int, event: str) -> None:
        members = [n["node"] for n in self.book.nodes(serial)
                   if n["stage"] == stage and n["state"] == "planned"]
        baselines = self._baselines(members, now)
        with self.book.db:
            self._mark_offered(serial, stage, members, baselines, now, from_stage=stage - 1)
            self._event(serial, now, event)
        self.write_offers(serial, now)

    def _mark_offered(self, serial: int, stage: int, members: list[str],
                      baselines: dict[str, int], now: int, from_stage: int | None = None
                      ) -> None:
        """In the caller's transaction: the stage's nodes are offered from now on.  With
        `from_stage`, only if the rollout is still running at that stage (else _Moved)."""
        sql = ("UPDATE rollouts SET stage = ?, stage_started_s = ?, updated_s = ? "
               "WHERE serial = ?")
        params: tuple = (stage, now, now, serial)
        if from_stage is not None:
            sql += " AND state = 'running' AND stage = ?"
            params += (from_stage,)
        if self.book.db.execute(sql, params).rowcount != 1:
            raise _Moved
        self.book.db.executemany(
            "UPDATE rollout_nodes SET state = 'offered', offered_s = ?, baseline_errors = ? "
            "WHERE serial = ? AND node = ?",
            [(now, baselines.get(node), serial, node) for node in members])

    def _baselines(self, nodes: list[str], now: int) -> dict[str, int]:
        """Each node's newest error_count before its offer (the rise is counted from it)."""
        if self.evidence is None:
            return {}
        ev = self.evidence.read(dict.fromkeys(nodes, now - BASELINE_LOOKBACK_S), now)
        out = {}
        for node in nodes:
            counts = [s.error_count for s in ev.status.get(node, [])
                      if s.error_count is not None]
            if counts:
                out[node] = counts[-1]
        return out

    # -- offers files -------------------------------------------------------------------

    def write_offers(self, serial: int, now: int) -> list[Path]:
        """Rewrite the offers file of every gateway serving a node of the rollout, from the
        registry (so a file always says what the registry says, even after a crash
        between the two: the next step or halt writes it again); a file whose offers are
        already right is left as it is.  The paths written."""
        written = []
        for gateway in self.book.gateways(serial):
            offers = self.book.offered(gateway)
            path = self.offers_dir / gateway / offers_file.FILE_NAME
            try:
                if offers_file.read_offers(path) == offers:
                    continue  # unchanged: a gateway re-reads the file whenever it changes
            except offers_file.OffersError:
                pass  # missing or unreadable: written anew
            offers_file.write_offers(path, offers, now)
            written.append(path)
        return written

    # -- step -------------------------------------------------------------------------

    def step(self, serial: int, now_s: float) -> StepResult:
        """Look at the evidence once: advance, halt, finish, or wait.  Two steps at once
        (cron and a watch) are safe: each move is made only from the state it was decided
        on, and the later step does nothing."""
        try:
            return self._step(serial, now_s)
        except _Moved:
            return self._result(self._rollout(serial),
                                f"release {serial}: another step moved the rollout on "
                                "meanwhile; this one changed nothing")

    def _step(self, serial: int, now_s: float) -> StepResult:
        r = self._rollout(serial)
        now = int(now_s)
        if r["state"] != "running":
            return self._result(r, f"release {serial}: the rollout is {r['state']}"
                                + (f" ({r['reason']})" if r["reason"] else ""))
        if self.evidence is None:
            raise RolloutError("a step needs the store: give --store")
        release = self.book.release(serial)
        assert release is not None  # a rollout row references its release
        stage = r["stage"]
        left = self.book.left_fleet(serial)
        if left:  # retired or revoked meanwhile: never waited for, offers withdrawn
            with self.book.db:
                self.book.db.executemany(
                    "UPDATE rollout_nodes SET state = 'left' WHERE serial = ? AND node = ?",
                    [(serial, node) for node in left])
                self._event(serial, now, f"left the fleet (retired or revoked in the "
                            f"registry), no longer offered: {', '.join(left)}")
        # Every node offered so far stays watched: a canary whose errors rise while its
        # zone updates halts the rollout as surely as one that never confirms.
        watched = [n for n in self.book.nodes(serial) if n["state"] in ("offered", "confirmed")]
        # a node's evidence counts from its offer; node clocks may run a little ahead
        ev = self.evidence.read({n["node"]: n["offered_s"] for n in watched}, now + 3600)
        code = release.version_code
        confirmed, waiting, problems, progress = [], [], [], []
        for n in watched:
            node = n["node"]
            status = ev.status.get(node, [])
            mine = [o for o in ev.ota.get(node, []) if o.serial == serial]
            if mine and (n["ota_s"] is None or mine[-1].time_s > n["ota_s"]):
                progress.append((mine[-1].state, mine[-1].time_s, serial, node))
            failed = [o for o in ev.ota.get(node, [])
                      if o.serial == serial and o.state in OTA_FAILED]
            rise = _error_rise(n["baseline_errors"], status)
            what = "canary" if n["stage"] == 0 else "node"
            if failed:
                problems.append(f"{what} {node} reported {failed[-1].state}")
            elif rise > r["max_error_rise"]:
                problems.append(f"{what} {node}'s error_count rose by {rise} (limit "
                                f"{r['max_error_rise']})")
            elif n["state"] != "offered":
                continue
            elif any(s.firmware_version == code for s in status):
                confirmed.append(node)
            else:
                waiting.append(node)
        if progress:
            with self.book.db:
                self.book.db.executemany("UPDATE rollout_nodes SET ota_state = ?, ota_s = ? "
                                         "WHERE serial = ? AND node = ?", progress)
        if confirmed:
            with self.book.db:
                # only nodes still offered: a step running at the same time may have
                # recorded them already
                confirmed = [node for node in confirmed if self.book.db.execute(
                    "UPDATE rollout_nodes SET state = 'confirmed', confirmed_s = ? "
                    "WHERE serial = ? AND node = ? AND state = 'offered'",
                    (now, serial, node)).rowcount]
                # the registry's record of what each node runs (fleet/registry.py, nodes)
                self.book.db.executemany("UPDATE nodes SET firmware = ? WHERE node = ?",
                                         [(release.version, n) for n in confirmed])
                if confirmed:
                    self._event(serial, now, f"confirmed: {', '.join(confirmed)}")
        name = r["stages"][stage]
        who = "canary" if stage == 0 else "node"
        if problems:
            return self._halt(serial, now, f"stage {name}: {'; '.join(problems)}", stage)
        timeout = r["canary_timeout_s"] if stage == 0 else r["stage_timeout_s"]
        if waiting:
            if now - r["stage_started_s"] >= timeout:
                return self._halt(serial, now, f"stage {name}: {who}(s) {', '.join(waiting)} "
                                  f"did not confirm {release.version} within {timeout} s",
                                  stage)
            self.write_offers(serial, now)  # also repairs a file a crash left behind
            left = timeout - (now - r["stage_started_s"])
            return self._result(self._rollout(serial),
                                f"release {serial}: stage {name}: waiting for "
                                f"{len(waiting)} node(s) ({', '.join(waiting[:5])}"
                                f"{', ...' if len(waiting) > 5 else ''}), {left} s left",
                                confirmed, waiting)
        if stage + 1 < len(r["stages"]):
            self._offer_stage(serial, stage + 1, now,
                              f"stage {name} confirmed; next: {r['stages'][stage + 1]}")
            return self._result(self._rollout(serial),
                                f"release {serial}: stage {name} confirmed; offered to "
                                f"{r['stages'][stage + 1]}", confirmed)
        with self.book.db:
            if self.book.db.execute(
                    "UPDATE rollouts SET state = 'done', updated_s = ? WHERE serial = ? "
                    "AND state = 'running' AND stage = ?", (now, serial, stage)).rowcount != 1:
                raise _Moved
            self._event(serial, now, "done: every node confirmed")
        self.write_offers(serial, now)
        return self._result(self._rollout(serial),
                            f"release {serial} ({release.version}): rollout done, every node "
                            "confirmed", confirmed)

    def watch(self, serial: int, clock: Callable[[], float] = time.time,
              sleep: Callable[[float], None] = time.sleep, interval_s: float = 60,
              max_steps: int = 1000, report: Callable[[StepResult], None] | None = None
              ) -> StepResult:
        """Step until the rollout is halted or done, at most `max_steps` times."""
        if max_steps < 1:
            raise RolloutError(f"--max-steps {max_steps}: give 1 or more")
        result = None
        for n in range(max_steps):
            if n:
                sleep(interval_s)
            result = self.step(serial, clock())
            if report is not None:
                report(result)
            if result.state != "running":
                break
        assert result is not None
        return result

    # -- halt -------------------------------------------------------------------------

    def halt(self, serial: int, now_s: float, reason: str = "halted by the operator"
             ) -> StepResult:
        self._rollout(serial)  # one that does not exist is an error
        try:
            return self._halt(serial, int(now_s), reason)
        except _Moved:  # done or halted already (perhaps by a step just now)
            r = self._rollout(serial)
            # still rewrite the files: they say what the registry says
            self.write_offers(serial, int(now_s))
            return self._result(r, f"release {serial}: the rollout is {r['state']} already; "
                                "offers files rewritten")

    def _halt(self, serial: int, now: int, reason: str, stage: int | None = None
              ) -> StepResult:
        """Halt a running rollout (at `stage`, when given; else _Moved)."""
        sql = ("UPDATE rollouts SET state = 'halted', reason = ?, updated_s = ? "
               "WHERE serial = ? AND state = 'running'")
        params: tuple = (reason, now, serial)
        if stage is not None:
            sql += " AND stage = ?"
            params += (stage,)
        with self.book.db:
            if self.book.db.execute(sql, params).rowcount != 1:
                raise _Moved
            n = self.book.db.execute(
                "UPDATE rollout_nodes SET state = 'withdrawn' WHERE serial = ? "
                "AND state = 'offered'", (serial,)).rowcount
            self._event(serial, now, f"HALTED: {reason}; offers withdrawn from {n} node(s)")
        self.write_offers(serial, now)
        never = sum(1 for x in self.book.nodes(serial) if x["state"] == "planned")
        return self._result(self._rollout(serial),
                            f"release {serial} HALTED: {reason}; offers withdrawn from {n} "
                            f"node(s) not yet updated, {never} never offered")

    # -- reports ----------------------------------------------------------------------

    def status(self, serial: int) -> dict:
        """The rollout of one release, for `release status SERIAL --json`."""
        release = self.book.release(serial)
        if release is None:
            raise RolloutError(f"release {serial} is not published (`dordt fleet release "
                               "status` lists the published ones)")
        doc = {"release": release.to_json(), "path": self.book.release_path(serial),
               "rollout": None}
        r = self.book.rollout(serial)
        if r is not None:
            nodes = self.book.nodes(serial)
            counts: dict[str, int] = {}
            for n in nodes:
                counts[n["state"]] = counts.get(n["state"], 0) + 1
            doc["rollout"] = {
                "state": r["state"], "stage": r["stage"], "stage_name": r["stages"][r["stage"]],
                "stages": r["stages"], "reason": r["reason"], "started_s": r["started_s"],
                "stage_started_s": r["stage_started_s"], "updated_s": r["updated_s"],
                "canary_timeout_s": r["canary_timeout_s"],
                "stage_timeout_s": r["stage_timeout_s"], "max_error_rise": r["max_error_rise"],
                "nodes_by_state": counts,
                "nodes": [{**{k: n[k] for k in ("node", "zone", "stage", "state", "offered_s",
                                                "confirmed_s", "baseline_errors", "ota_state",
                                                "ota_s")},
                           "gateways": json.loads(n["gateways"])} for n in nodes],
                "events": [{"at_s": at, "message": m} for at, m in self.book.events(serial)],
            }
        return doc

    def summary(self) -> list[dict]:
        """Every published release with its rollout's state, for `release status`."""
        out = []
        for rel in self.book.releases():
            r = self.book.rollout(rel.serial)
            out.append({"serial": rel.serial, "version": rel.version,
                        "rollback": rel.rollback, "kinds": list(rel.kinds),
                        "rollout": None if r is None else r["state"],
                        "stage": None if r is None else r["stages"][r["stage"]],
                        "reason": "" if r is None else r["reason"]})
        return out

    # -- internals --------------------------------------------------------------------

    def _rollout(self, serial: int) -> dict:
        r = self.book.rollout(serial)
        if r is None:
            known = self.book.release(serial) is not None
            raise RolloutError(f"release {serial} has no rollout" + (
                f": start one with `dordt fleet release rollout {serial}`" if known else
                " and is not published"))
        return r

    def _event(self, serial: int, now: int, message: str) -> None:
        self.book.db.execute("INSERT INTO rollout_events (serial, at_s, message) "
                             "VALUES (?, ?, ?)", (serial, now, message))

    def _result(self, r: dict, line: str, confirmed: Sequence[str] = (),
                waiting: Sequence[str] = ()) -> StepResult:
        return StepResult(r["serial"], r["state"], r["stage"], r["stages"][r["stage"]], line,
                          tuple(confirmed), tuple(waiting))


def _error_rise(baseline: int | None, status: list[StatusSample]) -> int:
    """How far a node's error_count rose since its offer, from the newest count before
    it (`baseline`; when the store had none, from the first count after it).  A node
    restarts when it switches to a release, and its counter starts again from 0."""
    counts = [s.error_count for s in status if s.error_count is not None]
    if not counts:
        return 0
    rise, previous = 0, counts[0] if baseline is None else baseline
    for count in counts:
        # a counter that went down was reset: all of its new count is new (the rule of
        # Prometheus' increase() for counter resets)
        rise += count if count < previous else count - previous
        previous = count
    return rise


def node_id_list(text: str) -> list[str]:
    """`--canary a,b,c` → ["a", "b", "c"], each 8 lower-case hex digits."""
    out = [part.strip() for part in text.split(",") if part.strip()]
    bad = [p for p in out if not _NODE.fullmatch(p)]
    if bad:
        raise RolloutError(f"--canary {text!r}: {bad[0]!r} is not a node id (8 lower-case hex "
                           "digits, e.g. 0001001a)")
    return out
