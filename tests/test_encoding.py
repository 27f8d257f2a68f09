"""otel-perf's own code names an encoding wherever it reads or writes text, so a program run with
``-X warn_default_encoding`` sees only its own ``EncodingWarning``s (CPython's test_subprocess checks it)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

_PACKAGE = ROOT / "otel_perf"
_TEXT_CALLS = {"read_text", "write_text", "TextIOWrapper"}
_SUBPROCESS_CALLS = {"run", "Popen", "check_output", "call", "check_call"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


# Modules whose open() is not a text-file open (binary, low level, or not a file at all).
_NOT_FILE_OPEN = {"os", "gzip", "tarfile", "zipfile", "socket", "webbrowser", "tokenize"}


def _open_mode(call: ast.Call) -> ast.expr | bool | None:
    """The mode argument of a file open, None when absent, False when this is not a text-capable open."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        position = 1  # open(file, mode)
    elif isinstance(func, ast.Attribute) and func.attr in ("open", "fdopen"):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if owner in _NOT_FILE_OPEN and func.attr == "open":
            return False
        position = 1 if owner in ("io", "os", "codecs") else 0  # io.open(f, mode), os.fdopen(fd, mode); p.open(mode)
    else:
        return False
    return _keyword(call, "mode") or (call.args[position] if len(call.args) > position else None)


def _missing_encodings(source: str, label: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, label)):
        if not isinstance(node, ast.Call) or _keyword(node, "encoding") is not None:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        mode = _open_mode(node)
        if mode is not False:
            binary = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value
            if not binary:
                found.append(f"{label}:{node.lineno}: {name}() in text mode")
        elif name in _TEXT_CALLS:
            found.append(f"{label}:{node.lineno}: {name}()")
        elif name in _SUBPROCESS_CALLS and any(
                isinstance(flag, ast.Constant) and flag.value
                for flag in (_keyword(node, "text"), _keyword(node, "universal_newlines"))):
            found.append(f"{label}:{node.lineno}: {name}(text=True)")
    return found


def test_otel_perf_names_an_encoding_for_all_its_text_io() -> None:
    """Every text-mode open(), read_text()/write_text(), TextIOWrapper and text-mode subprocess call in
    the otel_perf package passes ``encoding=``."""
    missing = [line for path in sorted(_PACKAGE.rglob("*.py"))
               for line in _missing_encodings(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert missing == []


def test_the_check_finds_what_it_looks_for() -> None:
    """The scan itself: each kind of call without an encoding is found, with one it is not."""
    sample = "\n".join([
        "open(p)", "open(p, 'r')", "open(p, 'rb')", "open(p, encoding='utf-8')", "Path(p).read_text()",
        "p.write_text(s, encoding='ascii')", "io.TextIOWrapper(f)", "subprocess.run(a, text=True)",
        "subprocess.run(a, text=True, encoding='utf-8')", "subprocess.run(a, capture_output=True)",
        "os.open(p, os.O_RDONLY)", "Path(p).open()", "Path(p).open('rb')", "os.fdopen(fd, 'w')",
        "os.fdopen(fd, 'wb')", "io.open(p, 'rb')", "io.open(p)",
    ])
    lines = [int(entry.split(":")[1]) for entry in _missing_encodings(sample, "sample.py")]
    assert lines == [1, 2, 5, 7, 8, 12, 14, 17]
