"""Patching by dotted path: now or on import, idempotent, and an exact restore."""

from __future__ import annotations

import copy
import functools
import inspect
import pickle
import sys
import traceback
from typing import Any

import pytest

from otel_perf._patching import Patcher, resolve, split_path
from tests.helpers import patch_targets


def _tagging(original: Any) -> Any:
    """A Patcher factory: the replacement returns ("wrapped", what the original returns)."""
    if isinstance(original, classmethod):
        return classmethod(_tagging(original.__func__))

    @functools.wraps(original)
    def tagged(*args: Any, **kwargs: Any) -> Any:
        return ("wrapped", original(*args, **kwargs))

    return tagged


def test_wrap_and_restore_identity() -> None:
    original = patch_targets.double
    patcher = Patcher("test")
    assert patcher.replace("tests.helpers.patch_targets:double", _tagging)
    assert patch_targets.double(3) == ("wrapped", 6)
    assert patch_targets.double.__doc__ == original.__doc__  # the replacement passes metadata through
    patcher.replace("tests.helpers.patch_targets:double", _tagging)  # twice is harmless
    assert patch_targets.double(3) == ("wrapped", 6)
    patcher.unpatch_all()
    assert patch_targets.double is original


def test_inherited_method_is_deleted_not_shadowed_on_restore() -> None:
    """Patching Child.greet (inherited) and restoring leaves Child without its own greet."""
    patcher = Patcher("test")
    patcher.replace("tests.helpers.patch_targets:Child.greet", _tagging)
    assert patch_targets.Child().greet() == ("wrapped", "base")
    assert patch_targets.Base().greet() == "base"
    patcher.unpatch_all()
    assert "greet" not in patch_targets.Child.__dict__


def test_classmethod_is_wrapped_and_restored() -> None:
    raw = patch_targets.Base.__dict__["make"]
    patcher = Patcher("test")
    patcher.replace("tests.helpers.patch_targets:Base.make", _tagging)
    assert patch_targets.Child.make() == ("wrapped", "Child")
    patcher.unpatch_all()
    assert patch_targets.Base.__dict__["make"] is raw


def test_replace_with_plain_closure() -> None:
    original = patch_targets.double
    patcher = Patcher("test")
    patcher.replace("tests.helpers.patch_targets:double", lambda f: lambda x: f(x) + 1)
    assert patch_targets.double(2) == 5
    patcher.unpatch_all()
    assert patch_targets.double is original


def test_module_imported_later_is_patched_on_import(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "late_module_for_patch.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    patcher = Patcher("test")
    assert patcher.replace("late_module_for_patch:f", _tagging) is False
    assert patcher.pending() == ["late_module_for_patch:f"]
    import late_module_for_patch

    assert late_module_for_patch.f() == ("wrapped", 1)
    assert patcher.pending() == []
    patcher.unpatch_all()
    assert late_module_for_patch.f() == 1
    sys.modules.pop("late_module_for_patch")


def test_hook_of_stopped_patcher_does_nothing(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "late_module_stopped.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    patcher = Patcher("test")
    patcher.replace("late_module_stopped:f", _tagging)
    patcher.unpatch_all()
    import late_module_stopped

    assert late_module_stopped.f() == 1
    sys.modules.pop("late_module_stopped")


def test_when_imported_runs_once_on_import_and_not_after_unpatch_all(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one post-import hook mechanism: a callback runs when its module is imported, once, and a
    stopped patcher's callbacks never run (its wrapt hook cannot be removed)."""
    (tmp_path / "late_module_callback.py").write_text("X = 1\n")
    (tmp_path / "late_module_callback_stopped.py").write_text("X = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[Any] = []
    patcher = Patcher("test")
    patcher.when_imported("late_module_callback", lambda module: seen.append(module.X))
    import late_module_callback

    assert seen == [1]
    sys.modules.pop("late_module_callback")
    import late_module_callback  # noqa: F811, F401 - imported again: the callback ran once already

    assert seen == [1]
    patcher.when_imported("late_module_callback_stopped", lambda module: seen.append(module.X))
    patcher.unpatch_all()
    import late_module_callback_stopped  # noqa: F401

    assert seen == [1]
    sys.modules.pop("late_module_callback")
    sys.modules.pop("late_module_callback_stopped")


def test_unresolvable_path_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    patcher = Patcher("test")
    assert patcher.replace("tests.helpers.patch_targets:missing", _tagging) is False
    assert patcher.replace("tests.helpers.patch_targets:missing", _tagging) is False
    assert caplog.text.count("cannot patch tests.helpers.patch_targets:missing") == 1


def test_split_and_resolve() -> None:
    assert split_path("a.b:C.d") == ("a.b", ("C", "d"))
    with pytest.raises(ValueError, match=r"pkg\.mod:func"):
        split_path("a.b.c")
    target = resolve("tests.helpers.patch_targets:Child.make")
    assert target.parent is patch_targets.Child and target.attribute == "make"


# --- in place ---------------------------------------------------------------------------------------


def _counting(calls: list[str]) -> Any:
    def factory(original: Any) -> Any:
        @functools.wraps(original)
        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(original.__name__)
            return original(*args, **kwargs)

        return counting

    return factory


_T = "tests.helpers.patch_targets"


def test_in_place_keeps_the_object_for_references_taken_before_and_restores_its_code() -> None:
    """A reference taken before patching runs the replacement, pickles as the function does, and keeps
    its signature and source; unpatching puts the function's own code back."""
    early = patch_targets.keywords
    code, signature, source = early.__code__, inspect.signature(early), inspect.getsource(early)
    bare = pickle.dumps(early)
    calls: list[str] = []
    patcher = Patcher("test")
    assert patcher.replace(f"{_T}:keywords", _counting(calls), in_place=True)
    assert patch_targets.keywords is early and early.__code__ is not code
    assert early("a;b;c", sep=";", limit=1) == ["a", "b;c"]
    assert calls == ["keywords"]
    assert pickle.dumps(early) == bare and pickle.loads(bare) is early
    assert inspect.signature(early) == signature and inspect.getsource(early) == source
    assert copy.deepcopy(early) is early
    patcher.unpatch_all()
    assert early.__code__ is code and "__signature__" not in vars(early)
    assert early("a,b") == ["a", "b"] and calls == ["keywords"]


def test_in_place_errors_keep_the_functions_own_traceback_line() -> None:
    """A failing call's traceback shows the function's own file and first line for the extra frame."""
    patcher = Patcher("test")
    patcher.replace(f"{_T}:keywords", _counting([]), in_place=True)
    try:
        with pytest.raises(TypeError) as failure:
            patch_targets.keywords("a", bogus=1)  # type: ignore[call-arg]
        frames = traceback.extract_tb(failure.value.__traceback__)
        ours = [f for f in frames if f.name == "keywords"]
        assert ours and ours[0].filename == patch_targets.__file__
        assert ours[0].lineno == patch_targets.keywords.__code__.co_firstlineno
        if sys.version_info >= (3, 11):
            assert ours[0].colno is None  # no column marks pointing into the def line
    finally:
        patcher.unpatch_all()


def test_in_place_patches_stack_and_come_off_in_any_order() -> None:
    """Two patchers on one function: both run; removing the lower one first leaves the upper one
    working, and removing both restores the code."""
    code = patch_targets.double.__code__
    lower_calls: list[str] = []
    upper_calls: list[str] = []
    lower, upper = Patcher("lower"), Patcher("upper")
    lower.replace(f"{_T}:double", _counting(lower_calls), in_place=True)
    upper.replace(f"{_T}:double", _counting(upper_calls), in_place=True)
    assert patch_targets.double(2) == 4 and lower_calls == upper_calls == ["double"]
    lower.unpatch_all()
    assert patch_targets.double(3) == 6 and (lower_calls, upper_calls) == (["double"], ["double", "double"])
    upper.unpatch_all()
    assert patch_targets.double.__code__ is code
    assert patch_targets.double(4) == 8 and len(upper_calls) == 2


def test_in_place_second_name_shares_the_patch_and_alias_paths_reach_the_function() -> None:
    """``alias`` is ``double``: naming either patches the one function once, and it stays one object."""
    calls: list[str] = []
    patcher = Patcher("test")
    patcher.replace(f"{_T}:alias", _counting(calls), in_place=True)  # an alias: double itself is patched
    patcher.replace(f"{_T}:double", _counting(calls), in_place=True)
    assert patch_targets.alias is patch_targets.double
    assert patch_targets.double(1) == 2 and calls == ["double"]
    patcher.unpatch("tests.helpers.patch_targets:alias")
    assert patch_targets.double(1) == 2 and calls == ["double", "double"]  # still shared with the other path
    patcher.unpatch_all()
    assert patch_targets.double(1) == 2 and len(calls) == 2


def test_in_place_covers_closures_static_and_class_methods() -> None:
    closure_code = patch_targets.closure.__code__
    decode = patch_targets.Codec.__dict__["decode"]
    name = patch_targets.Codec.__dict__["name"]
    calls: list[str] = []
    patcher = Patcher("test")
    for path in ("closure", "Codec.decode", "Codec.name"):
        assert patcher.replace(f"{_T}:{path}", _counting(calls), in_place=True)
    assert patch_targets.closure(1) == 2
    assert patch_targets.Codec.decode(b"x") == "x" and patch_targets.Codec().decode(b"y") == "y"
    assert patch_targets.Codec.name() == "Codec"
    assert calls == ["closure", "decode", "decode", "name"]
    assert patch_targets.Codec.__dict__["decode"] is decode and patch_targets.Codec.__dict__["name"] is name
    patcher.unpatch_all()
    assert patch_targets.closure.__code__ is closure_code


def test_what_cannot_be_patched_in_place_is_replaced() -> None:
    """A generator function and an inherited method get the attribute replaced, as without in_place."""
    numbers = patch_targets.numbers
    patcher = Patcher("test")
    patcher.replace(f"{_T}:numbers", lambda f: functools.wraps(f)(lambda n: f(n + 1)), in_place=True)
    patcher.replace(f"{_T}:Child.greet", lambda f: lambda self: "patched", in_place=True)
    assert patch_targets.numbers is not numbers and list(patch_targets.numbers(1)) == [0, 1]
    assert patch_targets.Child().greet() == "patched" and patch_targets.Base().greet() == "base"
    patcher.unpatch_all()
    assert patch_targets.numbers is numbers and "greet" not in patch_targets.Child.__dict__


def test_in_place_code_changed_by_someone_else_is_left_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    code = patch_targets.double.__code__
    patcher = Patcher("test")
    patcher.replace(f"{_T}:double", _counting([]), in_place=True)
    theirs = (lambda x: 3 * x).__code__
    patch_targets.double.__code__ = theirs
    try:
        patcher.unpatch_all()
        assert patch_targets.double.__code__ is theirs
        assert "changed again by someone else" in caplog.text
    finally:
        patch_targets.double.__code__ = code


def test_a_function_that_cannot_get_a_trampoline_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a trampoline not be buildable for a function, the attribute is replaced as without
    in_place, and the function keeps its code."""
    from otel_perf import _inplace

    def refuse(*args: Any) -> Any:
        raise ValueError("cannot reproduce the free variables")

    monkeypatch.setattr(_inplace, "_trampoline", refuse)
    original, code = patch_targets.double, patch_targets.double.__code__
    calls: list[str] = []
    patcher = Patcher("test")
    assert patcher.replace(f"{_T}:double", _counting(calls), in_place=True)
    assert patch_targets.double is not original and original.__code__ is code
    assert patch_targets.double(2) == 4 and calls == ["double"]
    patcher.unpatch_all()
    assert patch_targets.double is original
