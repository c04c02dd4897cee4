"""The fuzz targets (fuzz/, make fuzz) stay alive: a short bounded run of each, and every
input a fuzzer ever crashed on (tests/fuzz/regressions/<target>/) passes.

Each run is a real atheris process: a few seconds of coverage-guided fuzzing from the
target's seeds, and for the targets that reach gateway/_speedups.c the seeds replayed and
mutated with the AddressSanitizer + UndefinedBehaviorSanitizer build of it (LD_PRELOAD of
gcc's libasan, as fuzz/run.sh does).  `make fuzz FUZZ_S=...` is the long run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
TARGETS = ["frame", "metrics", "serial", "ble", "time_downlink", "recording", "keyring",
           "policy", "config", "lines", "verify_batches", "signed_keyring", "rekey",
           "release"]
C_TARGETS = ["frame", "metrics"]
SMOKE_S = 2

pytest.importorskip("atheris", reason="atheris is in the [test] extra: make setup-test")


def argv(target: str) -> list[str]:
    if target in ("keyring", "policy", "config", "signed_keyring", "rekey"):
        return [sys.executable, str(REPO / "fuzz" / "fuzz_loaders.py"), target]
    return [sys.executable, str(REPO / "fuzz" / f"fuzz_{target}.py")]


@pytest.fixture(scope="module")
def asan_env(tmp_path_factory) -> dict[str, str]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed for the sanitiser build (scripts/ensure-apt.sh)")
    out = tmp_path_factory.mktemp("asan")
    subprocess.run([str(REPO / "scripts" / "build-asan-speedups.sh"), sys.executable,
                    str(out)], cwd=REPO, check=True, capture_output=True, timeout=300)
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return {**os.environ, "LD_PRELOAD": libasan, "PYTHONMALLOC": "malloc",
            "DORDT_SPEEDUPS": str(next(out.glob("_speedups*.so"))),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def fuzz(target: str, args: list[str], tmp_path: Path, env=None) -> str:
    r = subprocess.run([*argv(target), *args, f"-artifact_prefix={tmp_path}/"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_each_fuzz_target_runs_a_few_seconds_from_its_seeds(target, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = fuzz(target, [f"-max_total_time={SMOKE_S}", "-print_final_stats=1", str(corpus)],
               tmp_path)
    assert "stat::number_of_executed_units" in out
    assert any(corpus.iterdir())  # seeded, and grown or kept


@pytest.mark.parametrize("target", C_TARGETS)
def test_c_targets_run_their_seeds_under_asan_and_ubsan(target, tmp_path, asan_env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = fuzz(target, [f"-max_total_time={SMOKE_S}", "-print_final_stats=1", str(corpus)],
               tmp_path, env=asan_env)
    assert "INITED" in out and "stat::number_of_executed_units" in out


def _regressions():
    return sorted((d.name, f) for d in REGRESSIONS.iterdir() if d.is_dir()
                  for f in sorted(d.iterdir()))


@pytest.mark.parametrize("target,path", _regressions(), ids=lambda x: getattr(x, "name", x))
def test_every_input_a_fuzzer_crashed_on_now_passes(target, path, tmp_path, asan_env):
    fuzz(target, [str(path)], tmp_path, env=asan_env if target in C_TARGETS else None)
