"""The layer rule of docs/architecture.md: a module imports only from its own layer and the layers below.

Two checks: every import statement of the package (also those deferred into functions) obeys the rule,
and importing each module in a fresh interpreter loads nothing above it (no ``otel_perf._sdk``, no
``otel_perf.exporters`` behind an instrumentation), which is what a program pays for importing it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, clean_env

PACKAGE = Path(__file__).resolve().parent.parent / "otel_perf"

#: Layer 0: the core every other module builds on.
CORE = frozenset({
    "otel_perf", "otel_perf.version", "otel_perf.errors", "otel_perf.environment_variables",
    "otel_perf._config", "otel_perf._safety", "otel_perf._semconv", "otel_perf._error_type",
    "otel_perf._context", "otel_perf._sdk_internals", "otel_perf._sdk_internals_storage", "otel_perf._process",
    "otel_perf._aggregate",
    "otel_perf._inplace", "otel_perf._patching", "otel_perf._otlpjson", "otel_perf._objectives",
})
#: Layer 1: the features, each a package of its own that imports only the core and itself.
FEATURES = ("otel_perf.instrumentations", "otel_perf.profiling", "otel_perf.exporters", "otel_perf.pools")
#: Layer 2: the set-up, which puts the features together.
SET_UP = frozenset({"otel_perf._sdk", "otel_perf.distro"})
#: Layer 3, everything else: the front ends (cli, __main__, testing, report, demo).


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _layer(module: str) -> int:
    if module in CORE:
        return 0
    if module.startswith(FEATURES):
        return 1
    return 2 if module in SET_UP else 3


def _feature(module: str) -> str | None:
    return next((f for f in FEATURES if module == f or module.startswith(f + ".")), None)


def _allowed(importer: str, imported: str) -> bool:
    """The rule: downward or within one's own layer; a feature imports no other feature."""
    if _layer(imported) < _layer(importer):
        return True
    if _layer(imported) > _layer(importer):
        return False
    return _layer(importer) != 1 or _feature(importer) == _feature(imported)


def _resolve(name: str) -> str:
    """The otel-perf module an imported dotted name is (``otel_perf._sdk`` for ``otel_perf._sdk.configure``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, otel-perf module) of every import in ``path``, deferred ones included, TYPE_CHECKING left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and "TYPE_CHECKING" in ast.unparse(stmt.test) for node in ast.walk(stmt)}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        found += [(node.lineno, _resolve(n)) for n in names if n == "otel_perf" or n.startswith("otel_perf.")]
    return found


def test_every_import_follows_the_layer_rule() -> None:
    """No module imports from a layer above its own, or from another feature package, even deferred."""
    broken = [f"{m} (line {line}) imports {imported}"
              for m in MODULES
              for line, imported in _imports(PACKAGE.parent / (m.replace(".", "/") + ".py")
                                             if (PACKAGE.parent / (m.replace(".", "/") + ".py")).exists()
                                             else PACKAGE.parent / m.replace(".", "/") / "__init__.py", m)
              if imported != m and not _allowed(m, imported)]
    assert broken == []


_PROBE = "import importlib, json, sys; importlib.import_module(sys.argv[1]); " \
         "print(json.dumps(sorted(m for m in sys.modules if m == 'otel_perf' or m.startswith('otel_perf.'))))"


def _loaded_by(module: str) -> list[str]:
    done = subprocess.run([PYTHON, "-c", _PROBE, module], env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return [str(m) for m in json.loads(done.stdout)]


@pytest.mark.parametrize("layer", [0, 1])
def test_importing_a_module_loads_nothing_above_it(layer: int) -> None:
    """In a fresh interpreter, importing a core or feature module (an instrumentation, say) loads no
    module of a higher layer: never ``otel_perf._sdk`` and, outside the exporters, no
    ``otel_perf.exporters``."""
    modules = [m for m in MODULES if _layer(m) == layer]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        loaded = dict(zip(modules, pool.map(_loaded_by, modules), strict=True))
    broken = {m: [x for x in found if not _allowed(m, x) and _resolve(x) != m]
              for m, found in loaded.items()}
    assert {m: bad for m, bad in broken.items() if bad} == {}
    instrumentations = [m for m in modules if m.startswith("otel_perf.instrumentations.")]
    assert layer == 0 or instrumentations  # the rule was checked on the instrumentations themselves
    for m in instrumentations:
        assert "otel_perf._sdk" not in loaded[m] and not any(x.startswith("otel_perf.exporters") for x in loaded[m])
