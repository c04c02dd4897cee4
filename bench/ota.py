"""Over-the-air updates (issue 12), measured; one JSON line at the end.

- verify_s_micropython: the node's whole check of a full release under real MicroPython
  1.27 (WebAssembly, tools/micropython): release.json's Ed25519 signature with the release
  public key (firmware/ed25519.py, SHA-512 in pure MicroPython: this port's hashlib has
  none), its document rules, then every staged file's size and SHA-256 and the slot
  manifest (firmware/ota_verify.py check_release + check_staged), the verifier loaded for
  the job as the OTA client does.  The release is `dordt fleet release build` of this
  checkout's firmware for every kind and board; the node runs its firmware from the
  release's own .mpy files, as a board does.  Median of RUNS fresh interpreters, timed
  inside the interpreter (no process start, no file placement); split into
  signature_s_micropython (check_release) and hashes_s_micropython (check_staged).
- Baseline in the same run: verify_s_host, the same checks of the same release on this
  machine by `dordt fleet release verify` (fleet/release.verify_release: `cryptography`'s
  Ed25519, hashlib), median of RUNS; verify_ratio = micropython / host.  Also
  verify_s_cpython_pure: the node's own modules (pure Ed25519) under CPython, which shows
  how much is the interpreter and how much the algorithm.
- verify_heap_held_bytes: heap under MicroPython held by the verifier's modules and the
  checked release.json (bytes and document) while an update downloads;
  verify_heap_signature_bytes: Ed25519 and SHA-512's modules on top, during the signature
  check only (both dropped after it).
- ota_s: a whole update of a virtual board over MQTT (measure_ota): the board (real
  MicroPython behind a pty, provisioning/virtual_board.py) runs slot a and is offered a
  release in which every module differs, by a real gateway (gateway/ota.py) through a real
  Mosquitto; from node.run's start to the confirmed trial: the offer, release.json's
  signature, every file pulled in 1 KB chunks into slot b and checked, the switch, the
  reset (boot.py checks slot b's every file again), the health check (an air window of
  4 s and the gateway's time message), the confirm.  Split into ota_pull_s (to the switch)
  and ota_confirm_s (reset to confirmed); ota_bytes_per_s = bytes pulled / ota_pull_s.
- Baseline in the same run: install_s, the same build installed on a fresh virtual board
  by `dordt provision install` (provisioning/install.py) over the pty; ota_pull_ratio =
  ota_pull_s / install_s (over the air against the cable, for the same bytes).
- ota_client_heap_bytes: heap held under MicroPython by the OTA client's code while an
  update runs (firmware/ota.py; slots and hal are in verify_heap_held_bytes); with that
  and one chunk message (about 1.1 KB) it bounds what an update adds to a node's heap.

Each measurement is one function returning its keys (MEASUREMENTS below); main() runs them
in order and prints a table and then the JSON line.  Bounded: a few seconds each.

    .venv/bin/python bench/ota.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.firmware_memory import Interpreter  # noqa: E402
from firmware import ota_verify  # noqa: E402
from fleet.release import (  # noqa: E402
    build_release,
    init_release_key,
    load_public_key,
    verify_release,
)

RUNS = 5
SLOT = "b"
NODE = {"kind": "air", "board": "pico-w", "version": (0, 0, 1), "serial": 0}

_VERIFY_ON_NODE = f"""
import json, time
from firmware import use_module, drop_module
def _read(p):
    with open(p, "rb") as f:
        return f.read()
t0 = time.ticks_us()
v = use_module("firmware.ota_verify")
doc = v.check_release(_read("/ota/release.json"), _read("/ota/release.sig"),
                      v.read_release_pub("/"), NODE)
t1 = time.ticks_us()
sha = v.check_staged("{SLOT}", doc, "/")
t2 = time.ticks_us()
drop_module("firmware.ota_verify")
print(json.dumps({{"signature_us": time.ticks_diff(t1, t0),
                  "hashes_us": time.ticks_diff(t2, t1),
                  "manifest": sha}}))
"""


# Heap the verification holds under MicroPython (gc.mem_alloc after a full collection, above
# the same figure before): the verifier's modules (with firmware.slots and firmware.hal)
# and release.json's bytes and parsed document, held while the files download; and Ed25519
# + SHA-512, which check_release loads on top for the signature only.  Their sum bounds
# what an update adds to a node's heap, apart from the short-lived ints of one check.
# Each step is its own request in one interpreter (bench/firmware_memory.py's Interpreter):
# this port's collector frees what a request allocated only once that request returned.
_HEAP_STEPS = (
    "import gc, json\nfrom firmware import use_module, drop_module\nH = []\n",
    "gc.collect()\nH.append(gc.mem_alloc())\n",
    "def _read(p):\n    with open(p, 'rb') as f:\n        return f.read()\n"
    "v = use_module('firmware.ota_verify')\n"
    "doc = v.check_release(_read('/ota/release.json'), _read('/ota/release.sig'), "
    "v.read_release_pub('/'), NODE)\n",
    "gc.collect()\nH.append(gc.mem_alloc())\n",
    "ed = use_module('firmware.ed25519')\nsha = use_module('firmware.sha512')\n",
    "gc.collect()\nH.append(gc.mem_alloc())\n",
    "print(json.dumps({'held': H[1] - H[0], 'signature': H[2] - H[1]}))\n",
)


def _median(values):
    return statistics.median(values)


def _node_files(release, pub_path: Path) -> dict:
    """The node's flash with the release downloaded: its key, release.json and .sig, every
    file staged in the inactive slot, and the running firmware = the release's .mpy files
    under /lib (where the interpreter imports from)."""
    files = {"/release.pub": pub_path.read_bytes(), "/ota/release.json": release.json_bytes,
             "/ota/release.sig": (release.root / "release.sig").read_bytes()}
    for entry in release.files:
        data = (release.files_dir / entry["path"]).read_bytes()
        files[f"/fw/{SLOT}/{entry['path']}"] = data
        if entry["path"].endswith(".mpy"):
            files["/lib/" + entry["path"]] = data
    return files


def measure_verify(work: Path) -> dict:
    key, pub = init_release_key(work / "key")
    release = build_release(key, 1, ["air", "noise", "crowd"], work / "release")
    node_files = _node_files(release, pub)
    node = shutil.which("node")
    if node is None:
        sys.exit("bench/ota.py: MicroPython needs Node: run `make setup-test`")
    mp = Interpreter(node)
    try:
        code = f"NODE = {NODE!r}\n" + _VERIFY_ON_NODE
        runs = [mp.run_json(code, files=node_files, firmware=False, timeout_s=120)
                for _ in range(RUNS)]
        mp.run(f"NODE = {NODE!r}\n" + _HEAP_STEPS[0], files=node_files, firmware=False)
        out = [mp.more(step) for step in _HEAP_STEPS[1:]]
        heap = json.loads(out[-1])
    finally:
        mp.close()
    assert all(r["manifest"] == release.manifest_sha256 for r in runs)
    signature_s = _median([r["signature_us"] for r in runs]) / 1e6
    hashes_s = _median([r["hashes_us"] for r in runs]) / 1e6
    verify_s = _median([(r["signature_us"] + r["hashes_us"]) for r in runs]) / 1e6

    public = load_public_key(pub)
    host = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        verify_release(release.root, public)
        host.append(time.perf_counter() - t0)
    pure = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        doc = ota_verify.check_release(release.json_bytes,
                                       (release.root / "release.sig").read_text(), public, NODE)
        ota_verify.check_files(str(release.files_dir), doc)
        pure.append(time.perf_counter() - t0)
    return {
        "verify_s_micropython": round(verify_s, 4),
        "signature_s_micropython": round(signature_s, 4),
        "hashes_s_micropython": round(hashes_s, 4),
        "verify_s_host": round(_median(host), 5),
        "verify_s_cpython_pure": round(_median(pure), 5),
        "verify_ratio": round(verify_s / _median(host), 1),
        "verify_heap_held_bytes": heap["held"],
        "verify_heap_signature_bytes": heap["signature"],
        "release_bytes": release.size,
        "release_files": len(release.files),
        "release_json_bytes": len(release.json_bytes),
    }


def _every_module_changed(tree: Path) -> None:
    """Each module of the release differs from slot a's (a whole update, nothing copied)."""
    for path in tree.rglob("*.py"):
        path.write_text(path.read_text() + "\n_RELEASE = 2\n")


def measure_ota(work: Path) -> dict:
    import os

    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.ota import OtaSettings
    from gateway.pipeline import Gateway
    from provisioning.build import build_firmware
    from provisioning.install import install
    from provisioning.link import BoardLink
    from provisioning.virtual_board import RECORDS_ENV, VirtualBoard
    from tests.fixtures.ota import OTA_DONE, ReleaseShop, board_flash, board_run
    from tests.fixtures.services import Mosquitto

    os.environ[RECORDS_ENV] = str(work / "records")
    node, key, zone = "0d0a0c0b", bytes(range(0x61, 0x81)), "spoorzone"
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    shop = ReleaseShop(work / "shop")
    release = shop.build(1, version=(0, 2, 0), patch=_every_module_changed)
    shop.offer({node: 1})
    gateway = Gateway(Keyring([NodeEntry(int(node, 16), "air", zone, "spz-01", {0: key})]),
                      LocalStore(work / "store.sqlite"), work / "gw",
                      f"mqtt://{broker.host}:{broker.port}", client_id="bench-ota-gw",
                      housekeeping_s=0.5,
                      ota=OtaSettings(shop.releases, shop.offers, 1024, offer_every_s=2.0))
    flash = work / "board-flash"
    board_flash(flash, shop.pub_hex, node, key, zone, broker.port)
    try:
        gateway.start()
        with VirtualBoard(flash, wifi=True) as board:
            t0 = time.perf_counter()
            out = board_run(board, "False", max_ms=600_000)
            t_switch = time.perf_counter()
            if out["result"] != "reset" or out["pointer"]["slot"] != "b":
                sys.exit(f"bench/ota.py: the update did not switch: {out}")
            board.reset()
            out = board_run(board, OTA_DONE, max_ms=120_000)
            t_done = time.perf_counter()
            if out["pointer"]["trial"] or out["version"] != [0, 2, 0]:
                sys.exit(f"bench/ota.py: the update did not confirm: {out}")
        pulled = gateway.ota.counts["chunk_bytes"]
        chunks = gateway.ota.counts["chunks"]
    finally:
        gateway.stop()
        broker.stop()
    # the same build over the cable, on a fresh board
    build = build_firmware(source=shop.root / "src-1" / "firmware")
    assert build.manifest_sha256 == release.manifest_sha256
    with VirtualBoard(work / "cable-flash") as board:
        with BoardLink(board.port) as link:
            t0_install = time.perf_counter()
            install(link, build)
            install_s = time.perf_counter() - t0_install
    pull_s = t_switch - t0
    return {
        "ota_s": round(t_done - t0, 2),
        "ota_pull_s": round(pull_s, 2),
        "ota_confirm_s": round(t_done - t_switch, 2),
        "ota_bytes": pulled,
        "ota_chunks": chunks,
        "ota_bytes_per_s": round(pulled / pull_s),
        "install_s": round(install_s, 2),
        "ota_pull_ratio": round(pull_s / install_s, 2),
    }


# Heap the OTA client's own code holds under MicroPython while an update runs (firmware/ota.py;
# firmware.slots and firmware.hal, which it imports too, are in verify_heap_held_bytes), in
# steps of one interpreter as _HEAP_STEPS.  Dropped with the update.
_CLIENT_HEAP_STEPS = (
    "import gc, json\nfrom firmware import slots, hal\nH = []\n",
    "gc.collect()\nH.append(gc.mem_alloc())\n",
    "from firmware import ota\n",
    "gc.collect()\nH.append(gc.mem_alloc())\n",
    "print(json.dumps({'client': H[1] - H[0]}))\n",
)


def measure_ota_client_heap(work: Path) -> dict:
    key, pub = init_release_key(work / "key")
    release = build_release(key, 1, ["air"], work / "release")
    node = shutil.which("node")
    if node is None:
        sys.exit("bench/ota.py: MicroPython needs Node: run `make setup-test`")
    mp = Interpreter(node)
    try:
        mp.run(_CLIENT_HEAP_STEPS[0], files=_node_files(release, pub), firmware=False)
        out = [mp.more(step) for step in _CLIENT_HEAP_STEPS[1:]]
    finally:
        mp.close()
    return {"ota_client_heap_bytes": json.loads(out[-1])["client"]}


# One function per measurement, each returning its keys for the JSON line.
MEASUREMENTS = [measure_verify, measure_ota, measure_ota_client_heap]


def main() -> None:
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="dordt-bench-ota-") as tmp:
        for measure in MEASUREMENTS:
            work = Path(tmp) / measure.__name__
            work.mkdir()
            result.update(measure(work))
    for name, value in result.items():
        print(f"{name:<28} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
