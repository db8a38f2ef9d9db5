import pytest

from p3bench.errors import ConfigError
from p3bench.registry import Registry, closest


def test_register_and_get():
    registry: Registry = Registry("thing")

    @registry.register("alpha")
    class Alpha:
        pass

    assert registry.get("alpha") is Alpha
    assert "alpha" in registry
    assert registry.names() == ["alpha"]


def test_lazy_entry_imports_on_first_get():
    registry: Registry = Registry("thing")
    registry.register_lazy("dumps", "json:dumps")
    import json

    assert registry.get("dumps") is json.dumps


def test_unknown_name_is_one_line_with_known_names_and_closest():
    registry: Registry = Registry("method")
    for name in ("random", "full", "p3"):
        registry.register(name)(object())
    with pytest.raises(ConfigError) as info:
        registry.get("randm")
    message = str(info.value)
    assert "\n" not in message
    assert "'randm'" in message and "full, p3, random" in message and "did you mean 'random'" in message


def test_no_suggestion_when_nothing_is_close():
    assert closest("zzzzzz", ["random", "full"]) is None


def test_registering_another_object_under_a_taken_name_fails():
    registry: Registry = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(2)
