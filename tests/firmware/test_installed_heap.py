"""The firmware as a board gets it (issue 10): compiled to .mpy files by provisioning's build,
it runs each node kind under real MicroPython, imported from those files, and
bench/firmware_memory.py measures its heap the same way as from source; and
firmware/manifest.py freezes exactly the modules the installer compiles.

The heap figures themselves are printed by the bench (`heap_installed_bytes`), not gated
here: these tests check that the measurement loads what a board loads and that the node
runs on it."""

import importlib.util
import os
from pathlib import Path

import pytest

from provisioning.build import build_firmware

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "firmware_memory_bench", REPO / "bench" / "firmware_memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest_outputs():
    """Run firmware/manifest.py as MicroPython's makemanifest does (its directory as the
    working directory), recording what it asks for."""
    frozen, required = [], []

    def package(package_path, files=None, base_path=".", opt=None):
        base = Path(os.path.abspath(base_path))
        for name in files:
            path = base / package_path / name
            assert path.is_file(), f"manifest names {path}, which does not exist"
            frozen.append(path.relative_to(REPO).as_posix())

    def require(name, **kwargs):
        required.append(name)

    def metadata(**kwargs):
        pass

    source = (FIRMWARE / "manifest.py").read_text(encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(FIRMWARE)
    try:
        exec(compile(source, str(FIRMWARE / "manifest.py"), "exec"),
             {"package": package, "require": require, "metadata": metadata})
    finally:
        os.chdir(cwd)
    return frozen, required


def test_the_manifest_freezes_every_module_the_installer_compiles(tmp_path):
    frozen, required = _manifest_outputs()
    installed = [f.path for f in build_firmware(cache_dir=tmp_path).files]
    compiled = sorted("firmware/" + p.removeprefix("firmware/").removesuffix(".mpy") + ".py"
                      for p in installed if p.endswith(".mpy"))
    assert len(frozen) == len(set(frozen))
    assert sorted(frozen) == compiled
    assert "firmware/manifest.py" not in frozen
    # what firmware/board.py imports on a board beyond MicroPython's built-in modules
    assert set(required) == {"umqtt.simple", "ntptime", "ssl"}


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.mark.parametrize("kind", ["air", "noise", "crowd"])
def test_each_node_kind_runs_from_the_installed_mpy_files(micropython, bench, kind):
    # `micropython`: fails with the setup hint when Node or the npm package is missing
    installed = bench.installed_files()
    assert installed and all(path.endswith(".mpy") for path in installed)
    assert not any(path.endswith(".py") for path in installed)  # nothing to fall back on
    setup, files = bench.node_runs()[kind]
    mp = bench.interpreter()
    try:
        # node_heap checks: no node error, one measurement per interval, one sampler, and
        # firmware.node imported from /lib/firmware/node.mpy
        heap = bench.node_heap(mp, kind, setup, files, 1, installed)
    finally:
        mp.close()
    assert heap["frames"] == 2  # the boot status frame and one measurement
    assert heap["node"] == heap["modules"] + heap["objects"] and heap["modules"] > 0
