"""msjoe.registry: the one registry behind samplers, benchmarks and MLLM backends."""

from __future__ import annotations

import sys

import pytest

from msjoe.registry import Registry


class Alpha:
    pass


class Beta:
    pass


def test_names_entries_and_an_unknown_name_listing_the_known_ones() -> None:
    registry: Registry[type] = Registry("widget")
    assert registry.add("b", Beta) is Beta and registry.add("a", Alpha) is Alpha
    assert registry.names() == ["a", "b"] and registry.get("a") is Alpha and "b" in registry and "c" not in registry
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; choose one of: a, b$"):
        registry.get("c")
    assert registry.names(sort=False) == ["b", "a"]  # the order they were added


def test_a_taken_name_is_refused_unless_it_is_the_same_entry_again() -> None:
    registry: Registry[object] = Registry("widget")
    registry.add("a", Alpha)
    registry.add("a", Alpha)  # a module imported twice registers again: no-op
    with pytest.raises(ValueError, match=r"widget 'a' is already registered by test_registry\.Alpha$"):
        registry.add("a", Beta)
    registry.add("spec", {"x": 1})
    registry.add("spec", {"x": 1})  # an equal spec
    with pytest.raises(ValueError, match=r"widget 'spec' is already registered$"):
        registry.add("spec", {"x": 2})
    assert registry.get("a") is Alpha and registry.get("spec") == {"x": 1}


def test_a_lazy_name_is_listed_and_its_module_imported_on_first_use(tmp_path, monkeypatch) -> None:
    registry: Registry[type] = Registry("widget", unknown_error=KeyError, lazy={"late": "msjoe_test_lazy_widget"})
    (tmp_path / "msjoe_test_lazy_widget.py").write_text(
        "from test_registry import LAZY\nclass Late: pass\nLAZY.add('late', Late)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "test_registry", sys.modules[__name__])
    global LAZY
    LAZY = registry
    assert registry.names() == ["late"] and "msjoe_test_lazy_widget" not in sys.modules
    assert registry.get("late").__name__ == "Late"
    assert "msjoe_test_lazy_widget" in sys.modules
    monkeypatch.delitem(sys.modules, "msjoe_test_lazy_widget")
    with pytest.raises(KeyError, match="unknown widget 'other'"):
        registry.get("other")


LAZY: Registry[type] | None = None
