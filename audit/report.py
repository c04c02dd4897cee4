"""The audit report: one self-contained HTML page (and the same as JSON) with a pass/fail
line per requirement of docs/privacy.md, each with its evidence.

In:  the `CheckResult`s of the other audits (manifest, traffic, store, linkability,
registers); a check that was not run leaves its requirements "not checked".
Out: `build_report()` -> a JSON-able dict; `to_html()` -> one HTML page with no external
resources and no script: inline CSS, inline SVG charts (crowd suppression per zone and
day, the most epsilon any node spent per zone and day against the budget), the findings
and figures of each requirement in a <details> block one click away.
On failure: nothing here reads files; the checks have raised before.

Each requirement names the docs/privacy.md section it comes from and the check that
proves it (docs/privacy.md §7 lists the same table the other way round).  A finding
belongs to a requirement by its check and a phrase its message always carries.
"""

from __future__ import annotations

import datetime as dt
import html
import json

from audit.findings import CheckResult

# (id, requirement as a sentence, docs/privacy.md section, check, phrases of its findings;
#  None: every finding of the check not claimed by a more specific requirement)
REQUIREMENTS = (
    ("manifest-current", "The emission manifest was generated from the firmware that runs.",
     "§2", "manifest", None),
    ("only-manifest-metrics", "Nodes emit only the metrics the manifest lists for their kind, "
     "within range, in well-formed frames.", "§2", "traffic", None),
    ("crowd-window", "Crowd nodes count over windows at least as long as the zone policy's "
     "time resolution.", "§4.5", "traffic", ("shorter than the",)),
    ("band-levels-1s", "Noise nodes send band levels over at least 1 s, no faster than once a "
     "second.", "§2", "traffic", ("band levels",)),
    ("no-identifier-in-traffic", "No value in any frame could carry an identifier.", "§1, §2",
     "traffic", ("identifier", "something else")),
    ("unlinkable", "A device cannot be linked across windows or nodes from what the fleet "
     "emits; the window key changes every window and is gone after it.", "§2", "linkability",
     None),
    ("no-identifier-at-gateway", "No radio address, hash or other identifier is kept in the "
     "gateway's files or logs, or in the store.", "§1, §3", "store",
     ("address", "hex value", "base64", "no registry metric", "tag ")),
    ("small-counts-withheld", "No crowd count or RSSI bin of 1..k-1 is released, and every "
     "zone's k is at least the required minimum.", "§4.1", "store",
     ("below k", "release crowd counts from")),
    ("time-coarsened", "Released crowd points lie on the zone's time grid.", "§4.5", "store",
     ("grid",)),
    ("noise-drawn", "Where the policy turns noise on, noise was drawn (and paid for) for every "
     "release.", "§4.2", "store", ("noise was not drawn",)),
    ("epsilon-within-budget", "No node's daily epsilon, recomputed from the accountant, is "
     "above its budget; the accountant is unedited.", "§4.2, §4.4", "store",
     ("daily budget", "accountant's entry")),
    ("policy-as-versioned", "Every batch was anonymised under the policy version and hash "
     "audited.", "§3.2", "store", ("anonymised under policy",)),
    ("registers-complete", "The algorithm-register and sensor-register entries are complete, "
     "with no field invented or blank.", "§5", "registers", None),
)


def _claimed(req_id: str) -> tuple[str, tuple[str, ...] | None]:
    for rid, _text, _doc, check, phrases in REQUIREMENTS:
        if rid == req_id:
            return check, phrases
    raise KeyError(req_id)


def _owner(finding, check: str) -> str:
    """The requirement a finding belongs to: the first with a matching phrase, else the
    check's catch-all."""
    catch_all = None
    for rid, _text, _doc, chk, phrases in REQUIREMENTS:
        if chk != check:
            continue
        if phrases is None:
            catch_all = catch_all or rid
        elif any(p in finding.message for p in phrases):
            return rid
    return catch_all or next(r[0] for r in REQUIREMENTS if r[3] == check)


def _evidence(req_id: str, result: CheckResult) -> str:
    f = result.figures
    if req_id == "manifest-current":
        return f"firmware {f.get('firmware_sha256', '?')}…, {f.get('firmware_files', 0)} files"
    if req_id in ("only-manifest-metrics", "crowd-window", "band-levels-1s",
                  "no-identifier-in-traffic"):
        return (f"{f.get('frames', 0)} frames of {f.get('nodes', 0)} nodes over "
                f"{f.get('span_s', 0) / 3600:.1f} h")
    if req_id == "unlinkable":
        a = f.get("all", {})
        ci = a.get("ci95", [0, 0])
        return (f"attacker accuracy {a.get('accuracy')} (95 % interval {ci[0]}..{ci[1]}) over "
                f"{a.get('trials')} trials, chance 0.5; on a leaky design with stable pseudonyms "
                f"the same attacker reaches {a.get('leaky_design_accuracy')}; window key checks: "
                f"{f.get('key_checks')}; equal counts give identical output: "
                f"{f.get('equal_counts_identical')}")
    if req_id == "no-identifier-at-gateway":
        return (f"{f.get('files_scanned', 0)} files, {f.get('texts_scanned', 0)} texts, "
                f"{f.get('store_points', 0)} store points scanned")
    if req_id in ("small-counts-withheld", "time-coarsened"):
        return f"{f.get('crowd_points', 0)} crowd points checked"
    if req_id in ("noise-drawn", "epsilon-within-budget"):
        return f"{f.get('accountant_entries', 0)} accountant entries (node and day) recomputed"
    if req_id == "policy-as-versioned":
        return f"{f.get('batches', 0)} batches in the audit log"
    if req_id == "registers-complete":
        return (f"{f.get('algorithm_entries', 0)} algorithm entries, "
                f"{f.get('sensor_entries', 0)} sensor entries, {f.get('missing', 0)} fields "
                "missing")
    return ""


def build_report(results: dict[str, CheckResult], inputs: dict | None = None,
                 policy_budgets: dict | None = None) -> dict:
    owned: dict[str, list] = {r[0]: [] for r in REQUIREMENTS}
    for check, result in results.items():
        for finding in result.findings:
            owned[_owner(finding, check)].append(finding)
    reqs = []
    for rid, text, doc, check, _phrases in REQUIREMENTS:
        result = results.get(check)
        if result is None:
            status = "not checked"
        else:
            hidden = result.figures.get("findings_not_listed", 0)
            status = "fail" if owned[rid] or (hidden and _catch_all(rid)) else "pass"
        reqs.append({
            "id": rid, "requirement": text, "docs": f"docs/privacy.md {doc}", "check": check,
            "status": status,
            "evidence": _evidence(rid, result) if result else f"`dordt audit {check}` not run",
            "findings": [f.to_json() for f in owned[rid]],
        })
    store = results.get("store")
    return {
        "format": "dordt-audit-report", "version": 1,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": inputs or {},
        "ok": all(r["status"] == "pass" for r in reqs),
        "requirements": reqs,
        "charts": {
            "suppression": store.figures.get("suppression", {}) if store else {},
            "epsilon_max_per_node": store.figures.get("epsilon_max_per_node", {}) if store
            else {},
            "epsilon_budget": policy_budgets or {},
        },
        "checks": {name: r.to_json() for name, r in results.items()},
    }


def _catch_all(rid: str) -> bool:
    return _claimed(rid)[1] is None


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.5em}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}
.pass{color:#0a6b2d;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.notchecked{color:#8a5a00;font-weight:bold}summary{cursor:pointer;color:#1a4f8a}
.verdict{font-size:1.2em;padding:.6em;border-radius:4px}
.verdict.ok{background:#e3f4e8}.verdict.bad{background:#fde7ea}
figure{margin:1em 0}figcaption{font-weight:bold;margin-bottom:.3em}
code{background:#f3f3f3;padding:0 .2em}
"""

_COLOURS = {"released": "#4c8c4a", "small_count": "#e0a030", "budget_spent": "#b03050",
            "window_too_fine": "#7a6ab0", "small_rssi_bin": "#3a8fb0"}


def _bar_chart(title: str, series: dict[str, dict[str, dict[str, float]]],
               limit: dict[str, float] | None = None, unit: str = "") -> str:
    """Stacked bars per (zone, day); `series` zone -> day -> part -> value."""
    bars = [(zone, day, parts) for zone, days in sorted(series.items())
            for day, parts in sorted(days.items())]
    if not bars:
        return (f"<figure><figcaption>{html.escape(title)}</figcaption>"
                "<p>No data for this chart.</p></figure>")
    top = max(max(sum(p.values()) for _z, _d, p in bars),
              max((limit or {}).values(), default=0)) or 1
    width, height, bar_w, left = max(420, 60 + 70 * len(bars)), 240, 44, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="#888"/>',
           f'<text x="4" y="14" font-size="11">{top:g}{html.escape(unit)}</text>',
           f'<text x="4" y="{height}" font-size="11">0</text>']
    parts_seen: list[str] = []
    for i, (zone, day, parts) in enumerate(bars):
        x = left + 10 + i * 70
        y = height
        for part, value in sorted(parts.items()):
            if part not in parts_seen:
                parts_seen.append(part)
            h = value / top * (height - 20)
            y -= h
            out.append(f'<rect x="{x}" y="{y:.1f}" width="{bar_w}" height="{h:.1f}" '
                       f'fill="{_COLOURS.get(part, "#3a6fb0")}"><title>{html.escape(zone)} '
                       f'{day} {html.escape(part)}: {value:g}</title></rect>')
        if limit and zone in limit:
            ly = height - limit[zone] / top * (height - 20)
            out.append(f'<line x1="{x - 4}" y1="{ly:.1f}" x2="{x + bar_w + 4}" y2="{ly:.1f}" '
                       'stroke="#b00020" stroke-dasharray="4 2"/>')
        out.append(f'<text x="{x}" y="{height + 14}" font-size="10">{html.escape(zone[:10])}'
                   f'</text><text x="{x}" y="{height + 26}" font-size="10">{day[5:]}</text>')
    for j, part in enumerate(parts_seen):
        out.append(f'<rect x="{left + j * 110}" y="{height + 36}" width="10" height="10" '
                   f'fill="{_COLOURS.get(part, "#3a6fb0")}"/><text x="{left + j * 110 + 14}" '
                   f'y="{height + 45}" font-size="11">{html.escape(part)}</text>')
    out.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(out)}</figure>"


def to_html(report: dict) -> str:
    e = html.escape
    ok = report["ok"]
    n_pass = sum(r["status"] == "pass" for r in report["requirements"])
    rows = []
    for r in report["requirements"]:
        cls = r["status"].replace(" ", "")
        findings = "".join(
            f"<li>{e(f['where'] + ': ' if f['where'] else '')}{e(f['message'])}</li>"
            for f in r["findings"])
        rows.append(
            f'<tr id="req-{e(r["id"])}" data-status="{e(r["status"])}"><td class="{cls}">'
            f'{e(r["status"].upper())}</td><td>{e(r["requirement"])}<details><summary>Evidence'
            f'</summary><p>{e(r["evidence"])}</p>'
            + (f"<ul>{findings}</ul>" if findings else "<p>No findings.</p>")
            + f'<p>Checked by <code>dordt audit {e(r["check"])}</code>.</p></details></td>'
            f'<td>{e(r["docs"])}</td></tr>')
    charts = report["charts"]
    suppression = _bar_chart("Crowd points per zone and day: released and withheld (by reason)",
                             charts["suppression"])
    eps = {z: {d: {"epsilon": v} for d, v in days.items()}
           for z, days in charts["epsilon_max_per_node"].items()}
    epsilon = _bar_chart("Most epsilon spent by one node, per zone and day (dashed: the "
                         "zone's daily budget)", eps, charts.get("epsilon_budget"))
    inputs = "".join(f"<li>{e(k)}: <code>{e(str(v))}</code></li>"
                     for k, v in report["inputs"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dordt privacy audit</title><style>{_CSS}</style></head>
<body><h1>Dordt sensor fleet: privacy audit</h1>
<p class="verdict {"ok" if ok else "bad"}" id="verdict">{
        "Every requirement holds" if ok else "Not every requirement holds"}:
{n_pass} of {len(report["requirements"])} pass.</p>
<p>Generated {e(report["generated_at"])} from the code and the data listed below. Each line
is a requirement of the privacy model (docs/privacy.md); open "Evidence" to see what was
checked and what was found.</p>
<table><thead><tr><th>Result</th><th>Requirement</th><th>Source</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Charts</h2>{suppression}{epsilon}
<h2>Inputs</h2><ul>{inputs}</ul>
</body></html>
"""


def write_report(report: dict, html_path, json_path) -> None:
    from pathlib import Path

    Path(html_path).write_text(to_html(report), encoding="utf-8")
    Path(json_path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n",
                               encoding="utf-8")
