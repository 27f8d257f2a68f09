"""Patching by dotted path: now or on import, idempotent, and an exact restore."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from otel_perf._patching import Patcher, resolve, split_path
from tests.helpers import patch_targets


def _tagging(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return ("wrapped", wrapped(*args, **kwargs))


def test_wrap_and_restore_identity() -> None:
    original = patch_targets.double
    patcher = Patcher("test")
    assert patcher.wrap("tests.helpers.patch_targets:double", _tagging)
    assert patch_targets.double(3) == ("wrapped", 6)
    assert patch_targets.double.__doc__ == original.__doc__  # wrapt passes metadata through
    patcher.wrap("tests.helpers.patch_targets:double", _tagging)  # twice is harmless
    assert patch_targets.double(3) == ("wrapped", 6)
    patcher.unpatch_all()
    assert patch_targets.double is original


def test_inherited_method_is_deleted_not_shadowed_on_restore() -> None:
    """Patching Child.greet (inherited) and restoring leaves Child without its own greet."""
    patcher = Patcher("test")
    patcher.wrap("tests.helpers.patch_targets:Child.greet", _tagging)
    assert patch_targets.Child().greet() == ("wrapped", "base")
    assert patch_targets.Base().greet() == "base"
    patcher.unpatch_all()
    assert "greet" not in patch_targets.Child.__dict__


def test_classmethod_is_wrapped_and_restored() -> None:
    raw = patch_targets.Base.__dict__["make"]
    patcher = Patcher("test")
    patcher.wrap("tests.helpers.patch_targets:Base.make", _tagging)
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
    assert patcher.wrap("late_module_for_patch:f", _tagging) is False
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
    patcher.wrap("late_module_stopped:f", _tagging)
    patcher.unpatch_all()
    import late_module_stopped

    assert late_module_stopped.f() == 1
    sys.modules.pop("late_module_stopped")


def test_unresolvable_path_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    patcher = Patcher("test")
    assert patcher.wrap("tests.helpers.patch_targets:missing", _tagging) is False
    assert patcher.wrap("tests.helpers.patch_targets:missing", _tagging) is False
    assert caplog.text.count("cannot patch tests.helpers.patch_targets:missing") == 1


def test_split_and_resolve() -> None:
    assert split_path("a.b:C.d") == ("a.b", ("C", "d"))
    with pytest.raises(ValueError, match=r"pkg\.mod:func"):
        split_path("a.b.c")
    target = resolve("tests.helpers.patch_targets:Child.make")
    assert target.parent is patch_targets.Child and target.attribute == "make"
