"""A scheme's ``low_bits`` rule: scheme fields that replace its own at or below a width, applied once."""
import pytest

from qresearch.config import with_bits
from qresearch.errors import ConfigError
from qresearch.schemes import SchemeSpec, low_bits

RULE = {"max_bits": 3, "bn_folding": "no_fold", "quantizer_lr_multiplier": 0.5}


def _scheme(w_bits, a_bits, rule=RULE, **extra):
    return {"weights": {"quantizer": "lsq", "bits": w_bits}, "activations": {"quantizer": "lsq", "bits": a_bits},
            "bn_folding": "fold", "low_bits": rule, **extra}


@pytest.mark.parametrize("w_bits, a_bits, applied", [(2, 2, True), (3, 3, True), (4, 4, False), (2, 8, True),
                                                     (8, 3, True), (4, 8, False)])
def test_the_rule_applies_where_the_narrower_width_is_at_most_max_bits(w_bits, a_bits, applied):
    spec = SchemeSpec.from_dict(_scheme(w_bits, a_bits))
    assert spec.bn_folding == ("no_fold" if applied else "fold")
    assert spec.quantizer_lr_multiplier == (0.5 if applied else 1.0)
    # applied: consumed (the dict no longer carries it); not applied: kept for a later width
    assert ("low_bits" in spec.to_dict()) is not applied
    assert SchemeSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_a_rule_kept_at_4_bits_applies_once_the_widths_drop():
    at_4 = SchemeSpec.from_dict(_scheme(4, 4)).to_dict()
    at_2 = SchemeSpec.from_dict(with_bits(at_4, 2))
    assert at_2.bn_folding == "no_fold" and at_2.weights["bits"] == at_2.activations["bits"] == 2


def test_a_consumed_rule_does_not_undo_a_later_change():
    # a hardware target's coercion or fold_for_deployment set bn_folding after the rule applied
    spec = SchemeSpec.from_dict(_scheme(2, 2)).replace(bn_folding="fold")
    assert spec.bn_folding == "fold"


def test_with_bits_gives_the_runner_the_dict_the_model_is_built_with():
    d = with_bits(_scheme(4, 4), 2)
    assert d["bn_folding"] == "no_fold" and d["quantizer_lr_multiplier"] == 0.5 and "low_bits" not in d
    assert with_bits(_scheme(4, 4), 4)["bn_folding"] == "fold"
    # without the shorthand, the widths written in the roles decide
    assert with_bits(_scheme(2, 2), None)["bn_folding"] == "no_fold"


def test_null_keeps_the_schemes_own_fields_at_every_width():
    assert SchemeSpec.from_dict(_scheme(2, 2, rule=None)).bn_folding == "fold"
    assert SchemeSpec.from_dict(_scheme(2, 2, rule=None)).to_dict().get("low_bits") is None


def test_the_width_of_a_role_without_bits_is_its_quantizers_default():
    assert low_bits.width({"quantizer": "lsq"}, None) == 8
    assert low_bits.width(None, {"quantizer": "minmax", "bits": 3}) == 3
    assert low_bits.width(None, None) is None
    assert SchemeSpec.from_dict({"weights": None, "activations": None, "low_bits": RULE}).bn_folding == "fold"


@pytest.mark.parametrize("rule, words", [
    ("no_fold", ["low_bits", "max_bits", "bn_folding: no_fold"]),
    ({"bn_folding": "no_fold"}, ["low_bits", "max_bits"]),
    ({"max_bits": 1, "bn_folding": "no_fold"}, ["low_bits.max_bits", "[2, 16]"]),
    ({"max_bits": 3}, ["low_bits", "sets no field", "bn_folding"]),
    ({"max_bits": 3, "weights": {"bits": 8}}, ["'weights'", "weights.low_bits"]),
    ({"max_bits": 3, "first_last_bits": 8}, ["'first_last_bits'", "bn_folding"]),
])
def test_a_bad_rule_names_the_key_and_the_fix(rule, words):
    with pytest.raises(ConfigError) as exc:
        SchemeSpec.from_dict(_scheme(4, 4, rule=rule))
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_a_bad_value_fails_where_the_rule_does_not_apply_yet():
    # checked at 4 bits, not at the first 2-bit run of a sweep
    with pytest.raises(ConfigError, match=r"low_bits.*bn_folding.*must be one of"):
        SchemeSpec.from_dict(_scheme(4, 4, rule={"max_bits": 3, "bn_folding": "maybe"}))
    with pytest.raises(ConfigError, match="bn_folding"):
        SchemeSpec.from_dict(_scheme(2, 2, rule={"max_bits": 3, "bn_folding": "maybe"}))


def test_a_field_an_override_or_the_command_line_gives_wins_over_the_quantizers_rule():
    from qresearch.quantizers import create
    from qresearch.schemes.spec import merge_quantizer_spec

    base = {"quantizer": "lsq", "bits": 2, "init": "mse", "init_percentile": 99.9,
            "low_bits": {"max_bits": 3, "init": "mse_no_shrink", "init_percentile": 99.0}}
    assert create(base, role="weights").init == "mse_no_shrink"
    # an override's init holds at 2 bits; the rule's other field still applies
    layer = merge_quantizer_spec(base, {"init": "max"})
    q = create(layer, role="weights")
    assert (q.init, q.init_percentile) == ("max", 99.0)
    assert base["low_bits"]["init"] == "mse_no_shrink"   # the scheme's own spec is not changed
    # an override with its own rule, or a width only, keeps the rule as it is
    assert merge_quantizer_spec(base, {"low_bits": None})["low_bits"] is None
    assert create(merge_quantizer_spec(base, {"bits": 3}), role="weights").init == "mse_no_shrink"
    # given on the command line: the same, through the runner's dict
    spec = low_bits.resolved({"weights": dict(base)}, keep=("weights.init", "weights.init_percentile"))
    assert spec["weights"]["low_bits"] is None and create(spec["weights"], role="weights").init == "mse"
