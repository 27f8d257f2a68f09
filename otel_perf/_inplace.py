"""Patch a Python function in place: the function object stays where it is and runs a replacement.

Why this module exists: replacing a module attribute (``json.loads = wrapper``) leaves every reference
taken before instrumentation (``from json import loads`` at import time) on the original, which is then
neither measured nor picklable: pickle saves a function by its name and refuses one that is not the
object found under that name (``PicklingError: it's not the same object as json.loads``). Patched in
place, ``json.loads`` *is* the original object, wherever it is referenced, so it pickles as itself.

How: the function's ``__code__`` is swapped for a trampoline, a one-line code object compiled for it
that calls the replacement (a constant of the code, so no name is added anywhere), which calls a private
copy of the function carrying its own code. The trampoline takes ``(*args, **kwargs)`` and passes them
on as the caller gave them: the replacement sees exactly the call it would see as an attribute (a
trampoline with the function's own parameters would pass every default explicitly, and re-binding
keyword-only parameters costs several times more on ``json.loads``). So that ``inspect.signature`` is
unchanged, the function carries a ``__signature__`` while it is patched. The trampoline keeps the
function's name, file and first line, so ``inspect.getsource`` and tracebacks show the function's own
source (on 3.11 and later without column marks, which would point into a line the trampoline does not
have). Restoring puts the code back; patches stack, and any of them can be removed first.

Only plain functions found at their canonical place (``__module__:__qualname__``, where pickle finds
them) are patched this way, whatever name the caller reached them by; generators and coroutine
functions, functions not reachable by their own name, and built-in functions are not (the caller
replaces the attribute instead).
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = ["InPlacePatch", "can_patch_in_place", "layer_of", "patch_in_place", "replacement_of", "unpatch_in_place"]

_PLACEHOLDER = "__otel_perf_replacement__"
_OUTER = "__otel_perf_trampoline__"
_NOT_PLAIN = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
# Parameter names of the generic trampoline: not names a function's free variables could have.
_ARGS, _KWARGS = "_otel_perf_args", "_otel_perf_kwargs"
# 3.11-3.13 location tables (Objects/locations.md): entry kind 13 = a line and no columns.
_NO_COLUMNS_TABLE = (3, 11) <= sys.version_info < (3, 14)


@dataclass
class InPlacePatch:
    """One layer of in-place patching on ``function``."""

    function: types.FunctionType
    code: types.CodeType  # the code below this layer: restored when the layer is removed
    trampoline: types.CodeType
    body: types.FunctionType  # a copy of the function that runs ``code``
    replacement: Callable[..., Any]


_lock = threading.RLock()
_layers: dict[int, list[InPlacePatch]] = {}  # id(function) -> its layers, bottom first
_signatures_added: dict[int, types.FunctionType] = {}  # functions given a __signature__ while patched


def can_patch_in_place(function: Any, module: str, qualname: str) -> TypeGuard[types.FunctionType]:
    """Whether ``function`` can be patched in place for the path ``module:qualname`` (its canonical one)."""
    return (type(function) is types.FunctionType
            and not function.__code__.co_flags & _NOT_PLAIN
            and module != "__main__"
            and getattr(function, "__module__", None) == module
            and getattr(function, "__qualname__", None) == qualname)


def layer_of(function: Any) -> InPlacePatch | None:
    """The top layer of in-place patching on ``function``, or None when it is not patched in place."""
    with _lock:
        layers = _layers.get(id(function))
        return layers[-1] if layers and layers[-1].function is function else None


def replacement_of(function: Any) -> Any:
    """The replacement the function now runs (the top layer's), or None when it is not patched in place."""
    layer = layer_of(function)
    return layer.replacement if layer is not None else None


def _copy(function: types.FunctionType) -> types.FunctionType:
    """A new function object with the same code, globals, defaults, closure and metadata."""
    body = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    body.__kwdefaults__ = function.__kwdefaults__
    body.__qualname__ = function.__qualname__
    body.__module__ = function.__module__
    body.__doc__ = function.__doc__
    body.__annotations__ = dict(function.__annotations__)
    if hasattr(function, "__type_params__"):
        body.__type_params__ = function.__type_params__  # type: ignore[attr-defined]
    body.__dict__.update(function.__dict__)
    return body


def _no_columns(code: types.CodeType) -> bytes:
    units = len(code.co_code) // 2
    table = bytearray()
    while units:
        length = min(units, 8)
        table += bytes((0x80 | (13 << 3) | (length - 1), 0))  # line delta 0: the function's first line
        units -= length
    return bytes(table)


def _trampoline(function: types.FunctionType, code: types.CodeType, replacement: Callable[..., Any]
                ) -> types.CodeType:
    free = code.co_freevars
    lines = [f"def {_OUTER}():"]
    if free:
        lines.append(f"    {' = '.join(free)} = None")
    # One line; the free variables are named after the return (never run) so that the trampoline has
    # the same number of them as the function, which Python requires of a new __code__.
    inner = f"    def {code.co_name}(*{_ARGS}, **{_KWARGS}): return {_PLACEHOLDER!r}(*{_ARGS}, **{_KWARGS})"
    lines.append(inner + (f"; {', '.join(free)}" if free else ""))
    lines.append(f"    return {code.co_name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'str' object is not callable": the constant is replaced below
        outer = compile("\n".join(lines) + "\n", code.co_filename, "exec")
    made = next(c for c in outer.co_consts if isinstance(c, types.CodeType)).co_consts
    template = next(c for c in made if isinstance(c, types.CodeType) and c.co_name == code.co_name)
    if template.co_freevars != free:
        raise ValueError(f"cannot reproduce the free variables of {function.__qualname__}")
    changes: dict[str, Any] = {
        "co_consts": tuple(replacement if c == _PLACEHOLDER else c for c in template.co_consts),
        "co_firstlineno": code.co_firstlineno,
    }
    if sys.version_info >= (3, 11):
        changes["co_qualname"] = code.co_qualname
    if _NO_COLUMNS_TABLE:
        changes["co_linetable"] = _no_columns(template)
    return template.replace(**changes)


def patch_in_place(function: types.FunctionType,
                   factory: Callable[[types.FunctionType], Callable[..., Any]]) -> InPlacePatch | None:
    """Make ``function`` run ``factory(copy of function)``; None when the factory declined (returned the
    copy itself or something not callable)."""
    with _lock:
        code = function.__code__
        body = _copy(function)
        replacement = factory(body)
        if replacement is body or not callable(replacement):
            return None
        signature = None
        if "__signature__" not in function.__dict__:
            try:
                signature = inspect.signature(function)
            except (TypeError, ValueError):
                pass
        trampoline = _trampoline(function, code, replacement)
        function.__code__ = trampoline
        if signature is not None:
            function.__signature__ = signature  # type: ignore[attr-defined]
            _signatures_added[id(function)] = function
        layer = InPlacePatch(function, code, trampoline, body, replacement)
        _layers.setdefault(id(function), []).append(layer)
        return layer


def unpatch_in_place(layer: InPlacePatch) -> bool:
    """Remove ``layer``; the function runs what was below it. False when its code was changed by someone
    else in the meantime (then it is left as it is)."""
    with _lock:
        layers = _layers.get(id(layer.function), [])
        if layer not in layers:
            return True
        position = layers.index(layer)
        if position == len(layers) - 1:
            if layer.function.__code__ is not layer.trampoline:
                return False
            layer.function.__code__ = layer.code
        else:  # a layer above calls this one through its body: point that body past this layer
            above = layers[position + 1]
            above.body.__code__ = layer.code
            above.code = layer.code
        layers.remove(layer)
        if not layers:
            del _layers[id(layer.function)]
            if _signatures_added.pop(id(layer.function), None) is not None:
                layer.function.__dict__.pop("__signature__", None)
        return True
