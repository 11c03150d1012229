"""qresearch.pareto: the front on hand-made points, the points from result rows, the panel and its table."""
import pytest

from qresearch import pareto
from qresearch.errors import UnknownNameError


def test_front_on_hand_made_points():
    pts = [(1.0, 0.97), (0.5, 0.95), (0.25, 0.90), (0.3, 0.89), (0.5, 0.93), (0.14, 0.80), (0.2, 0.95),
           (0.14, 0.85)]
    # (0.3, .89) is beaten by (0.25, .90); (0.5, .95) and (0.5, .93) by (0.2, .95); (0.14, .80) by (0.14, .85)
    assert pareto.pareto_front(pts) == [7, 6, 0]
    assert pareto.pareto_front([]) == []
    assert pareto.pareto_front([(0.3, 0.5)]) == [0]
    assert pareto.pareto_front([(0.3, 0.5), (0.3, 0.5)]) == [0]          # equal points: the first
    assert pareto.pareto_front([(0.1, 0.9), (0.2, 0.8), (0.3, 0.7)]) == [0]  # the cheapest is also the best


def _row(variant, acc, bops, seed, w=None, budget=None):
    return {"status": "completed", "dataset": "d", "model": "m", "target": "t", "variant": variant,
            "weight_bits": w, "activation_bits": w, "mixed_budget": budget, "seed": seed, "qat_accuracy": acc,
            "bops_ratio": bops, "weight_bits_ratio": None if bops is None else bops * 2}


def test_points_average_seeds_and_mark_the_front(tmp_path):
    rows = [_row("lsq", 0.90, 0.14, 0, w=3), _row("lsq", 0.92, 0.14, 1, w=3),
            _row("lsq", 0.95, 0.25, 0, w=4), _row("lsq", 0.93, 0.25, 1, w=4),
            _row("lsq", 0.95, 0.135, 0, budget="bops=0.14"), _row("lsq", 0.95, 0.136, 1, budget="bops=0.14"),
            {**_row("lsq", 0.99, 0.01, 2, w=2), "status": "failed"},   # failed runs are no points
            {**_row("lsq", 0.99, None, 2, w=8)}]                        # no cost data: no point
    pts = pareto.panels(rows, "bops")[("d", "m", "t")]
    by = {p["label"]: p for p in pts}
    assert set(by) == {"W3A3", "W4A4", "bops=0.14"}
    assert by["W3A3"]["accuracy"] == pytest.approx(0.91) and by["W3A3"]["accuracy_std"] == pytest.approx(0.01414, 1e-3)
    assert by["bops=0.14"]["cost"] == pytest.approx(0.1355) and by["bops=0.14"]["kind"] == "mixed"
    assert by["W4A4"]["kind"] == "uniform" and by["W4A4"]["seeds"] == 2
    # the mixed point is cheaper and better than W3A3, as good as W4A4 at half its cost: it alone is the front
    assert [p["label"] for p in pts if p.get("front")] == ["bops=0.14"]
    out = pareto.report(rows, tmp_path)
    assert [c["axis"] for c in out] == ["bops", "weight_memory"]
    assert (tmp_path / "pareto_bops.png").stat().st_size > 0
    assert "| lsq | bops=0.14 | 0.1355 | 95.00 ± 0.00 | 2 | ★ |" in out[0]["markdown"]
    assert pareto.report(rows, tmp_path, ["table_cost"]) == []  # no run has that cost: no panel
    with pytest.raises(UnknownNameError, match="bops"):
        pareto.report(rows, tmp_path, ["flops"])


def test_one_precision_point_draws_no_trade_off(tmp_path):
    rows = [_row("lsq", 0.9, 0.25, 0, w=4), _row("minmax", 0.8, 0.25, 0, w=4)]  # algorithms at one width
    assert pareto.panels(rows, "bops") == {} and pareto.report(rows, tmp_path) == []
