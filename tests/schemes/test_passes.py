"""Planning as named passes: the order is data, a prefix runs alone, a researcher's pass slots in."""
import numpy as np

import qresearch
from qresearch import keras
from qresearch.schemes import passes as P
from qresearch.schemes.build import build

from .helpers import has_output_quantizer

L = keras.layers
SCHEME = {"weights": {"quantizer": "minmax", "bits": 8}, "activations": {"quantizer": "minmax", "bits": 8},
          "quantize_ops": "all"}


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.ReLU(name="act")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp)))
    return keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(x)))


def test_the_passes_and_their_order():
    assert [p.__name__ for p in P.PASSES] == [
        "split_separable", "classify", "fold_batch_norms", "affine_batch_norms", "rewire_folded",
        "resolve_quantizers", "fold_with_batch_stats", "place_output_quantizers", "infer_signs", "share_concat_ranges",
        "place_input_quantizers"]


def test_a_prefix_runs_alone():
    spec = qresearch.schemes.presets.resolve(SCHEME)
    graph, annotations = P.read_model(_model())
    plan = P.make_plan(graph, spec, annotations, passes=P.PASSES[:2])
    kinds = {p.layer.name: p.kind for p in plan.layers}
    assert kinds["conv"] == "compute" and kinds["bn"] == "bn" and not any(p.removed for p in plan.layers)
    P.fold_batch_norms(plan)
    assert [p.layer.name for p in plan.layers if p.removed] == ["bn"]
    assert [p.folded_bn.name for p in plan.layers if p.folded_bn is not None] == ["bn"]


def test_a_researchers_pass_slots_in():
    def no_head_output(plan):
        for p in plan.layers:
            if p.layer.name == "head":
                p.output = False

    spec = qresearch.schemes.presets.resolve(SCHEME)
    i = P.PASSES.index(P.place_output_quantizers) + 1
    graph, annotations = P.read_model(_model())
    q = build(P.make_plan(graph, spec, annotations, passes=P.PASSES[:i] + (no_head_output,) + P.PASSES[i:]))
    assert not has_output_quantizer(q, "head") and has_output_quantizer(q, "act")
    graph, annotations = P.read_model(_model())
    q = build(P.make_plan(graph, spec, annotations))
    assert has_output_quantizer(q, "head")
    assert q.predict(np.zeros((1, 8, 8, 3), "float32"), verbose=0).shape == (1, 2)
