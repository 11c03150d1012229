"""The generic Registry every plugin kind uses."""
import pytest

import qresearch.registry as registry_module
from qresearch.errors import QResearchError, UnknownNameError
from qresearch.registry import Registry


def test_register_get_names_and_contains():
    reg = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def make_a():
        return "a"

    assert reg.get("a") is make_a and reg.get("b") == 2
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    assert "a" in reg and "zzz" not in reg
    assert "widget" in repr(reg)


def test_duplicate_names_need_overwrite():
    reg = Registry("widget")
    reg.register("a", 1)
    reg.register("a", 1)  # the same object again is harmless (module re-import)
    with pytest.raises(QResearchError, match="already registered.*overwrite=True"):
        reg.register("a", 2)
    reg.register("a", 2, overwrite=True)
    assert reg.get("a") == 2


@pytest.mark.parametrize("bad", ["", None, 3])
def test_names_must_be_non_empty_strings(bad):
    with pytest.raises(QResearchError, match="non-empty strings"):
        Registry("widget").register(bad, 1)


def test_unknown_name_lists_known_names_and_the_closest():
    reg = Registry("widget")
    for name in ("resnet", "mobilenet", "lenet"):
        reg.register(name, name)
    with pytest.raises(UnknownNameError) as info:
        reg.get("resnte")
    msg = str(info.value)
    assert "unknown widget 'resnte'" in msg and "Did you mean 'resnet'?" in msg
    assert "Known widgets: lenet, mobilenet, resnet." in msg
    assert isinstance(info.value, KeyError)  # callers may catch KeyError
    with pytest.raises(UnknownNameError, match=r"Known widgets: \(none\)"):
        Registry("widget").get("x")
    with pytest.raises(UnknownNameError, match="unknown widget"):
        reg.get(["unhashable"])


def test_entry_point_group_name():
    assert registry_module.ENTRY_POINT_GROUP == "qresearch.plugins"


def test_unknown_name_says_how_to_add_one():
    reg = Registry("widget", how_to_add="decorate it with @widgets.register('NAME').")
    reg.register("a", 1)
    with pytest.raises(UnknownNameError) as info:
        reg.get("b")
    assert str(info.value).endswith("Known widgets: a. To add one: decorate it with @widgets.register('NAME').")
    assert "To add one" not in Registry("widget").unknown_message("b")  # no hint given: none said


@pytest.mark.parametrize("lookup,hints", [
    (lambda: __import__("qresearch.quantizers", fromlist=["get"]).get("nope"),
     ["@qresearch.quantizers.register('NAME')", "plugins=[your_module]", "scheme.weights.quantizer=NAME"]),
    (lambda: __import__("qresearch.data", fromlist=["load_dataset"]).load_dataset({"name": "nope"}),
     ["dataset=npz dataset.path=", "dataset._target_=", "register_dataset", "plugins=[your_module]"]),
    (lambda: __import__("qresearch.models", fromlist=["MODELS"]).MODELS.get("nope"),
     ["model._target_=your_module.build", "register_model", "plugins=[your_module]"]),
    (lambda: __import__("qresearch.schemes.presets", fromlist=["get"]).get("nope"),
     ["qresearch.schemes.register(", "hydra.searchpath", "scheme.weights.quantizer="]),
    (lambda: __import__("qresearch.hardware", fromlist=["get"]).get("nope"),
     ["qresearch.hardware.register(", "conf/hardware/", "plugins=[your_module]"]),
])
def test_every_registry_says_how_to_add_one(lookup, hints):
    with pytest.raises(UnknownNameError) as info:
        lookup()
    msg = str(info.value)
    assert "To add one:" in msg
    for hint in hints:
        assert hint in msg, (hint, msg)
