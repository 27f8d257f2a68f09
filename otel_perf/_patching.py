"""Patch callables by dotted path, now or when their module is imported later, and restore them.

Why this module exists: every instrumentation patches something (stdlib functions, classes, and the
user's own functions named in ``OTEL_PERF_TOOLS``/``OTEL_PERF_PARSERS``), and all of them need the same
guarantees: ``pkg.mod:Class.method`` paths, post-import hooks for modules imported later (wrapt's
``register_post_import_hook``; a hook cannot be removed, so it checks that its patcher is still on),
idempotence (patching twice is harmless) and an exact restore on ``uninstrument()``: the original object
comes back (identity), and an attribute that was inherited is deleted rather than shadowed.

Two styles are supported: wrapt wrappers ``(wrapped, instance, args, kwargs)`` (STYLE.md) and, for hot
paths where a benchmark showed wrapt's cost, a replacement built from the original by a factory.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import wrapt

from otel_perf._safety import guarded, log_once

__all__ = ["PatchTarget", "Patcher", "resolve", "split_path"]

_MISSING = object()


def split_path(path: str) -> tuple[str, tuple[str, ...]]:
    """``"pkg.mod:Class.method"`` -> ``("pkg.mod", ("Class", "method"))``."""
    module, sep, attrs = path.partition(":")
    if not sep or not module or not attrs:
        raise ValueError(f"Expected a dotted path such as pkg.mod:func or pkg.mod:Class.method, got {path!r}")
    return module, tuple(attrs.split("."))


@dataclass(slots=True)
class PatchTarget:
    """Where a patched attribute lives, and what was there before."""

    path: str
    parent: Any
    attribute: str
    original: Any  # the raw object in parent.__dict__, or _MISSING when it was inherited
    current: Any  # the value as seen through getattr (what the user calls)


def resolve(path: str, module: ModuleType | None = None) -> PatchTarget:
    """Find the object a dotted path names. Raises ImportError/AttributeError when it does not exist."""
    module_name, attrs = split_path(path)
    obj: Any = module if module is not None else importlib.import_module(module_name)
    parent: Any = obj
    for name in attrs:
        parent = obj
        obj = getattr(obj, name)
    attribute = attrs[-1]
    raw = parent.__dict__.get(attribute, _MISSING) if hasattr(parent, "__dict__") else _MISSING
    return PatchTarget(path, parent, attribute, raw, obj)


@dataclass
class _Applied:
    target: PatchTarget
    installed: Any


@dataclass
class Patcher:
    """The patches of one instrumentor: apply them (now or on import), list what is pending, undo all.

    Usage::

        patcher = Patcher("otel_perf_parsers")
        patcher.wrap("json:loads", wrapper)                     # wrapt style
        patcher.replace("json:loads", lambda original: fast)     # plain-closure style
        patcher.unpatch_all()
    """

    owner: str
    active: bool = True
    _applied: dict[str, _Applied] = field(default_factory=dict)
    _pending: dict[str, Callable[[ModuleType | None], object]] = field(default_factory=dict)
    _hooked: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def wrap(self, path: str, wrapper: Callable[..., Any], *, lazy: bool = True) -> bool:
        """Patch ``path`` with a wrapt wrapper ``wrapper(wrapped, instance, args, kwargs)``.

        Returns True if applied now, False if deferred until the module is imported (or not found).
        """

        def install(target: PatchTarget) -> Any:
            return wrapt.FunctionWrapper(target.original if target.original is not _MISSING
                                         else target.current, wrapper)

        return self._patch(path, install, lazy)

    def replace(self, path: str, factory: Callable[[Any], Any], *, lazy: bool = True) -> bool:
        """Patch ``path`` with ``factory(original)``; the factory sees the raw attribute (a function,
        or a classmethod/staticmethod object for those)."""

        def install(target: PatchTarget) -> Any:
            return factory(target.original if target.original is not _MISSING else target.current)

        return self._patch(path, install, lazy)

    def _patch(self, path: str, install: Callable[[PatchTarget], Any], lazy: bool) -> bool:
        module_name, _ = split_path(path)
        with self._lock:
            if path in self._applied:
                return True  # instrumenting twice is harmless
            module = sys.modules.get(module_name)
            if module is None and lazy:
                self._pending[path] = lambda mod: self._apply(path, install, mod)
                self._hook(module_name)
                return False
            return self._apply(path, install, module)

    def _hook(self, module_name: str) -> None:
        if module_name in self._hooked:
            return
        self._hooked.add(module_name)

        def on_import(module: ModuleType) -> None:
            # The hook cannot be removed: it checks that this patcher is still on.
            if not self.active:
                return
            with guarded(f"{self.owner} post-import hook for {module_name}"), self._lock:
                for path in [p for p in self._pending if split_path(p)[0] == module_name]:
                    self._pending[path](module)

        wrapt.register_post_import_hook(on_import, module_name)

    def _apply(self, path: str, install: Callable[[PatchTarget], Any], module: ModuleType | None) -> bool:
        try:
            target = resolve(path, module)
        except (ImportError, AttributeError) as exc:
            log_once((self.owner, "unresolved", path), "%s: cannot patch %s: %s", self.owner, path, exc)
            return False
        if not self.active:
            return False
        installed = install(target)
        setattr(target.parent, target.attribute, installed)
        self._applied[path] = _Applied(target, installed)
        self._pending.pop(path, None)
        return True

    def pending(self) -> list[str]:
        """Paths registered but not yet applied (their module was never imported, or never resolved)."""
        with self._lock:
            return sorted(self._pending)

    def applied(self) -> list[str]:
        with self._lock:
            return sorted(self._applied)

    def unpatch(self, path: str) -> None:
        """Restore the original of ``path`` (identity), or drop it from the pending list."""
        with self._lock:
            self._pending.pop(path, None)
            applied = self._applied.pop(path, None)
            if applied is None:
                return
            target = applied.target
            # Only restore if nobody patched over us since; otherwise leave their patch in place.
            if target.parent.__dict__.get(target.attribute, _MISSING) is not applied.installed:
                log_once((self.owner, "overpatched", path),
                         "%s: %s was patched again by someone else; leaving it", self.owner, path)
                return
            if target.original is _MISSING:
                delattr(target.parent, target.attribute)
            else:
                setattr(target.parent, target.attribute, target.original)

    def unpatch_all(self) -> None:
        """Restore every original and switch off the post-import hooks."""
        with self._lock:
            self.active = False
            for path in list(self._applied):
                self.unpatch(path)
            self._pending.clear()

    def restart(self) -> None:
        """Make a stopped patcher usable again (instrument after uninstrument)."""
        with self._lock:
            self.active = True
