"""Hardware targets as data: loading, validation, registry, fixed output ranges."""
import pytest
import yaml

import qresearch
from qresearch import hardware as hw
from qresearch.errors import ConfigError, UnknownNameError
from qresearch.hardware import target as target_module
from qresearch.paths import CONF_DIR
from qresearch.schemes import spec as spec_module

BUILTINS = ["academic", "npu_w4a8", "pot_dsp", "snpe", "tensorrt", "tflite_int16x8", "tflite_int8"]


def test_builtins_registered_and_exported():
    assert set(BUILTINS) <= set(hw.names())
    assert qresearch.hardware is hw
    for name in BUILTINS:
        t = hw.get(name)
        assert isinstance(t, hw.Target) and t.name == name


@pytest.mark.parametrize("name", BUILTINS)
def test_yaml_is_a_plain_hydra_group_option(name):
    path = CONF_DIR / "hardware" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data["name"] == name
    # Round trip: the dict form rebuilds the same target.
    t = hw.get(name)
    assert hw.Target.from_dict(t.to_dict()).to_dict() == t.to_dict()
    # Hydra-style DictConfig is accepted by get().
    from omegaconf import OmegaConf
    assert hw.get(OmegaConf.create(data)).to_dict() == t.to_dict()


def test_facts_of_builtins():
    t8 = hw.get("tflite_int8")
    assert t8.weights.bits == (8,) and t8.activations.bits == (8,)
    assert t8.weights.symmetric_required and t8.weights.narrow_range is True
    assert t8.zero_point_rules == {"weights": "zero", "activations": "any"}
    assert t8.runtime == "tflite_int8" and t8.has_runtime and t8.integer_only
    assert t8.bn_folding == "fold" and t8.quantize_ops == "all"
    assert t8.kernels == "tflite_builtin" and hw.get("academic").kernels == "none"  # emulated in inference
    t16 = hw.get("tflite_int16x8")
    assert t16.activations.bits == (16,) and t16.activations.symmetric_required and t16.weights.bits == (8,)
    ac = hw.get("academic")
    assert ac.first_last_bits == 8 and ac.bn_folding == "no_fold" and not ac.has_runtime and ac.quantize_ops == "inputs"
    assert target_module.QUANTIZE_OPS == spec_module.QUANTIZE_OPS  # the same choices on both sides
    assert ac.weights.allowed_granularity("conv") == ("per_tensor",)
    trt = hw.get("tensorrt")
    assert trt.weights.allowed_granularity("conv") == ("per_channel",)
    assert trt.activations.symmetric_required
    assert hw.get("snpe").weights.symmetry == "asymmetric"
    assert hw.get("pot_dsp").weights.scale_format == ("pot",)
    npu = hw.get("npu_w4a8")
    assert npu.weights.bits == (4,) and npu.activations.bits == (8,) and npu.first_last_bits == 8
    assert npu.weights.allowed_granularity("dense") == ("per_channel",)


def test_fixed_output_ranges_follow_the_tflite_spec():
    t8 = hw.get("tflite_int8")
    p = t8.fixed_output_params
    assert (p["softmax"].scale, p["softmax"].zero_point) == (1 / 256, -128)
    assert (p["sigmoid"].scale, p["sigmoid"].zero_point) == (1 / 256, -128)
    assert (p["tanh"].scale, p["tanh"].zero_point) == (1 / 128, 0)
    r = t8.fixed_output_ranges
    assert r["softmax"] == [0.0, 255 / 256] and r["sigmoid"] == [0.0, 255 / 256]
    assert r["tanh"] == [-1.0, 127 / 128]
    r16 = hw.get("tflite_int16x8").fixed_output_ranges
    assert r16["softmax"] == [-1.0, 32767 / 32768]
    assert hw.get("academic").fixed_output_ranges == {}


def _write(tmp_path, name, data):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _valid(name="mine"):
    d = hw.get("tflite_int8").to_dict()
    d["name"] = name
    return d


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["weights"].update(bits=[1]), "weights.bits"),
    (lambda d: d["weights"].update(bits=[]), "weights.bits"),
    (lambda d: d["activations"].update(symmetry="sym"), "activations.symmetry"),
    (lambda d: d["weights"].update(zero_point="any"), "weights.zero_point"),
    (lambda d: d["weights"].update(granularity={"conv": ["per_row"]}), "weights.granularity.conv"),
    (lambda d: d["activations"].update(granularity="per_channel"), "activations.granularity"),
    (lambda d: d["weights"].update(scale_format=["log"]), "weights.scale_format"),
    (lambda d: d.update(runtime="tensorflow_js"), "runtime"),
    (lambda d: d.update(quantize_ops="most"), "quantize_ops"),
    (lambda d: d.update(bn_folding="maybe"), "bn_folding"),
    (lambda d: d.update(first_last_bits=32), "first_last_bits"),
    (lambda d: d.update(fixed_output_ranges={"softmax": {"scale": 0.0039}}), "fixed_output_ranges.softmax"),
    (lambda d: d.update(fixed_output_ranges={"relu": {"scale": 1.0, "zero_point": 0}}), "fixed_output_ranges.relu"),
    (lambda d: d.update(fixed_output_ranges={"tanh": {"scale": 1.0, "zero_point": 300}}),
     "fixed_output_ranges.tanh.zero_point"),
    (lambda d: d.update(kernels="arm_neon"), "kernels"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["weights"].update(bitz=[8]), "weights.bitz"),
    (lambda d: d.pop("activations"), "activations"),
])
def test_invalid_files_fail_naming_file_and_field(tmp_path, mutate, field):
    d = _valid()
    mutate(d)
    path = _write(tmp_path, "mine", d)
    with pytest.raises(ConfigError) as exc:
        hw.Target.from_yaml(path)
    assert str(path) in str(exc.value) and repr(field) in str(exc.value)


def test_name_must_equal_file_name(tmp_path):
    path = _write(tmp_path, "other", _valid("mine"))
    with pytest.raises(ConfigError, match="must equal the file name"):
        hw.Target.from_yaml(path)


def test_register_user_target_from_dict_and_file(tmp_path):
    d = _valid("test_user_micro")
    d["weights"]["granularity"] = {"conv": ["per_channel"], "dense": ["per_tensor"]}
    t = hw.register("test_user_micro", d, overwrite=True)
    assert hw.get("test_user_micro") is t and "test_user_micro" in hw.names()
    assert t.weights.allowed_granularity("dense") == ("per_tensor",)
    path = _write(tmp_path, "test_user_file", _valid("test_user_file"))
    assert hw.register("test_user_file", path, overwrite=True).name == "test_user_file"
    with pytest.raises(ConfigError, match="make them equal"):
        hw.register("x_other", _valid("not_x"))


def test_unknown_target_lists_known_ones():
    with pytest.raises(UnknownNameError) as exc:
        hw.get("tflite_int")
    assert "tflite_int8" in str(exc.value) and "Did you mean" in str(exc.value)
