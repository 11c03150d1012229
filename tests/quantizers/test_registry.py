"""The quantizer registry: built-ins, unknown names, the register decorator."""
import pytest

import qresearch
from qresearch.errors import QResearchError, UnknownNameError
from qresearch.quantizers import Quantizer, create, get, names, register
from qresearch.quantizers.registry import QUANTIZERS

from .conftest import built_in_quantizers

BUILT_INS = built_in_quantizers()


def test_built_ins_are_registered():
    assert {"dorefa", "lsq", "lsq_plus", "minmax", "pact", "pot"} <= set(BUILT_INS) <= set(names())
    for name in BUILT_INS:
        cls = get(name)
        assert issubclass(cls, Quantizer) and cls.registry_name == name


@pytest.mark.parametrize("typo, closest", [("lsqq", "lsq"), ("pactt", "pact"), ("minmx", "minmax"),
                                           ("lsq+", "lsq")])
def test_unknown_name_lists_known_names_and_closest_match(typo, closest):
    for call in (lambda: get(typo), lambda: create(typo), lambda: create({"name": typo, "bits": 4})):
        with pytest.raises(UnknownNameError) as info:
            call()
        msg = str(info.value)
        assert f"unknown quantizer {typo!r}" in msg
        assert f"Did you mean {closest!r}?" in msg
        assert "Known quantizers: " + ", ".join(sorted(names())) + "." in msg


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(UnknownNameError) as info:
        create("xyzzy")
    assert "Did you mean" not in str(info.value) and "lsq_plus" in str(info.value)


def test_register_rejects_non_quantizers_and_duplicates():
    with pytest.raises(QResearchError, match="must subclass qresearch.quantizers.Quantizer"):
        register("not_a_quantizer")(object)
    with pytest.raises(QResearchError, match="already registered"):
        @register("lsq")
        class Other(Quantizer):
            pass
    # The refused class did not take over the name for Keras deserialization either.
    from qresearch._compat import keras

    assert keras.utils.get_registered_object("qresearch>quantizer:lsq") is get("lsq")


def test_registered_classes_are_keras_serializable():
    from qresearch._compat import keras

    for name in BUILT_INS:
        q = create(name)
        blob = keras.utils.serialize_keras_object(q)
        assert blob["registered_name"] == f"qresearch>quantizer:{name}"
        assert keras.utils.deserialize_keras_object(blob) == q


def test_public_api():
    assert qresearch.quantizers.Quantizer is Quantizer
    assert QUANTIZERS.kind == "quantizer"
