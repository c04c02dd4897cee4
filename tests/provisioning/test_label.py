"""`dordt provision label`: the QR decodes, with a real decoder (zbar's zbarimg), to exactly
the node's public fields; the SVG is valid XML with the fields as text, and once rendered
by a real SVG renderer (librsvg's rsvg-convert) its QR decodes too.  Both programs come from
Debian (scripts/ensure-apt.sh installs them for `make test`)."""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from dordt.errors import UserError
from provisioning import label

SVG_NS = "{http://www.w3.org/2000/svg}"
FIELDS = {"node": "0001001a", "kind": "air", "zone": "spoorzone", "site": "spz-01"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/ensure-apt.sh (make test does)")
    return path


def decode_qr(png_path) -> str:
    """The text of the one QR code in a PNG, as zbarimg reads it."""
    run = subprocess.run([tool("zbarimg"), "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable",
                          str(png_path)], capture_output=True, timeout=60)
    assert run.returncode == 0, f"zbarimg found no QR code: {run.stderr!r}"
    text = run.stdout.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, f"one symbol expected: {text!r}"
    return text[:-1]


def render_svg(svg_path, png_path) -> None:
    subprocess.run([tool("rsvg-convert"), "--height", "400", "--output", str(png_path),
                    str(svg_path)], check=True, capture_output=True, timeout=60)


def svg_texts(svg_path) -> list[str]:
    root = ET.parse(svg_path).getroot()  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG_NS}svg"
    return [t.text for t in root.iter(f"{SVG_NS}text")]


def test_png_decodes_to_exactly_the_public_fields(tmp_path):
    files = label.write_label(**FIELDS, out_dir=tmp_path / "labels")
    assert files.png == tmp_path / "labels" / "0001001a.png"
    text = decode_qr(files.png)
    assert text == files.payload == \
        '{"node":"0001001a","kind":"air","zone":"spoorzone","site":"spz-01"}'
    assert json.loads(text) == FIELDS


def test_svg_is_xml_with_the_fields_as_text_and_its_qr_decodes(tmp_path):
    files = label.write_label(**FIELDS, out_dir=tmp_path)
    texts = svg_texts(files.svg)
    for key, value in FIELDS.items():
        assert f"{key} {value}" in texts
    rendered = tmp_path / "rendered.png"
    render_svg(files.svg, rendered)
    assert json.loads(decode_qr(rendered)) == FIELDS


def test_text_outside_ascii_and_xml_specials_survive(tmp_path):
    zones = tmp_path / "zones.toml"
    site = "brug-ë&<1>"
    zones.write_text(
        '[zones.wantij]\nnumber = 4\nname = "Wantij"\nsites = [\n'
        f'  {{ id = "{site}", lat = 51.82, lon = 4.68, nodes = ["noise"] }},\n]\n',
        encoding="utf-8")
    fields = {"node": "0004001b", "kind": "noise", "zone": "wantij", "site": site}
    files = label.write_label(**fields, out_dir=tmp_path, zones_path=zones)
    assert files.payload.isascii()  # \u escapes: every QR reader gets the same bytes
    assert json.loads(decode_qr(files.png)) == fields
    assert f"site {site}" in svg_texts(files.svg)
    rendered = tmp_path / "rendered.png"
    render_svg(files.svg, rendered)
    assert json.loads(decode_qr(rendered)) == fields


def test_a_label_takes_public_fields_only():
    params = set(inspect.signature(label.write_label).parameters)
    assert params == {"node", "kind", "zone", "site", "out_dir", "zones_path"}
    assert label.PAYLOAD_KEYS == ("node", "kind", "zone", "site")
    with pytest.raises(TypeError):
        label.write_label(**FIELDS, out_dir="x", key=b"\x01" * 32)


@pytest.mark.parametrize("change,words", [
    ({"node": "1001A"}, "8 lower-case hex digits"),
    ({"node": "0001001g"}, "8 lower-case hex digits"),
    ({"kind": "pollen"}, "one of air, crowd, noise"),
    ({"zone": "rotterdam"}, "zone 'rotterdam' is not in the zones file"),
    ({"zone": "spoorzon"}, "Did you mean 'spoorzone'?"),
    ({"site": "nowhere"}, "site 'nowhere' is not a site of spoorzone"),
    ({"site": "mst-01"}, "site 'mst-01' is in zone 'maasterras'"),
])
def test_bad_fields_are_refused_and_nothing_is_written(tmp_path, change, words):
    with pytest.raises(UserError) as err:
        label.write_label(**{**FIELDS, **change}, out_dir=tmp_path / "labels")
    assert err.value.exit_code == 2 and words in str(err.value)
    assert not (tmp_path / "labels").exists()


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as err:
        label.write_label(**FIELDS, out_dir=blocker / "labels")
    assert err.value.exit_code == 2 and "give --out a folder" in str(err.value)


def test_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    label.add_label_arguments(parser)
    args = parser.parse_args(["--node", "0001001a", "--kind", "air", "--zone", "spoorzone",
                              "--site", "spz-01", "--out", str(tmp_path), "--json"])
    assert label.command_label(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"svg": str(tmp_path / "0001001a.svg"),
                   "png": str(tmp_path / "0001001a.png"),
                   "payload": label.node_label(**FIELDS).payload()}
