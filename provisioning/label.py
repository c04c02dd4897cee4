"""`dordt provision label`: the QR label stuck on a node's box and its lamppost.

In:  a node's public fields only: node id (8 lower-case hex digits), kind, zone and site.
     Nothing else can be passed in, so no key, password or Wi-Fi secret can reach a label.
Out: two files in the output folder, named by the node id:
     <node>.svg  the printable label: the QR code with the fields as text beside it
                 (25 mm high, white background);
     <node>.png  the QR code alone with its quiet zone (4 modules), 8 pixels a module.
     The QR payload is one line of compact JSON, ASCII only (non-ASCII letters as \\uXXXX
     escapes), keys in this order:
         {"node":"0001001a","kind":"air","zone":"spoorzone","site":"spz-01"}
     Any QR reader gives that text; `json.loads` gives the fields back.
On failure: `UserError` exit 2: a node id that is not 8 hex digits, a kind that is not a
     node kind, a zone or site not in the zones file (with a "did you mean"), a site that
     has no node of that kind, an output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import segno

from dordt.errors import UserError
from firmware import metrics, protocol
from hardware.sites import ZonesError, placement

EXIT_BAD_INPUT = 2
PAYLOAD_KEYS = ("node", "kind", "zone", "site")
QUIET_ZONE_MODULES = 4       # ISO/IEC 18004 §6.3.8: a 4-module margin around a QR symbol
PNG_MODULE_PX = 8
LABEL_HEIGHT_MM = 25         # fits 29 mm and wider label-printer tape
# Medium error correction (15 %), raised by segno when it costs no extra size: a label
# outdoors gets dirty, but a bigger symbol would need a bigger label.
QR_ERROR = "m"
SVG_NS = "http://www.w3.org/2000/svg"


@dataclass(frozen=True)
class NodeLabel:
    """The public fields a label carries (the same ones the fleet's register publishes)."""

    node: str
    kind: str
    zone: str
    site: str

    def payload(self) -> str:
        fields = {key: getattr(self, key) for key in PAYLOAD_KEYS}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class LabelFiles:
    svg: Path
    png: Path
    payload: str


def node_label(node: str | int, kind: str, zone: str, site: str,
               zones_path: Path | None = None) -> NodeLabel:
    """Check the fields (node id format; kind, zone and site against the zones file)."""
    if isinstance(node, int):
        node = protocol.node_name(node) if 0 <= node <= 0xFFFFFFFF else str(node)
    if not (isinstance(node, str) and len(node) == 8
            and all(c in "0123456789abcdef" for c in node)):
        raise UserError(f"--node {node!r}: give the node id as 8 lower-case hex digits, "
                        "e.g. 0001001a", EXIT_BAD_INPUT)
    if kind not in metrics.KIND_IDS:
        raise UserError(f"--kind {kind!r}: one of {', '.join(sorted(metrics.KIND_IDS))}",
                        EXIT_BAD_INPUT)
    try:
        placement(zone, site, kind, zones_path)
    except ZonesError as exc:
        raise UserError(str(exc), EXIT_BAD_INPUT) from None
    return NodeLabel(node, kind, zone, site)


def qr_code(label: NodeLabel) -> segno.QRCode:
    return segno.make(label.payload(), error=QR_ERROR, micro=False)


def label_svg(label: NodeLabel, qr: segno.QRCode | None = None) -> str:
    """The printable label: QR on the left, the fields as text on the right."""
    qr = qr or qr_code(label)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", xmldecl=False, svgns=True, nl=False, border=0, scale=1)
    # segno draws the symbol as one path of 1-unit strokes; we place that path ourselves
    qr_path = ET.fromstring(buf.getvalue()).find(f"{{{SVG_NS}}}path")
    assert qr_path is not None, "segno's SVG holds the symbol as one <path>"
    modules = qr.symbol_size(border=0, scale=1)[0]
    height = modules + 2 * QUIET_ZONE_MODULES
    lines = [("Dordt sensor node", "bold"),
             *((f"{key} {getattr(label, key)}", "normal") for key in PAYLOAD_KEYS)]
    font = height / 7.5
    text_x = height  # the text starts where the QR's right quiet zone ends
    # a monospace glyph is about 0.6 em wide
    width = text_x + max(len(text) for text, _ in lines) * 0.6 * font + 2 * QUIET_ZONE_MODULES

    ET.register_namespace("", SVG_NS)
    svg = ET.Element(f"{{{SVG_NS}}}svg", {
        "width": f"{width / height * LABEL_HEIGHT_MM:.2f}mm",
        "height": f"{LABEL_HEIGHT_MM}mm",
        "viewBox": f"0 0 {width:.2f} {height}",
    })
    ET.SubElement(svg, f"{{{SVG_NS}}}title").text = f"Dordt node {label.node}"
    ET.SubElement(svg, f"{{{SVG_NS}}}rect", {"width": "100%", "height": "100%",
                                             "fill": "#fff"})
    ET.SubElement(svg, f"{{{SVG_NS}}}path", {
        "d": qr_path.get("d", ""), "stroke": "#000", "stroke-width": "1", "fill": "none",
        "transform": f"translate({QUIET_ZONE_MODULES} {QUIET_ZONE_MODULES})"})
    texts = ET.SubElement(svg, f"{{{SVG_NS}}}g", {
        "font-family": "DejaVu Sans Mono, Menlo, Consolas, monospace",
        "font-size": f"{font:.2f}", "fill": "#000"})
    # first line's capitals level with the QR's top, last line's descenders with its bottom
    pitch = (modules - font) / (len(lines) - 1)
    for i, (text, weight) in enumerate(lines):
        t = ET.SubElement(texts, f"{{{SVG_NS}}}text", {
            "x": f"{text_x:.2f}", "y": f"{QUIET_ZONE_MODULES + font * 0.8 + i * pitch:.2f}",
            "font-weight": weight})
        t.text = text
    return ET.tostring(svg, encoding="unicode", xml_declaration=False)


def write_label(node: str | int, kind: str, zone: str, site: str, out_dir: Path,
                zones_path: Path | None = None) -> LabelFiles:
    """Check the fields and write <node>.svg and <node>.png into `out_dir`."""
    from fleet.files import write_file_atomic

    label = node_label(node, kind, zone, site, zones_path)
    qr = qr_code(label)
    png = io.BytesIO()
    qr.save(png, kind="png", scale=PNG_MODULE_PX, border=QUIET_ZONE_MODULES)
    svg_text = '<?xml version="1.0" encoding="UTF-8"?>\n' + label_svg(label, qr) + "\n"
    out_dir = Path(out_dir)
    svg_path, png_path = out_dir / f"{label.node}.svg", out_dir / f"{label.node}.png"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomic(svg_path, svg_text.encode("utf-8"), 0o644)
        write_file_atomic(png_path, png.getvalue(), 0o644)
    except OSError as exc:
        raise UserError(f"cannot write the label into {out_dir} "
                        f"({exc.strerror or exc}): give --out a folder you can write to",
                        EXIT_BAD_INPUT) from None
    return LabelFiles(svg_path, png_path, label.payload())


# -- command ---------------------------------------------------------------------------------


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    work = os.environ.get("DORDT_PROVISION_DIR", "dordt-provision")
    parser.add_argument("--node", required=True, metavar="ID",
                        help="node id, 8 lower-case hex digits (e.g. 0001001a)")
    parser.add_argument("--kind", required=True, choices=sorted(metrics.KIND_IDS))
    parser.add_argument("--zone", required=True, help="zone, as in the zones file")
    parser.add_argument("--site", required=True, help="lamppost site, as in the zones file")
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path(work) / "labels",
                        help="folder for <node>.svg and <node>.png "
                        "(default ${DORDT_PROVISION_DIR}/labels or ./dordt-provision/labels)")
    parser.add_argument("--zones", metavar="TOML", type=Path,
                        help="zones file (default the packaged one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def command_label(args: argparse.Namespace) -> int:
    files = write_label(args.node, args.kind, args.zone, args.site, args.out, args.zones)
    if getattr(args, "json", False):
        print(json.dumps({"svg": str(files.svg), "png": str(files.png),
                          "payload": files.payload}, sort_keys=True))
    else:
        print(f"label for node {args.node}: {files.svg} (print this) and {files.png} "
              f"(QR only); the QR reads {files.payload}")
    return 0
