"""Patch callables by dotted path, now or when their module is imported later, and restore them.

Why this module exists: every instrumentation patches something (stdlib functions, classes, and the
user's own functions named in ``OTEL_PERF_TOOLS``/``OTEL_PERF_PARSERS``), and all of them need the same
guarantees: ``pkg.mod:Class.method`` paths, post-import hooks for modules imported later (wrapt's
``register_post_import_hook``; a hook cannot be removed, so it checks that its patcher is still on),
idempotence (patching twice is harmless) and an exact restore on ``uninstrument()``: the original object
comes back (identity), and an attribute that was inherited is deleted rather than shadowed.

A patch is a replacement built from the original by a factory (a plain closure: on the hot paths that
patch, a benchmark showed wrapt's wrappers cost too much). A replacement can be installed in place
(``in_place=True``, :mod:`otel_perf._inplace`): a plain function at its canonical path then stays the same
object and runs the replacement, so references taken before instrumentation (``from json import loads``)
are measured and pickle as they do uninstrumented.

This is otel-perf's one post-import hook mechanism: an instrumentation that must look at a module before it
patches it (``OTEL_PERF_TOOLS`` paths) registers its own callback with :meth:`Patcher.when_imported`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeGuard

import wrapt

from otel_perf._inplace import InPlacePatch, can_patch_in_place, patch_in_place, unpatch_in_place
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


def _at_canonical_place(function: Any) -> TypeGuard[types.FunctionType]:
    """Whether ``function`` is a plain function found under its own ``__module__:__qualname__`` (where
    pickle looks it up), whatever path named it (``tomllib:loads`` is ``tomllib._parser.loads``)."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str) and can_patch_in_place(function, module, qualname)):
        return False
    owner = sys.modules.get(module)
    if owner is None or "<" in qualname:  # <locals>, <lambda>: not reachable by name
        return False
    try:
        raw = resolve(f"{module}:{qualname}", owner).original
    except (ImportError, AttributeError, ValueError):
        return False
    return (raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw) is function


@dataclass
class _Applied:
    target: PatchTarget
    installed: Any  # the object set on the parent, or the InPlacePatch of a function patched in place


@dataclass
class Patcher:
    """The patches of one instrumentor: apply them (now or on import), list what is pending, undo all.

    Usage::

        patcher = Patcher("otel_perf_parsers")
        patcher.replace("json:loads", lambda original: fast)   # now, or when json is imported
        patcher.when_imported("app.tools", callback)            # callback(module), while the patcher is on
        patcher.unpatch_all()
    """

    owner: str
    active: bool = True
    _applied: dict[str, _Applied] = field(default_factory=dict)
    _pending: dict[str, Callable[[ModuleType | None], object]] = field(default_factory=dict)
    _hooked: set[str] = field(default_factory=set)
    _callbacks: dict[str, list[Callable[[ModuleType], object]]] = field(default_factory=dict)
    _in_place: dict[int, InPlacePatch] = field(default_factory=dict)  # id(function) -> its patch by us
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def replace(self, path: str, factory: Callable[[Any], Any], *, lazy: bool = True,
                in_place: bool = False) -> bool:
        """Patch ``path`` with ``factory(original)``; the factory sees the raw attribute (a function,
        or a classmethod/staticmethod object for those).

        With ``in_place``, a plain function at its canonical path (``module:qualname``; also inside a
        classmethod or staticmethod) is patched in place: it runs ``factory(copy of itself)`` and stays
        the attribute. Anything else is replaced as without it. A second path to a function this patcher
        already patched in place (``ElementTree.fromstring is ElementTree.XML``) shares that patch.
        """

        def install(target: PatchTarget) -> Any:
            return factory(target.original if target.original is not _MISSING else target.current)

        return self._patch(path, install, lazy, factory if in_place else None)

    def _patch(self, path: str, install: Callable[[PatchTarget], Any], lazy: bool,
               in_place: Callable[[Any], Any] | None = None) -> bool:
        module_name, _ = split_path(path)
        with self._lock:
            if path in self._applied:
                return True  # instrumenting twice is harmless
            module = sys.modules.get(module_name)
            if module is None and lazy:
                self._pending[path] = lambda mod: self._apply(path, install, mod, in_place)
                self._hook(module_name)
                return False
            return self._apply(path, install, module, in_place)

    def when_imported(self, module_name: str, callback: Callable[[ModuleType], object]) -> None:
        """Run ``callback(module)`` once, when ``module_name`` is imported, if this patcher is still on then.

        The caller checks first that the module is not imported yet (a callback for an imported module
        runs at its next import only). Faults in the callback are logged once and swallowed.
        """
        with self._lock:
            self._callbacks.setdefault(module_name, []).append(callback)
            self._hook(module_name)

    def _hook(self, module_name: str) -> None:
        if module_name in self._hooked:
            return
        self._hooked.add(module_name)

        def on_import(module: ModuleType) -> None:
            # The hook cannot be removed: it checks that this patcher is still on.
            if not self.active:
                return
            with guarded(f"{self.owner} post-import hook for {module_name}"), self._lock:
                self._hooked.discard(module_name)  # wrapt runs a hook once: a later import needs a new one
                for path in [p for p in self._pending if split_path(p)[0] == module_name]:
                    self._pending[path](module)
                for callback in self._callbacks.pop(module_name, ()):
                    if self.active:
                        callback(module)

        wrapt.register_post_import_hook(on_import, module_name)

    def _apply(self, path: str, install: Callable[[PatchTarget], Any], module: ModuleType | None,
               in_place: Callable[[Any], Any] | None = None) -> bool:
        try:
            target = resolve(path, module)
        except (ImportError, AttributeError) as exc:
            log_once((self.owner, "unresolved", path), "%s: cannot patch %s: %s", self.owner, path, exc)
            return False
        if not self.active:
            return False
        if in_place is not None and target.original is not _MISSING:
            raw = target.original
            function = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            shared = self._in_place.get(id(function))
            if shared is not None and shared.function is function:
                self._applied[path] = _Applied(target, shared)
                self._pending.pop(path, None)
                return True
            if _at_canonical_place(function):
                try:
                    layer = patch_in_place(function, in_place)
                except (ValueError, TypeError, SyntaxError) as exc:  # a code object we cannot reproduce
                    log_once((self.owner, "not-in-place", path), "%s: %s is replaced, not patched in place (%s)",
                             self.owner, path, exc, level=logging.DEBUG)
                else:
                    if layer is None:
                        return False  # the factory declined: nothing to patch
                    self._in_place[id(function)] = layer
                    self._applied[path] = _Applied(target, layer)
                    self._pending.pop(path, None)
                    return True
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
            if isinstance(applied.installed, InPlacePatch):
                self._unpatch_in_place(applied.installed, path)
                return
            # Only restore if nobody patched over us since; otherwise leave their patch in place.
            if target.parent.__dict__.get(target.attribute, _MISSING) is not applied.installed:
                log_once((self.owner, "overpatched", path),
                         "%s: %s was patched again by someone else; leaving it", self.owner, path)
                return
            if target.original is _MISSING:
                delattr(target.parent, target.attribute)
            else:
                setattr(target.parent, target.attribute, target.original)

    def _unpatch_in_place(self, layer: InPlacePatch, path: str) -> None:
        if any(applied.installed is layer for applied in self._applied.values()):
            return  # another path still shares it
        self._in_place.pop(id(layer.function), None)
        if not unpatch_in_place(layer):
            log_once((self.owner, "overpatched", path),
                     "%s: the code of %s was changed again by someone else; leaving it", self.owner, path)

    def unpatch_all(self) -> None:
        """Restore every original and switch off the post-import hooks."""
        with self._lock:
            self.active = False
            for path in list(self._applied):
                self.unpatch(path)
            self._pending.clear()
            self._callbacks.clear()

    def restart(self) -> None:
        """Make a stopped patcher usable again (instrument after uninstrument)."""
        with self._lock:
            self.active = True
