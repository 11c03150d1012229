"""Runtimes as data: every target's runtime is a registered Runtime, and the facts code reads."""
from qresearch import hardware as hw


def test_every_target_runtime_is_registered():
    for name in hw.names():
        t = hw.get(name)
        assert t.runtime_facts is hw.RUNTIMES.get(t.runtime)
        assert t.has_runtime == t.runtime_facts.deploys and t.integer_only == t.runtime_facts.integer_only


def test_tflite_runtime_facts():
    int8, x16 = hw.RUNTIMES.get("tflite_int8"), hw.RUNTIMES.get("tflite_int16x8")
    assert (int8.activation_dtype, int8.converter_ops, int8.conv_bias_dtype) == ("int8", None, None)
    assert (x16.activation_dtype, x16.conv_bias_dtype, x16.symmetric_activations) == ("int16", "int64", True)
    assert not hw.RUNTIMES.get("none").deploys and not hw.RUNTIMES.get("none").integer_only
