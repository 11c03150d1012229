"""create(): specs as names or dicts, role defaults, validation, config round trips."""
import json

import pytest

from qresearch.errors import ConfigError
from qresearch.quantizers import create, get, names, parameters

from .conftest import built_in_quantizers

SAMPLE_SPECS = [
    {"name": "minmax", "bits": 6, "symmetric": True, "per_channel": True, "axis": -2, "range_tracking": "last_value",
     "ema_decay": 0.9, "init_min": -1.0, "init_max": 2.0},
    {"name": "lsq", "bits": 3, "narrow_range": True, "per_channel": True, "axis": [2, 3], "signed": False,
     "scale_format": "pot", "step_init": 0.5, "data_init": False, "grad_scaling": False},
    {"name": "lsq_plus", "bits": 5, "step_init": 0.2, "offset_init": -0.3, "nudge_zero_point": False},
    {"name": "pact", "bits": 2, "alpha_init": 4.0, "alpha_decay": 1e-4, "signed": True, "narrow_range": True},
    {"name": "dorefa", "bits": 7, "mode": "activations"},
    {"name": "pot", "bits": 4, "pot_rounding": "round", "range_tracking": "last_value", "per_channel": True},
    {"name": "a2q", "bits": 4, "accumulator_bits": 14, "input_bits": 6, "input_signed": True, "per_channel": False,
     "narrow_range": False, "norm_penalty": 0.001},
]


def test_every_built_in_has_a_sample_spec():
    assert {s["name"] for s in SAMPLE_SPECS} == set(built_in_quantizers())


@pytest.mark.parametrize("spec", SAMPLE_SPECS, ids=lambda s: s["name"])
def test_config_round_trips(spec):
    q = create(spec)
    cfg = q.get_config()
    for key, value in spec.items():
        if key != "name":
            assert cfg[key] == value, key
    assert set(cfg) == set(parameters(type(q)))
    json.dumps(cfg)  # plain data
    again = type(q).from_config(json.loads(json.dumps(cfg)))
    assert again == q and again.get_config() == cfg and hash(again) == hash(q)
    assert create({"name": spec["name"], **cfg}) == q
    assert repr(q).startswith(type(q).__name__ + "(")


def test_spec_forms():
    assert create("lsq") == create({"name": "lsq"}) == create({"quantizer": "lsq"})
    q = create({"name": "lsq", "bits": 4})
    assert create(q) is q
    assert create({"name": "lsq"}, bits=3).bits == 3  # keyword overrides
    assert create("pact") != create({"name": "pact", "bits": 4})


@pytest.mark.parametrize("name, role, expected", [
    ("lsq", "weights", {"signed": True, "symmetric": True}),
    ("lsq", "activations", {"signed": False}),
    ("lsq_plus", "weights", {"symmetric": True}),
    ("lsq_plus", "activations", {"symmetric": False}),
    ("pact", "activations", {"signed": False}),
    ("pact", "weights", {"signed": True}),
    ("dorefa", "weights", {"mode": "weights"}),
    ("dorefa", "activations", {"mode": "activations"}),
    ("minmax", "weights", {"symmetric": True, "narrow_range": True, "range_tracking": "last_value"}),
    ("pot", "weights", {"narrow_range": True, "range_tracking": "last_value", "scale_format": "pot"}),
    ("pot", "activations", {"range_tracking": "ema"}),
    ("a2q", "weights", {"symmetric": True, "narrow_range": True, "per_channel": True, "signed": True}),
])
def test_role_defaults(name, role, expected):
    cfg = create(name, role=role).get_config()
    for key, value in expected.items():
        assert cfg[key] == value, key


def test_spec_fields_beat_role_defaults():
    assert create({"name": "lsq", "signed": True}, role="activations").signed is True


@pytest.mark.parametrize("spec, fragments", [
    ({"name": "lsq", "bitz": 4}, ["'bitz'", "did you mean 'bits'", "Valid fields: bits"]),
    ({"name": "pact", "alpha": 3.0}, ["'alpha'", "did you mean 'alpha_init'"]),
    ({"name": "lsq", "bits": 1}, ["bits", "[2, 16]"]),
    ({"name": "lsq", "bits": 4.0}, ["bits", "integer"]),
    ({"name": "lsq", "bits": True}, ["bits"]),
    ({"name": "minmax", "per_channel": "yes"}, ["per_channel", "true or false"]),
    ({"name": "minmax", "scale_format": "log"}, ["scale_format", "float32", "pot"]),
    ({"name": "minmax", "axis": "last"}, ["axis", "integer"]),
    ({"name": "minmax", "range_tracking": "max"}, ["range_tracking", "'ema'", "'last_value'"]),
    ({"name": "minmax", "ema_decay": 1.0}, ["ema_decay", "< 1.0"]),
    ({"name": "minmax", "ema_decay": "fast"}, ["ema_decay"]),
    ({"name": "minmax", "init_min": 1.0}, ["init_min", "<= 0.0"]),
    ({"name": "minmax", "scale_format": "pot"}, ["symmetric", "'pot' quantizer"]),
    ({"name": "lsq", "step_init": 0}, ["step_init", "> 0.0"]),
    ({"name": "lsq", "data_init": "no"}, ["data_init", "true or false"]),
    ({"name": "lsq", "symmetric": False}, ["symmetric", "lsq_plus"]),
    ({"name": "lsq_plus", "offset_init": float("nan")}, ["offset_init", "finite"]),
    ({"name": "lsq_plus", "nudge_zero_point": 1}, ["nudge_zero_point"]),
    ({"name": "pact", "alpha_init": -1.0}, ["alpha_init", "> 0.0"]),
    ({"name": "pact", "alpha_decay": -0.1}, ["alpha_decay", ">= 0.0"]),
    ({"name": "dorefa", "mode": "both"}, ["mode", "'auto'", "'weights'", "'activations'"]),
    ({"name": "dorefa", "scale_format": "pot"}, ["power-of-two"]),
    ({"name": "pot", "pot_rounding": "floor"}, ["pot_rounding", "'ceil'", "'round'"]),
    ({"name": "a2q", "norm_penalty": -1.0}, ["norm_penalty", ">= 0.0"]),
])
def test_bad_fields_name_the_field(spec, fragments):
    with pytest.raises(ConfigError) as info:
        create(spec)
    msg = str(info.value)
    assert repr(spec["name"]) in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


LOW = {"max_bits": 3, "range_rule": "mse", "init": "mse"}


@pytest.mark.parametrize("bits, rule, init", [(2, "mse", "mse"), (3, "mse", "mse"), (4, "max", "paper"),
                                              (8, "max", "paper")])
def test_low_bits_fields_apply_at_or_below_their_width(bits, rule, init):
    q = create({"name": "minmax", "bits": bits, "low_bits": LOW}, role="weights")
    assert (q.range_rule, q.init, q.bits) == (rule, init, bits)
    assert "low_bits" not in q.get_config()   # the quantizer holds what applied: it saves and loads as itself
    assert create({"name": "minmax", **q.get_config()}) == q


@pytest.mark.parametrize("low, fragments", [
    ({"max_bits": 3, "range_rul": "mse"}, ["'range_rul'", "did you mean 'range_rule'"]),  # checked at 8 bits too
    ({"range_rule": "mse"}, ["low_bits", "max_bits"]),
    ({"max_bits": 1, "range_rule": "mse"}, ["max_bits", "[2, 16]"]),
    ({"max_bits": 3, "bits": 2}, ["cannot set bits", "hardware target"]),
    ({"max_bits": 3, "symmetric": False}, ["cannot set symmetric"]),
    ({"max_bits": 3, "quantizer": "lsq"}, ["cannot set quantizer"]),
    ("mse", ["low_bits must be a dict"]),
])
def test_bad_low_bits_name_the_problem(low, fragments):
    with pytest.raises(ConfigError) as info:
        create({"name": "minmax", "bits": 8, "low_bits": low}, role="weights")
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_a_misspelt_low_bits_is_suggested():
    with pytest.raises(ConfigError, match="did you mean 'low_bits'"):
        create({"name": "minmax", "low_bit": LOW})


def test_bad_specs():
    with pytest.raises(ConfigError, match="has no 'name'.*lsq"):
        create({"bits": 4})
    with pytest.raises(ConfigError, match="name or a dict"):
        create(4)
    with pytest.raises(ConfigError, match="role must be one of"):
        create("lsq", role="bias")


def test_parameters_lists_fields_and_defaults():
    p = parameters(get("pact"))
    assert p["alpha_init"] == 6.0 and p["bits"] == 8
    for name in names():
        assert "bits" in parameters(get(name))
