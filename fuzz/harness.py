"""What every fuzz target shares: the sanitised C module, seeds, and the atheris run.

A target is a module `fuzz/fuzz_<name>.py` with `one_input(data: bytes)` (raises only for
a real finding: an unexpected exception, a disagreement between paths, a broken promise)
and `seeds()` (byte strings from tests/vectors/ and the existing tests' cases).  Run one:

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
        DORDT_SPEEDUPS=build/asan/_speedups.cpython-311-x86_64-linux-gnu.so \
        .venv/bin/python fuzz/fuzz_frame.py -max_total_time=60 build/fuzz/corpus/frame

(fuzz/run.sh does exactly that for every target; `make fuzz FUZZ_S=600`.)

The C module: with DORDT_SPEEDUPS set, that file (the ASan + UBSan build of
gateway/_speedups.c, scripts/build-asan-speedups.sh) is loaded as gateway._speedups
before gateway.verify imports it, and the run refuses to start if it did not load, so a
target never silently tests the Python path alone.  ASan's runtime must be the first
library in the process, hence LD_PRELOAD of gcc's libasan; detect_leaks=0 because
CPython keeps memory on purpose at exit.

Coverage: atheris instruments the Python modules a target names (`instrumented`);
the C module is built by gcc, which has no libFuzzer coverage hooks, so C code is found
through the Python paths it must agree with, and checked by ASan and UBSan on every input.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VECTORS_PATH = REPO / "tests" / "vectors" / "frames.json"


def load_speedups() -> str:
    """Load the sanitised C module named by DORDT_SPEEDUPS as gateway._speedups; "" when
    the variable is unset (the normal build, as installed, is used then)."""
    path = os.environ.get("DORDT_SPEEDUPS")
    if not path:
        return ""
    loaded = sys.modules.get("gateway._speedups")
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return path
    import gateway

    spec = importlib.util.spec_from_file_location("gateway._speedups", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"fuzz: DORDT_SPEEDUPS={path}: not a loadable module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway._speedups"] = module
    spec.loader.exec_module(module)
    gateway._speedups = module  # type: ignore[attr-defined]
    return path


def vectors() -> dict:
    import json

    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def write_seeds(corpus: Path, seeds: Iterable[bytes]) -> int:
    """Put the seeds into an empty corpus folder; a corpus that grew is left alone."""
    import hashlib

    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return 0
    n = 0
    for seed in seeds:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        n += 1
    return n


def run(one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]],
        name: str) -> None:
    """atheris.Setup + Fuzz with libFuzzer's own arguments from the command line; the
    first folder argument is the corpus, seeded when empty."""
    import atheris

    speedups = load_speedups()
    if speedups:
        from gateway import verify

        if verify._speedups is None or verify._speedups.__file__ != speedups:
            raise SystemExit(f"fuzz: {name}: the sanitised C module did not load "
                             f"({verify.SPEEDUPS_PROBLEM})")
    folders = [a for a in sys.argv[1:] if not a.startswith("-") and not Path(a).is_file()]
    if folders:  # (file arguments are inputs to run once: crash reproducers)
        n = write_seeds(Path(folders[0]), seeds())
        if n:
            print(f"fuzz: {name}: seeded {folders[0]} with {n} inputs", flush=True)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


def instrumented():
    """Context manager: modules imported inside it get atheris' coverage hooks (a no-op
    stand-in when atheris is not installed, so tests can import the targets)."""
    try:
        import atheris
    except ImportError:  # pragma: no cover - tests import the targets without atheris
        import contextlib

        return contextlib.nullcontext()
    return atheris.instrument_imports()
