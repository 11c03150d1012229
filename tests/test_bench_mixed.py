"""benchmarks/mixed.py: a uniform row is built as a mixed row is, so the two differ in their widths only."""
import pytest

import qresearch
from qresearch import mixed
from qresearch.models import build_model

from benchmarks.mixed import uniform_widths


@pytest.fixture(scope="module")
def lenet():
    return build_model({"name": "lenet5"}, (28, 28, 1), 10)


@pytest.mark.parametrize("first_last", [True, False])
def test_uniform_widths_cover_every_compute_layer(lenet, first_last):
    names = [c.name for c in mixed.compute_layers(lenet)]
    widths = uniform_widths(lenet, 3, first_last)
    assert list(widths) == names
    ends = {names[0], names[-1]}
    assert all(w == (8 if first_last and n in ends else 3) for n, w in widths.items())


def test_a_uniform_row_keeps_the_presets_quantizer_settings(lenet):
    base = dict(qresearch.schemes.get("lsq").to_dict(), first_last_bits=None)
    scheme = mixed.to_scheme(base, uniform_widths(lenet, 3, False), lenet)
    built = qresearch.schemes.SchemeSpec.from_dict(scheme)
    for role in ("weights", "activations"):  # what the preset sets beside the width (its init: mse) survives
        assert {k: v for k, v in scheme[role].items() if k != "bits"} == \
            {k: v for k, v in base[role].items() if k != "bits"}
    assert built.overrides and all(o.weights["bits"] == 3 and o.activations["bits"] == 3 for o in built.overrides)

