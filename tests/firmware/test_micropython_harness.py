"""The `micropython` fixture runs real MicroPython 1.27, isolates runs and reports errors."""

import hashlib

import pytest

from tests.fixtures import micropython as harness
from tests.fixtures.micropython import (
    MicroPythonError,
    MicroPythonRunnerError,
    MicroPythonTimeout,
)


def test_it_is_really_micropython_1_27(micropython):
    info = micropython.run_json(
        "import sys, json\n"
        "print(json.dumps([sys.implementation.name, list(sys.implementation.version)]))",
        firmware=False,
    )
    assert info[0] == "micropython"
    assert info[1][:2] == [1, 27]


def test_cpython_only_behaviour_is_absent(micropython):
    # MicroPython ints have no bit_count() and there is no `typing`: proof we are not
    # quietly running CPython.
    out = micropython.run(
        "try:\n    import typing\nexcept ImportError:\n    print('no typing')\n"
        "print(hasattr(1, 'bit_count'))",
        firmware=False,
    )
    assert out == "no typing\nFalse\n"


def test_stdout_is_returned_whole(micropython):
    out = micropython.run("print('a')\nprint('h\\u00e9llo \\u20ac', end='')", firmware=False)
    assert out == "a\nhéllo €"


def test_exception_becomes_micropython_error_with_traceback(micropython):
    code = "print('before')\ndef f():\n    raise ValueError('bad value 42')\nf()\n"
    with pytest.raises(MicroPythonError) as caught:
        micropython.run(code, firmware=False)
    message = str(caught.value)
    assert message.startswith("Traceback (most recent call last):")
    assert "line 3, in f" in message
    assert message.rstrip().endswith("ValueError: bad value 42")
    assert caught.value.stdout == "before\n"


def test_syntax_error_is_a_micropython_error(micropython):
    with pytest.raises(MicroPythonError, match="SyntaxError"):
        micropython.run("def f(:\n    pass\n", firmware=False)


def test_clean_sys_exit_is_not_an_error(micropython):
    assert micropython.run("import sys\nprint('x')\nsys.exit()", firmware=False) == "x\n"
    with pytest.raises(MicroPythonError, match="SystemExit: 3"):
        micropython.run("import sys\nsys.exit(3)", firmware=False)


def test_runs_are_isolated(micropython):
    micropython.run(
        "import sys\nLEFTOVER = 1\nsys.modules['leftover'] = sys\n"
        "open('/leftover.txt', 'w').write('x')",
        files={"/lib/placed.py": "VALUE = 1\n"},
        firmware=False,
    )
    out = micropython.run(
        "import os, sys\n"
        "print('LEFTOVER' in globals(), 'leftover' in sys.modules)\n"
        "print('leftover.txt' in os.listdir('/'), 'placed.py' in os.listdir('/lib'))",
        firmware=False,
    )
    assert out == "False False\nFalse False\n"


def test_files_are_placed_text_and_bytes(micropython):
    out = micropython.run(
        "import pkg.sub.mod as m\n"
        "print(m.GREETING)\n"
        "print(open('/data/blob.bin', 'rb').read())\n"
        "print(open('/etc/note.txt').read())",
        files={
            "/lib/pkg/__init__.py": "",
            "/lib/pkg/sub/__init__.py": "",
            "/lib/pkg/sub/mod.py": "GREETING = 'hallo Dordrecht'\n",
            "/data/blob.bin": b"\x00\xff\x10",
            "etc/note.txt": "relative paths start at /",
        },
        firmware=False,
    )
    assert out == "hallo Dordrecht\nb'\\x00\\xff\\x10'\nrelative paths start at /\n"


def test_firmware_is_importable_from_the_checkout(micropython):
    out = micropython.run(
        "from firmware import protocol\nimport firmware.metrics\n"
        "print(protocol.__file__)\nprint(protocol.KEY_LEN)"
    )
    assert out == "/lib/firmware/protocol.py\n32\n"


def test_firmware_false_places_nothing(micropython):
    with pytest.raises(MicroPythonError, match="ImportError"):
        micropython.run("import firmware.protocol", firmware=False)


def test_hashlib_sha256_is_present_and_right(micropython):
    out = micropython.run(
        "import hashlib, binascii\n"
        "h = hashlib.sha256(b'dordt')\nh.update(b' spoorzone')\n"
        "print(binascii.hexlify(h.digest()).decode())",
        firmware=False,
    )
    assert out.strip() == hashlib.sha256(b"dordt spoorzone").hexdigest()


def test_run_json_returns_the_last_line_parsed(micropython):
    code = "import json\nprint('noise first')\nprint(json.dumps({'n': 3, 'ok': True}))"
    assert micropython.run_json(code, firmware=False) == {"n": 3, "ok": True}


def test_run_json_says_when_the_last_line_is_not_json(micropython):
    with pytest.raises(AssertionError, match="not JSON"):
        micropython.run_json("print('just text')", firmware=False)


def test_timeout_kills_the_run_and_the_next_run_works(micropython):
    with pytest.raises(MicroPythonTimeout, match="timeout_s=0.5"):
        micropython.run("while True:\n    pass\n", firmware=False, timeout_s=0.5)
    assert micropython.run("print(6 * 7)", firmware=False) == "42\n"


def test_interpreter_crash_is_reported_and_the_next_run_works(micropython):
    # A JS exception escaping from Python unwinds the interpreter's C stack without
    # cleanup; the runner must throw that interpreter away and keep serving.
    with pytest.raises(MicroPythonRunnerError, match="crashed"):
        micropython.run("import js\njs.eval('null.x')", firmware=False)
    assert micropython.run("print('still here')", firmware=False) == "still here\n"


def test_bad_request_is_a_harness_error_not_a_python_one(micropython):
    with pytest.raises(MicroPythonRunnerError, match="heap_bytes"):
        micropython.run("print(1)", firmware=False, heap_bytes=5)


def test_missing_node_fails_with_a_hint(monkeypatch):
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="make test"):
        harness._node_binary()


def test_missing_package_fails_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "PACKAGE_ENTRY", tmp_path / "micropython.mjs")
    with pytest.raises(pytest.fail.Exception, match="make test"):
        harness._node_binary()
