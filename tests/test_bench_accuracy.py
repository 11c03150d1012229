"""benchmarks/accuracy.py (``make bench-accuracy``): the --quick path end to end, and the target checker on
constructed results."""
import json

import numpy as np
import pytest

from benchmarks import accuracy_report as report


def _rec(ds, seed, contestant, policy, bits, ptq, qat=None, flt=0.95, status="completed", error=None):
    return {"dataset": ds, "seed": seed, "contestant": contestant, "policy": policy, "bits": bits, "float": flt,
            "ptq": ptq, "qat": qat, "qat_skipped": qat is None and status == "completed" and bits == 8,
            "status": status, "error": error, "num_classes": 10, "model": "LeNet-5"}


def test_quick_run_writes_table_plot_and_json_and_survives_a_failed_contestant(tmp_path, monkeypatch):
    """One quick run (digits, W4, 1 seed): lsq, minmax_nbit and tfmot n-bit complete, a contestant that raises (pot,
    made to fail here) is recorded as failed and the benchmark goes on; --recipe-check then runs tfmot's recipe on
    what the robustness check compares (not pot) into <out>-tfmot and adds the check."""
    from benchmarks import accuracy

    real = accuracy.build_contestant
    settings_seen = {}

    def build(contestant, policy, bits, float_model, calibration, settings=None):
        settings_seen[contestant] = settings
        if contestant == "pot":
            raise RuntimeError("boom")
        return real(contestant, policy, bits, float_model, calibration, settings)

    monkeypatch.setattr(accuracy, "build_contestant", build)
    out = tmp_path / "quick"
    res = accuracy.main(["--quick", "--presets", "lsq,pot,minmax_nbit", "--out", str(out), "--cache-dir", "",
                         "--set", "bn_freeze_steps=5", "--model", "digits={name: lenet5, filters: [4, 8]}",
                         "--recipe-check"], log=lambda m: None)
    assert settings_seen["lsq"] == {"bn_freeze_steps": 5}   # --set reaches every run (LeNet-5 has no BN)
    for name in ("table.md", "results.json", "results.jsonl", "accuracy_vs_bits.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["args"]["settings"] == {"bn_freeze_steps": 5}
    # --model: every run used the model given, and the outputs say which
    assert data["args"]["data"]["digits"]["model_config"] == {"name": "lenet5", "filters": [4, 8]}
    assert {r["model"] for r in data["records"]} == {"lenet5 (filters=[4, 8])"}
    recs = {(r["contestant"], r["policy"], r["bits"]): r for r in data["records"]}
    assert set(recs) == {(report.TFMOT_NBIT, "all", 4), ("lsq", "fl8", 4), ("pot", "fl8", 4), ("minmax_nbit", "fl8", 4)}
    assert recs[("pot", "fl8", 4)]["status"] == "failed" and "boom" in recs[("pot", "fl8", 4)]["error"]
    for key in ((report.TFMOT_NBIT, "all", 4), ("lsq", "fl8", 4), ("minmax_nbit", "fl8", 4)):
        r = recs[key]
        assert r["status"] == "completed", r.get("error")
        assert 0.0 <= r["ptq"] <= 1.0 and 0.0 <= r["qat"] <= 1.0 and 0.0 <= r["float"] <= 1.0
    table = (out / "table.md").read_text()
    assert "W4A4 PTQ" in table and "W4A4 QAT" in table and "| lsq | yes |" in table
    assert "| pot | yes | conv/dense inputs | failed" in table
    assert len((out / "results.jsonl").read_text().splitlines()) == 4  # written run by run
    assert res["summary"]["digits"]["float"]["n"] == 1
    # --recipe-check: tfmot's recipe on lsq, minmax_nbit and tfmot n-bit, same data and model, its own folder
    theirs = json.loads((tmp_path / "quick-tfmot" / "results.json").read_text())
    assert theirs["args"]["recipe"] == "tfmot" and theirs["args"]["presets"] == ["lsq", "minmax_nbit"]
    assert {(r["contestant"], r["status"]) for r in theirs["records"]} == \
        {(report.TFMOT_NBIT, "completed"), ("lsq", "completed"), ("minmax_nbit", "completed")}
    assert {r["model"] for r in theirs["records"]} == {"lenet5 (filters=[4, 8])"}
    rob = [c for c in data["checks"] if c["target"].startswith("same ordering")]
    assert [c["target"] for c in rob] == ["same ordering with recipe tfmot"]
    assert "2 relations compared" in rob[0]["detail"]


def test_set_changes_every_preset_and_refuses_what_it_cannot_apply():
    from benchmarks import accuracy

    settings = accuracy.parse_settings(["bn_folding=no_fold", "weights.init=max", "bn_freeze_steps=null"])
    assert settings == {"bn_folding": "no_fold", "weights.init": "max", "bn_freeze_steps": None}
    spec = accuracy.preset_scheme("minmax_nbit", 3, "fl8", settings)
    assert spec["bn_folding"] == "no_fold" and spec["weights"]["init"] == "max" and spec["bn_freeze_steps"] is None
    assert spec["weights"]["bits"] == 3 and spec["activations"]["bits"] == 3 and spec["first_last_bits"] == 8
    assert accuracy.preset_scheme("minmax_nbit", 3, "fl8")["bn_folding"] == "fold"   # the preset itself untouched
    # a --set key wins over the preset's low_bits rules (lsq's weights take mse_no_shrink at 2-3 bits, BN no_fold)
    from qresearch.quantizers import create
    lsq = accuracy.preset_scheme("lsq", 2, "all", {"weights.init": "max", "bn_folding": "fold"})
    assert create(lsq["weights"], role="weights").init == "max" and lsq["bn_folding"] == "fold"
    assert create(accuracy.preset_scheme("lsq", 2, "all")["weights"], role="weights").init == "mse_no_shrink"
    for bad, fragment in ((["bn_folding"], "KEY=VALUE"), (["weights.bits=3"], "--bits"),
                          (["first_last_bits=8"], "--policies")):
        with pytest.raises(SystemExit, match=fragment):
            accuracy.parse_settings(bad)
    with pytest.raises(SystemExit, match="'overrides' is not a section.*weights"):
        accuracy.preset_scheme("lsq", 4, "all", {"overrides.x.y": 1})
    # a key some preset cannot take stops the benchmark before anything runs, naming the preset
    accuracy.check_settings(["lsq", "minmax_nbit"], {"weights.init": "mse"})
    with pytest.raises(SystemExit, match=r"preset 'a2q' invalid.*init must be one of"):
        accuracy.check_settings(["lsq", "a2q"], {"weights.init": "mse"})
    with pytest.raises(SystemExit, match=r"preset 'lsq' invalid.*bn_folding"):
        accuracy.check_settings(["lsq"], {"bn_folding": "sometimes"})


def _held_out_builder(input_shape, num_classes):
    from qresearch._compat import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Flatten()(inp)
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x))


def test_model_option_takes_a_registered_name_a_config_or_a_builder_not_in_the_project():
    from benchmarks import accuracy
    from qresearch import models

    got = accuracy.parse_models(["cifar10=mobilenet_tiny", "mnist={name: resnet20, depth: 8}",
                                 f"digits={__name__}._held_out_builder"])
    assert got["cifar10"] == {"model": {"name": "mobilenet_tiny"}, "label": "mobilenet_tiny"}
    assert got["mnist"] == {"model": {"name": "resnet20", "depth": 8}, "label": "resnet20 (depth=8)"}
    assert got["digits"]["model"] == {"_target_": f"{__name__}._held_out_builder"}
    built = models.build_model(got["digits"]["model"], (8, 8, 1), 10)   # the benchmark's own build path
    assert built.output_shape == (None, 10) and built.layers[-1].name == "logits"
    assert accuracy.parse_models([]) == {}
    for bad, fragment in (("cifar10", "DATASET=MODEL"), ("imagenet=lenet5", "unknown dataset 'imagenet'"),
                          ("mnist=lenet9", "unknown model 'lenet9'.*lenet5"),
                          ("mnist={depth: 8}", "exactly one of 'name' and '_target_'"),
                          ("mnist={name: lenet5, _target_: a.b}", "exactly one of"),
                          ("mnist=no_such_pkg.build", "cannot be imported.*PYTHONPATH"),
                          (f"mnist={__name__}.no_builder", "has no 'no_builder'")):
        with pytest.raises(SystemExit, match=fragment):
            accuracy.parse_models([bad])


def _constructed(lsq_w2=0.60, lsq_w4_ptq=0.93, nan_seed=False):
    recs = []
    for seed in (0, 1):
        for p in ("lsq", "minmax_nbit", "dorefa"):
            recs.append(_rec("mnist", seed, p, "all", 8, 0.95 if p != "dorefa" else 0.10))
        recs.append(_rec("mnist", seed, report.TFMOT_NBIT, "all", 4, 0.80, 0.90))
        for pol in ("all", "fl8"):
            recs.append(_rec("mnist", seed, "minmax_nbit", pol, 4, 0.92, 0.93))
            recs.append(_rec("mnist", seed, "lsq", pol, 4, lsq_w4_ptq, 0.94))
            recs.append(_rec("mnist", seed, "dorefa", pol, 4, 0.20, 0.80))  # not a learned quantizer: not judged
            recs.append(_rec("mnist", seed, "minmax_nbit", pol, 2, 0.10, 0.40))
            recs.append(_rec("mnist", seed, "lsq", pol, 2, 0.30, lsq_w2))
            recs.append(_rec("mnist", seed, "dorefa", pol, 2, 0.10, 0.12))
    if nan_seed:
        recs = [r for r in recs if not (r["contestant"] == "lsq" and r["bits"] == 2 and r["seed"] == 1
                                        and r["policy"] == "all")]
        recs.append(_rec("mnist", 1, "lsq", "all", 2, 0.3, None, status="failed", error="NaNLossError: loss nan"))
    return recs


def test_target_checker_judges_a_constructed_result():
    s = report.summarize(_constructed())
    assert s["mnist"]["float"]["mean"] == pytest.approx(0.95)
    # W8 presets count for both layer policies (the same model)
    assert s["mnist"]["cells"][("lsq", "fl8", 8, "ptq")]["n"] == 2
    checks = {(c["target"], c["policy"]): c for c in report.check_targets(s)}
    assert checks[("PTQ W8A8: every built-in within 0.5 pt of float", None)]["met"] is False  # dorefa at 10%
    assert "outside: dorefa" in checks[("PTQ W8A8: every built-in within 0.5 pt of float", None)]["detail"]
    assert checks[("PTQ W4A4: every learned quantizer >= minmax_nbit", "all")]["met"] is True
    assert checks[("QAT W4A4: every learned built-in >= minmax_nbit >= tfmot n-bit", "all")]["met"] is True
    assert checks[("QAT W2A2: lsq >= minmax_nbit + 10 pt", "all")]["met"] is True  # 60 vs 40
    chance = [c for c in checks.values() if c["target"].startswith("QAT W2A2: no built-in at chance")]
    assert chance and all(c["met"] is False and "dorefa" in c["detail"] for c in chance)  # dorefa at 12%

    s = report.summarize(_constructed(lsq_w2=0.45, lsq_w4_ptq=0.91))
    checks = {(c["target"], c["policy"]): c["met"] for c in report.check_targets(s)}
    assert checks[("PTQ W4A4: every learned quantizer >= minmax_nbit", "fl8")] is False  # 91 < 92
    assert checks[("QAT W2A2: lsq >= minmax_nbit + 10 pt", "fl8")] is False  # 45 < 40 + 10


def test_a_failed_seed_fails_its_targets_and_robustness_compares_recipes():
    s = report.summarize(_constructed(nan_seed=True))
    cell = s["mnist"]["cells"][("lsq", "all", 2, "qat")]
    assert cell["failed"] == 1 and cell["n"] == 1 and "NaNLossError" in cell["errors"][0]
    checks = {(c["target"], c["policy"]): c["met"] for c in report.check_targets(s)}
    assert checks[("QAT W2A2: lsq >= minmax_nbit + 10 pt", "all")] is False
    assert checks[("QAT W2A2: lsq >= minmax_nbit + 10 pt", "fl8")] is True
    assert "failed" in report.markdown_table(s, "mnist", [8, 4, 2])

    same = report.check_targets(report.summarize(_constructed()), report.summarize(_constructed()), "tfmot")
    flipped = report.check_targets(report.summarize(_constructed()), report.summarize(_constructed(lsq_w2=0.45)),
                                   "tfmot")
    rob = lambda checks: [c for c in checks if c["target"].startswith("same ordering")][0]  # noqa: E731
    assert rob(same)["met"] is True
    assert rob(flipped)["met"] is False and "lsq >= minmax_nbit + 10" in rob(flipped)["detail"]


def test_compare_with_runs_the_robustness_check_on_any_two_output_folders(tmp_path):
    """--compare-with DIR: the other recipe's results wherever they were written (e.g. a held-out model's runs
    under their own --out); a folder without results, or of the same recipe, is refused before anything runs."""
    from benchmarks import accuracy

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, recs in ((ours, _constructed()), (theirs, _constructed(lsq_w2=0.45))):
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    accuracy.main(["--report-only", "--no-plot", "--recipe", "tfmot", "--out", str(theirs)], log=lambda m: None)

    def checks():
        return json.loads((ours / "results.json").read_text())["checks"]

    accuracy.main(["--report-only", "--no-plot", "--out", str(ours), "--compare-with", str(theirs)], log=lambda m: None)
    rob = [c for c in checks() if c["target"].startswith("same ordering")]
    assert [c["target"] for c in rob] == ["same ordering with recipe tfmot"]
    assert rob[0]["met"] is False and "lsq >= minmax_nbit + 10" in rob[0]["detail"]
    assert "[NOT MET] same ordering with recipe tfmot (mnist)" in (ours / "table.md").read_text()
    accuracy.main(["--report-only", "--no-plot", "--out", str(ours)], log=lambda m: None)
    assert not any(c["target"].startswith("same ordering") for c in checks())
    with pytest.raises(SystemExit, match="no results.json there.*--recipe tfmot"):
        accuracy.main(["--report-only", "--out", str(ours), "--compare-with", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="recipe 'tfmot', as this run's"):
        accuracy.main(["--report-only", "--recipe", "tfmot", "--out", str(theirs), "--compare-with", str(theirs)])


def test_recipe_check_runs_the_compared_presets_into_its_own_folder(tmp_path):
    """--recipe-check's second run: this run's arguments with the other recipe, only the compared presets and
    widths, its own folder next to this one (a full run of the other recipe in the sibling folder stays as it is),
    no comparison of its own; nothing when nothing here is compared."""
    from benchmarks import accuracy

    out = tmp_path / "accuracy" / "default"
    argv, folder, names = accuracy.recipe_check_run(
        ["--seeds", "0,1", "--compare-with", "x", "--bits", "8,4,2", "--recipe-check"], ["lsq", "pot", "minmax_nbit"],
        [8, 4, 2], out, "tfmot")
    assert folder == tmp_path / "accuracy" / "default-tfmot" and names == "lsq,minmax_nbit"
    args = accuracy.parse(argv)
    assert (args.recipe, args.presets, args.bits, args.out, args.seeds) == \
        ("tfmot", "lsq,minmax_nbit", "4,2", str(folder), "0,1")
    assert args.compare_with is None and args.recipe_check is False
    assert accuracy.recipe_check_run([], ["lsq"], [8], out, "tfmot") is None
    assert accuracy.recipe_check_run([], ["pot", "dorefa"], [4], out, "tfmot") is None


def test_cifar_targets_use_the_drop_from_float():
    recs = []
    for seed, flt in ((0, 0.80), (1, 0.82)):
        for b, acc in ((4, 0.80), (3, 0.75), (2, 0.65)):
            recs.append(_rec("cifar10", seed, "lsq", "fl8", b, acc - 0.1, acc, flt=flt))
    checks = {c["target"]: c for c in report.check_targets(report.summarize(recs)) if c["policy"] == "fl8"}
    assert checks["CIFAR-10: lsq QAT W4A4 >= float - 1.5 pt"]["met"] is True  # 80 vs 81 - 1.5
    assert checks["CIFAR-10: lsq QAT W3A3 >= float - 4 pt"]["met"] is False  # 75 vs 81 - 4
    assert checks["CIFAR-10: lsq QAT W2A2 >= float - 12 pt"]["met"] is False  # 65 vs 81 - 12


def test_dorefa_weight_error_is_the_tanh_s_and_zero_where_it_keeps_the_shape():
    from benchmarks.dorefa_weight_error import relative_errors

    # one magnitude per channel: tanh keeps every |w| equal to the max, so both grids hit ±max exactly
    two_levels = np.array([[0.9, -0.9], [-0.9, 0.9], [0.9, 0.9]], "float64") * np.array([1.0, 0.3])
    assert relative_errors(two_levels, 8) == (0.0, 0.0)
    w = np.random.default_rng(0).standard_normal((3, 3, 8, 4)) * 0.4
    dorefa, linear = relative_errors(w, 8)
    assert linear < 0.01 < dorefa   # the same 255 levels: the error is the tanh's compression
    small_dorefa, small_linear = relative_errors(w * 0.01, 8)   # tanh(w) ≈ w: the two agree
    assert abs(small_dorefa - small_linear) < 1e-3


def test_presets_that_keep_bn_have_it_re_estimated_after_qat_as_the_runner_does():
    import qresearch
    from benchmarks import accuracy
    from qresearch._compat import keras
    from qresearch.data import load_dataset

    ds = load_dataset({"name": "digits", "train_samples": 200, "test_samples": 50})
    inp = keras.Input(ds.input_shape)
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, use_bias=False)(inp))
    model = keras.Model(inp, keras.layers.Dense(ds.num_classes)(keras.layers.Flatten()(keras.layers.ReLU()(h))))
    x, _ = ds.train_sample(64, 0)
    bn_mean = lambda q: np.asarray(next(v for v in q.variables if "moving_mean" in v.name))  # noqa: E731
    lsq = qresearch.quantize(model, dict(qresearch.schemes.get("lsq").to_dict(), bn_folding="no_fold"),
                             calibration_data=x)                          # the BN stays: 50 batches
    before = bn_mean(lsq)
    rec = accuracy.reestimate_as_the_runner(lsq, ds, batch_size=32, seed=0)
    assert rec == {"layers": 1, "batches": 50, "images": 200}          # 50 batches asked, 200 images there
    assert not np.allclose(bn_mean(lsq), before)
    folded = qresearch.quantize(model, "lsq", calibration_data=x)        # as shipped: fold
    assert accuracy.reestimate_as_the_runner(folded, ds, batch_size=32, seed=0) is None
    tfmot_model = accuracy.tfmot_nbit(model, 4)
    assert accuracy.reestimate_as_the_runner(tfmot_model, ds, batch_size=32, seed=0) is None


def test_the_table_says_which_tensors_each_row_quantizes():
    from benchmarks import accuracy

    assert accuracy.quantize_ops_of("lsq") == "inputs" and accuracy.quantize_ops_of("tflite_int8") == "all"
    assert accuracy.quantize_ops_of("lsq", {"quantize_ops": "all"}) == "all"
    assert accuracy.quantize_ops_of(report.TFMOT_NBIT) == "all"
    recs = [dict(r, quantize_ops=accuracy.quantize_ops_of(r["contestant"])) for r in _constructed()]
    table = report.markdown_table(report.summarize(recs), "mnist", [8, 4, 2])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2] for line in table.splitlines()
            if line.startswith("| ") and "contestant" not in line}
    assert rows["lsq"] == rows["minmax_nbit"] == "conv/dense inputs"
    assert rows["tfmot `DefaultNBitQuantizeScheme(n, n)`"] == "every op"
