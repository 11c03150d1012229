"""constrain(): every built-in target refuses what it cannot run, names each conflict, and coerces
with adapt=True (reporting every coercion); target-driven scheme fields are filled in."""
import pytest

from qresearch import hardware as hw
from qresearch.errors import IncompatibleTargetError


def spec(w=None, a=None, **extra):
    d = {"weights": {"quantizer": "minmax", "bits": 8, "per_channel": True, "narrow_range": True,
                     "symmetric": True, **(w or {})},
         "activations": {"quantizer": "minmax", "bits": 8, **(a or {})}}
    d.update(extra)
    return d


DENSE_PER_TENSOR = [{"match": "Dense", "weights": {"per_channel": False}}]


def tfl(w=None, a=None, **extra):
    """A scheme for the TFLite targets: Dense kernels per-tensor (see conf/hardware/tflite_int8.yaml)."""
    extra.setdefault("overrides", DENSE_PER_TENSOR)
    return spec(w, a, **extra)


def as_dict(s):
    return s.to_dict() if hasattr(s, "to_dict") else s


def conflicts(s, target):
    with pytest.raises(IncompatibleTargetError) as exc:
        hw.constrain(s, target)
    return exc.value


# A scheme each target accepts unchanged (apart from target-driven fields).
COMPLIANT = {
    "tflite_int8": tfl(),
    "tflite_int16x8": tfl(a={"bits": 16, "symmetric": True}),
    "academic": spec(w={"bits": 4, "per_channel": False}, a={"quantizer": "lsq", "bits": 4}),
    "tensorrt": spec(a={"symmetric": True, "narrow_range": True}),
    "snpe": spec(w={"per_channel": False, "symmetric": False, "narrow_range": False}),
    "pot_dsp": spec(w={"quantizer": "pot", "per_channel": False},
                    a={"quantizer": "pot", "symmetric": True}),
    "npu_w4a8": spec(w={"quantizer": "lsq", "bits": 4, "narrow_range": True}),
}


@pytest.mark.parametrize("target", sorted(COMPLIANT))
def test_compliant_scheme_passes_and_gets_target_fields(target):
    t = hw.get(target)
    out, coercions = hw.constrain(COMPLIANT[target], target)
    d = as_dict(out)
    assert d["weights"] == {**COMPLIANT[target]["weights"]} or d["weights"]["bits"] == COMPLIANT[target]["weights"]["bits"]
    assert d["quantize_ops"] == t.quantize_ops
    if t.bn_folding != "any":
        assert d["bn_folding"] == t.bn_folding
    assert d["first_last_bits"] == t.first_last_bits
    for op, rng in t.fixed_output_ranges.items():
        assert d["fixed_output_ranges"][op] == rng
    assert all("set by target" in c for c in coercions), coercions


# (target, scheme, conflicting fields, a fragment of the "allowed" text)
CASES = [
    ("tflite_int8", tfl(a={"bits": 4}), ["activations.bits"], "[8]"),
    ("tflite_int8", tfl(w={"bits": 4}, a={"bits": 4}), ["weights.bits", "activations.bits"], "[8]"),
    ("tflite_int8", tfl(w={"symmetric": False}), ["weights.symmetric"], "symmetric only"),
    ("tflite_int8", tfl(w={"narrow_range": False}), ["weights.narrow_range"], "narrow_range: true"),
    ("tflite_int8", tfl(skip=["dense_1"]), ["skip"], "integer-only"),
    ("tflite_int8", tfl(activations=None), ["activations"], "quantized activations"),
    ("tflite_int16x8", tfl(), ["activations.bits", "activations.symmetric"], "[16]"),
    ("academic", spec(), ["weights.per_channel", "activations.symmetric"], "per_tensor"),
    ("tensorrt", spec(w={"per_channel": False}, a={"symmetric": True, "narrow_range": True}),
     ["weights.per_channel"], "per_channel"),
    ("tensorrt", spec(), ["activations.symmetric", "activations.narrow_range"], "symmetric only"),
    ("snpe", spec(), ["weights.per_channel"], "per_tensor"),
    ("pot_dsp", spec(w={"per_channel": False}, a={"symmetric": True}),
     ["weights.scale_format", "activations.scale_format"], "[pot]"),
    ("npu_w4a8", spec(), ["weights.bits"], "[4]"),
    ("npu_w4a8", spec(w={"bits": 4}, a={"bits": 4}), ["activations.bits"], "[8]"),
]


@pytest.mark.parametrize("target, scheme, fields, allowed", CASES)
def test_conflicts_are_each_named_with_value_allowed_and_fix(target, scheme, fields, allowed):
    err = conflicts(scheme, target)
    msg = str(err)
    assert repr(target) in msg and f"{len(fields)} conflict" in msg
    assert sorted(c.field for c in err.conflicts) == sorted(fields)
    for c in err.conflicts:
        assert f"  - {c.field}: scheme has {c.scheme_value!r}, target allows" in msg
    assert allowed in msg
    assert "adapt=True" in msg


@pytest.mark.parametrize("target, scheme, fields, allowed", CASES)
def test_adapt_coerces_and_reports_each(target, scheme, fields, allowed):
    out, coercions = hw.constrain(scheme, target, adapt=True)
    for f in fields:
        assert any(c.startswith(f) for c in coercions), (f, coercions)
    # The adapted scheme is now compliant: constraining it again changes nothing.
    again, more = hw.constrain(out, target)
    assert as_dict(again) == as_dict(out) and more == []


def test_adapt_values():
    t = "pot_dsp"
    out, c = hw.constrain(spec(a={"quantizer": "lsq", "bits": 5}), t, adapt=True)
    d = as_dict(out)
    assert d["weights"]["scale_format"] == "pot" and d["weights"]["per_channel"] is False
    assert d["activations"]["scale_format"] == "pot" and d["activations"]["bits"] == 8
    out, _ = hw.constrain(spec(w={"bits": 6}), "npu_w4a8", adapt=True)
    assert as_dict(out)["weights"]["bits"] == 4
    out, _ = hw.constrain(spec(a={"bits": 12}), "snpe", adapt=True)  # 12 -> nearest of [8, 16]; tie -> 16
    assert as_dict(out)["activations"]["bits"] == 16
    out, _ = hw.constrain(tfl(), "tflite_int16x8", adapt=True)
    assert as_dict(out)["activations"]["bits"] == 16 and as_dict(out)["activations"]["symmetric"] is True
    out, _ = hw.constrain(tfl(w={"quantizer": "lsq"}), "tflite_int8", adapt=True)
    assert as_dict(out)["weights"]["narrow_range"] is True


def test_quantizer_defaults_are_what_is_checked():
    # lsq weights default to narrow_range false: TFLite int8 weights must avoid -128.
    s = {"weights": {"quantizer": "lsq", "bits": 8}, "activations": {"quantizer": "pact", "bits": 8}}  # per-tensor
    err = conflicts(s, "tflite_int8")
    assert [c.field for c in err.conflicts] == ["weights.narrow_range"]
    # minmax activations default to asymmetric: fine on tflite, refused on tensorrt.
    err = conflicts({"weights": {"quantizer": "minmax", "per_channel": True}, "activations": {"quantizer": "minmax"}},
                    "tensorrt")
    assert "activations.symmetric" in [c.field for c in err.conflicts]


def test_uncoercible_conflict_is_raised_even_with_adapt():
    s = spec(w={"quantizer": "dorefa", "per_channel": False}, a={"quantizer": "pot", "symmetric": True})
    with pytest.raises(IncompatibleTargetError, match="cannot use power-of-two scales"):
        hw.constrain(s, "pot_dsp", adapt=True)


def test_overrides_are_checked():
    s = spec(overrides=[{"match": "Dense", "weights": {"bits": 4, "per_channel": False}},
                        {"match": "conv_.*", "activations": {"bits": 6}}])
    err = conflicts(s, "tflite_int8")
    fields = [c.field for c in err.conflicts]
    assert fields == ["overrides[0] (match 'Dense').weights.bits", "overrides[1] (match 'conv_.*').activations.bits"]
    out, coercions = hw.constrain(s, "tflite_int8", adapt=True)
    ovs = as_dict(out)["overrides"]
    assert ovs[0]["weights"]["bits"] == 8 and ovs[1]["activations"]["bits"] == 8
    assert len([c for c in coercions if c.startswith("overrides")]) == 2
    # An override that keeps layers float is a conflict on integer-only targets.
    err = conflicts(spec(w={"per_channel": False}, overrides=[{"match": "Dense", "weights": None}]), "tflite_int8")
    assert err.conflicts[0].field == "overrides[0] (match 'Dense').weights"


def test_per_layer_kind_granularity():
    d = hw.get("tflite_int8").to_dict()
    d["name"] = "test_micro_like"
    d["weights"]["granularity"] = {"conv": ["per_channel"], "dense": ["per_tensor"]}
    hw.register("test_micro_like", d, overwrite=True)
    # Per-channel fits conv layers; the target fills per-tensor overrides for Dense (reported).
    out, coercions = hw.constrain(spec(), "test_micro_like")
    added = {o["match"]: o["weights"] for o in as_dict(out)["overrides"]}
    assert added == {"Dense": {"per_channel": False}, "EinsumDense": {"per_channel": False},
                     "MultiHeadAttention": {"per_channel": False}}
    assert any("dense layers" in c and "set by target" in c for c in coercions)
    hw.constrain(out, "test_micro_like")
    # A scheme override already settling Dense is kept as is.
    out, _ = hw.constrain(spec(overrides=[{"match": "Dense", "weights": {"per_channel": False}}]), "test_micro_like")
    assert [o["match"] for o in as_dict(out)["overrides"]] == ["Dense"]
    # An explicit override asking for what the kind cannot do is a conflict.
    err = conflicts(spec(overrides=[{"match": "Dense", "weights": {"per_channel": True}}]), "test_micro_like")
    assert [c.field for c in err.conflicts] == ["overrides[0] (match 'Dense').weights.per_channel"]
    # Per-tensor conv on a per-channel-only conv kind: no kind allows it for conv -> conflict at the base.
    d["weights"]["granularity"] = {"conv": ["per_channel"], "conv1d": ["per_channel"],
                                   "conv_transpose": ["per_channel"], "dense": ["per_channel"]}
    d["name"] = "test_pc_only"
    hw.register("test_pc_only", d, overwrite=True)
    err = conflicts(spec(w={"per_channel": False}), "test_pc_only")
    assert [c.field for c in err.conflicts] == ["weights.per_channel"]


def test_first_last_bits():
    out, coercions = hw.constrain(COMPLIANT["academic"], "academic")
    assert as_dict(out)["first_last_bits"] == 8 and "first_last_bits: None -> 8 (set by target academic)" in coercions
    err = conflicts(tfl(first_last_bits=4), "tflite_int8")
    assert [c.field for c in err.conflicts] == ["first_last_bits"]


def test_unknown_quantizer_fails_clearly():
    from qresearch.errors import UnknownNameError, ConfigError
    with pytest.raises((UnknownNameError, ConfigError), match="lsqq"):
        hw.constrain(spec(w={"quantizer": "lsqq"}), "tflite_int8")


def test_signed_only_activations():
    # 16x8 stores activations as int16 with zero point 0: an unsigned grid after ReLU would give Z=-32768.
    out, coercions = hw.constrain(COMPLIANT["tflite_int16x8"], "tflite_int16x8")
    assert as_dict(out)["activations"]["signed"] is True
    assert any(c.startswith("activations.signed") for c in coercions)
    err = conflicts(tfl(a={"bits": 16, "symmetric": True, "signed": False}), "tflite_int16x8")
    assert [c.field for c in err.conflicts] == ["activations.signed"]
    # TFLite int8 activations are asymmetric: unsigned grids are fine and left to the scheme.
    out, _ = hw.constrain(tfl(a={"quantizer": "pact"}), "tflite_int8")
    assert "signed" not in as_dict(out)["activations"]


def test_tflite_per_tensor_kinds_are_filled():
    out, coercions = hw.constrain(spec(), "tflite_int8")
    added = {o["match"]: o["weights"]["per_channel"] for o in as_dict(out)["overrides"]}
    for cls in ("Dense", "Conv1D", "Conv2DTranspose"):
        assert added[cls] is False
    assert "Conv2D" not in added and "DepthwiseConv2D" not in added
    hw.constrain("tflite_int8", "tflite_int8")  # the scheme preset of the same name fits the target


def test_adapt_bits_false_refuses_a_width_the_target_lacks():
    # the rule the runner's adapt_bits=false applies: other details are coerced, bit widths never
    spec = {"weights": {"quantizer": "minmax", "bits": 4, "per_channel": True},
            "activations": {"quantizer": "minmax", "bits": 8}}
    with pytest.raises(IncompatibleTargetError, match=r"'tflite_int8' cannot run weights at 4 bits \(allowed: \[8\]\)"):
        hw.constrain(spec, "tflite_int8", adapt=True, adapt_bits=False)
    out, notes = hw.constrain(spec, "tflite_int8", adapt=True)  # default: snapped, and said so
    assert out.weights["bits"] == 8 and any("bits" in n for n in notes)
    ok = {**spec, "weights": {**spec["weights"], "bits": 8}}
    assert hw.constrain(ok, "tflite_int8", adapt=True, adapt_bits=False)[0].weights["bits"] == 8


@pytest.mark.parametrize("target", ["tflite_int8", "academic"])
def test_fold_batch_stats_deploys_as_a_fold(target):
    # a target requiring "fold" keeps fold_batch_stats (it exports the static fold's conv); one that forbids
    # folding sets no_fold, noted like any target-set field
    t = hw.get(target)
    out, coercions = hw.constrain(tfl(bn_folding="fold_batch_stats", bn_freeze_steps=5), target, adapt=True)
    d = as_dict(out)
    if t.bn_folding == "fold":
        assert d["bn_folding"] == "fold_batch_stats" and d["bn_freeze_steps"] == 5
        assert not any("bn_folding" in c for c in coercions)
    else:
        assert t.bn_folding == "no_fold" and d["bn_folding"] == "no_fold"
        assert any("bn_folding: 'fold_batch_stats' -> 'no_fold'" in c for c in coercions)


@pytest.mark.parametrize("weights, target, kept", [
    ({"quantizer": "lsq", "per_channel": True, "narrow_range": True}, "tflite_int8", True),
    ({"quantizer": "minmax", "per_channel": False, "symmetric": True, "narrow_range": True}, "tflite_int8", False),
    ({"quantizer": "lsq", "per_channel": True, "narrow_range": True, "scale_format": "pot"}, "pot_dsp", False)])
def test_no_fold_is_kept_where_the_fold_can_happen_at_deployment(weights, target, kept):
    # A fold of per-channel float-scale grids is exact after training (qresearch.fold_for_deployment), so a target
    # requiring a fold lets BN train; per-tensor or power-of-two scales cannot take γ/σ exactly: fold in training
    out, coercions = hw.constrain(tfl(w=dict(weights, bits=8), bn_folding="no_fold"), target, adapt=True)
    assert as_dict(out)["bn_folding"] == ("no_fold" if kept else "fold")
    notes = [c for c in coercions if c.startswith("bn_folding")]
    assert notes == ([f"bn_folding: 'no_fold' kept: BN trains as the scheme says and folds into the trained "
                      f"per-channel weight grids for target {target} (fold_for_deployment)"] if kept
                     else [f"bn_folding: 'no_fold' -> 'fold' (set by target {target})"]), coercions


def test_a_target_requiring_batch_stats_folding_sets_it():
    t = hw.Target.from_dict(dict(hw.get("tflite_int8").to_dict(), name="bs", bn_folding="fold_batch_stats"))
    out, coercions = hw.constrain(tfl(bn_folding="fold"), t)
    assert as_dict(out)["bn_folding"] == "fold_batch_stats"
    assert any("bn_folding: 'fold' -> 'fold_batch_stats'" in c for c in coercions)
