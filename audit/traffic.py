"""Traffic audit: every frame of a recording against the approved manifest and the policy.

In:  Messages (a recording file from `dordt sim record`, with or without `--broker`, or
any iterable of `simulators.recording.Message`), the manifest (audit/manifest.py), the
gateway's privacy policy, and optionally the keyring (to hold each node to its enrolled
kind and zone).
Out: a `CheckResult` with one finding per violation, naming the frame (its index in the
recording), the node and the reason, and figures (frames per kind, nodes, span).
On failure: a recording that cannot be opened is `AuditInputError` (exit 2); a damaged
tail is reported as a finding, since frames may be missing from the audit.

What each frame must satisfy, and why (docs/privacy.md §2, §4.5):
- it is a well-formed frame on an uplink topic of its own node (protocol.decode: no stray
  bytes after the last metric, so no room for anything else);
- every metric is one the manifest lists for the node's kind (status frames: status
  metrics only), with a raw value inside the registry row's range;
- crowd windows are at least the zone policy's crowd time resolution (finer windows are
  withheld by the gateway, and a node configured below it is misconfigured);
- band levels come over windows of at least 1 s, and no faster than one frame a second
  per node;
- no value could carry an identifier: fault bitmasks use only the bits the code defines,
  a crowd count is no larger than the node's hash table can hold and equals the sum of
  its RSSI bins (the firmware scales the bins to the count), and a node's firmware
  version does not change from frame to frame without a restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from audit.findings import AuditInputError, CheckResult
from audit.manifest import allowed_metrics
from firmware import metrics, protocol
from simulators.recording import Message, RecordingError, RecordingReader

_BINS = tuple(metrics.BY_NAME[f"rssi_bin_{i}"].id for i in range(5))
_COUNT = metrics.BY_NAME["crowd_count"].id
_BAND_IDS = frozenset(m.id for m in metrics.BY_ID.values() if m.name.startswith("band_"))
_FIRMWARE_VERSION = metrics.BY_NAME["firmware_version"].id
_UPTIME = metrics.BY_NAME["uptime_s"].id
_FAULTS = {metrics.BY_NAME[f"{k}_faults"].id: k for k in ("air", "noise", "crowd")}


def open_recording(path: str | Path) -> RecordingReader:
    if not Path(path).is_file():
        raise AuditInputError(f"{path}: no such recording")
    try:
        return RecordingReader(path)
    except FileNotFoundError:
        raise AuditInputError(f"{path}: no such recording") from None
    except (RecordingError, OSError) as exc:
        raise AuditInputError(f"{path}: not a readable recording ({exc})") from None


def audit_traffic(messages: Iterable[Message], manifest: dict, policy, keyring=None,
                  result: CheckResult | None = None) -> CheckResult:
    result = result or CheckResult("traffic")
    allowed = allowed_metrics(manifest)
    max_count = manifest["kinds"]["crowd"].get("max_count", 65535)
    fault_masks = {kind: spec["window"]["fault_mask"] for kind, spec in manifest["kinds"].items()}
    kind_names = {spec["kind_id"]: kind for kind, spec in manifest["kinds"].items()}
    frames_by_kind: Counter = Counter()
    nodes: set[int] = set()
    last_band: dict[int, int] = {}  # node -> timestamp of its last band levels
    versions: dict[int, tuple[int, int]] = {}  # node -> (firmware version, uptime)
    first_ms = last_ms = None
    other_topics = 0
    index = -1
    for msg in messages:
        index += 1
        if msg.is_control:
            continue
        where = f"frame {index}"
        parsed = protocol.parse_topic_up(msg.topic)
        if parsed is None:
            other_topics += 1  # downlinks (time), captures of other topics: not node output
            continue
        zone, topic_node = parsed
        node = protocol.node_name(topic_node)
        first_ms = msg.t_ms if first_ms is None else first_ms
        last_ms = msg.t_ms
        try:
            frame = protocol.decode(msg.payload)
        except protocol.FrameError as exc:
            result.add(f"node {node} sent a payload that is not a well-formed frame "
                       f"({exc.reason}: {exc}); it could carry anything", where, node)
            continue
        nodes.add(frame.node_id)
        if frame.node_id != topic_node:
            result.add(f"a frame of node {protocol.node_name(frame.node_id)} came on node "
                       f"{node}'s topic", where, node)
        kind = kind_names.get(frame.kind)
        if kind is None:
            result.add(f"node {node} sent kind {frame.kind}, which no node kind has", where,
                       node)
            continue
        if keyring is not None:
            entry = keyring.get(frame.node_id)
            if entry is None:
                result.add(f"node {node} is not in the keyring", where, node)
            elif entry.kind != kind or entry.zone != zone:
                result.add(f"node {node} is enrolled as {entry.kind} in {entry.zone} but sent "
                           f"{kind} frames in {zone}", where, node)
        group = "status" if frame.is_status else kind
        frames_by_kind[group] += 1
        rows = allowed[group]
        values = {}
        for metric_id, raw in frame.metrics:
            row = rows.get(metric_id)
            if row is None:
                known = metrics.BY_ID.get(metric_id)
                what = f"{known.name} (0x{metric_id:02x})" if known else f"0x{metric_id:02x}"
                result.add(f"node {node} sent metric {what}, which the manifest does not "
                           f"allow in a {group} frame: a {kind} node must not emit it", where,
                           node)
                continue
            m = metrics.BY_ID.get(metric_id)
            if m is not None and not m.raw_min <= raw <= m.raw_max:
                result.add(f"node {node} sent {row['name']} = {m.to_value(raw):g}, outside its "
                           f"range {row['min']:g}..{row['max']:g}", where, node)
            values[metric_id] = raw
        if frame.is_status:
            _check_status(result, values, versions, frame.node_id, node, where)
            continue
        for fid, fkind in _FAULTS.items():
            if fid in values and values[fid] & ~fault_masks.get(fkind, 0):
                result.add(f"node {node} set fault bits 0x{values[fid] & ~fault_masks[fkind]:x}"
                           f" that the {fkind} code does not define: a bitmask could carry an "
                           "identifier", where, node)
        if kind == "crowd":
            res = policy.for_zone(zone).crowd_time_resolution_s
            if frame.window_s < res:
                result.add(f"crowd node {node} counted over {frame.window_s} s windows, "
                           f"shorter than the {res} s the {zone} policy requires", where, node)
            count = values.get(_COUNT)
            if count is not None and count > max_count:
                result.add(f"crowd node {node} sent crowd_count {count}, more than its hash "
                           f"table can hold ({max_count}): the value could carry an identifier",
                           where, node)
            if count is not None and all(b in values for b in _BINS) and \
                    sum(values[b] for b in _BINS) != count:
                result.add(f"crowd node {node} sent crowd_count {count} but RSSI bins summing "
                           f"to {sum(values[b] for b in _BINS)}: the firmware makes them equal, "
                           "so the value could carry something else", where, node)
        elif kind == "noise" and _BAND_IDS.intersection(values):
            if frame.window_s < 1:
                result.add(f"noise node {node} sent band levels over a {frame.window_s} s "
                           "window: band levels must cover at least 1 s", where, node)
            # the frames' own clock, not the arrival time: a node emptying its ring buffer
            # after an outage, or a replay at full speed, delivers old frames back to back
            prev = last_band.get(frame.node_id)
            if prev is not None and abs(frame.timestamp - prev) < 1:
                result.add(f"noise node {node} sent band levels for the same second twice "
                           f"(timestamp {frame.timestamp}): band levels may come at most once "
                           "a second", where, node)
            last_band[frame.node_id] = frame.timestamp
    problem = getattr(messages, "problem", None)
    if problem:
        result.add(f"the recording is damaged ({problem}): frames after it were not audited",
                   "recording")
    result.figures.update(
        frames=sum(frames_by_kind.values()), nodes=len(nodes),
        span_s=round((last_ms - first_ms) / 1000, 1) if first_ms is not None else 0,
        **{f"{k}_frames": v for k, v in sorted(frames_by_kind.items())})
    if other_topics:
        result.figures["other_topics"] = other_topics
    return result


def _check_status(result: CheckResult, values: dict, versions: dict, node_id: int, node: str,
                  where: str) -> None:
    version, uptime = values.get(_FIRMWARE_VERSION), values.get(_UPTIME, 0)
    if version is None:
        return
    prev = versions.get(node_id)
    if prev is not None and prev[0] != version and uptime >= prev[1]:
        result.add(f"node {node} reported firmware version {version} after {prev[0]} without "
                   "restarting: a changing version field could carry an identifier", where,
                   node)
    versions[node_id] = (version, uptime)
