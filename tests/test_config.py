"""Every config group composes; bad values and keys fail at start with the valid choices."""
import contextlib
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from qresearch import config as qconfig
from qresearch import overrides as qoverrides
from qresearch.errors import ConfigError
from qresearch.paths import CONF_DIR
from user_code import write_data_and_models, write_image_folder, write_npz, write_quantizer


def _compose(overrides=(), hydra_node=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node)


@contextlib.contextmanager
def _hydra_job(overrides):
    """Inside: what a Hydra job with this command line sees (``HydraConfig``); outside, no job."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(_compose(overrides, hydra_node=True))
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


def _options(group):
    return qoverrides.group_options(group)


def test_defaults_compose_and_validate():
    cfg = _compose()
    assert cfg.dataset.name == "digits" and cfg.model.name == "mlp" and cfg.seed == 0
    assert cfg.training.qat.optimizer.name in ("adam", "sgd", "adamw", "rmsprop")
    qconfig.validate(cfg)


@pytest.mark.parametrize("group", ["dataset", "model", "scheme", "hardware", "training", "logger", "paths"])
def test_every_group_option_composes(group, tmp_path, monkeypatch):
    options = _options(group)
    assert options, f"conf/{group}/ is empty"
    # the options for your own data need it named: a file, a function
    write_data_and_models(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    needs = {"dataset=npz": [f"dataset.path={write_npz(tmp_path / 'd.npz')}"],
             "dataset=custom": ["dataset._target_=user_data.as_tuple"]}
    if group == "dataset":  # the streamed datasets: a folder of images, TFRecord shards of it
        images = write_image_folder(tmp_path / "images")
        needs["dataset=image_folder"] = [f"dataset.path={images}", "dataset.image_size=[8,8]"]
        needs["dataset=tfrecord"] = [f"dataset.train={images}/shards/train-*", f"dataset.test={images}/shards/test-*",
                                     "dataset.num_classes=3", "dataset.image_size=[8,8]"]
    for option in options:
        cfg = _compose([f"{group}={option}"] + needs.get(f"{group}={option}", []))
        assert cfg[group] is not None
        if group in ("dataset", "model", "logger", "training"):
            qconfig.validate(cfg)


@pytest.mark.parametrize("group", ["experiment", "sweep", "hparams_search"])
def test_global_groups_compose_with_hydra_node(group, tmp_path):
    for option in _options(group):
        extra = []
        if option.startswith("imagenet"):  # needs a folder of images: ImageNet's layout, train/ and val/
            images = write_image_folder(tmp_path / "imagenet")
            (images / "test").rename(images / "val")
            extra = [f"dataset.path={images}"]
        cfg = _compose([f"+{group}={option}", *extra], hydra_node=True)
        qconfig.validate(cfg)
        if group != "experiment":
            assert cfg.hydra.mode.name == "MULTIRUN"
            assert cfg.sweep_name != "adhoc"


def test_sweep_folder_is_deterministic_from_the_sweep_name():
    cfg = _compose(["+sweep=bitwidth"], hydra_node=True)
    assert cfg.hydra.sweep.dir == "outputs/multirun/bitwidth"
    assert "qr_subdir" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]
    assert cfg.hydra.sweeper.params["hardware"] == "academic,tflite_int8"
    assert qconfig._subdir("") == "default"
    long = qconfig._subdir("x" * 300)
    assert len(long) < 200 and long == qconfig._subdir("x" * 300)


def test_one_list_of_keys_that_do_not_name_a_run():
    # a sweep job's folder name leaves out exactly the Python list, which holds every non-semantic key
    excluded = list(_compose(hydra_node=True).hydra.job.config.override_dirname.exclude_keys)
    assert excluded == list(qconfig.FOLDER_EXCLUDED_KEYS)
    assert set(qconfig.NON_SEMANTIC_KEYS) <= set(excluded)
    # ... and the variant labels (run and report) leave out coordinates and keys that change no number
    for key in ("seed", "bits", "scheme.weights.bits", "logger.mode", "paths.output_dir", "training.verbose",
                "deploy", "hydra.launcher.n_jobs", "+plugins"):
        assert qconfig.is_coordinate(key), key
    for key in ("dataset.path", "model.width", "training.qat.learning_rate", "scheme.weights.quantizer"):
        assert not qconfig.is_coordinate(key), key


def test_the_typed_config_is_built_once_from_the_hydra_config():
    cfg = _compose(["bits=3", "training.qat.optimizer=sgd", "~hardware"])
    exp = qconfig.experiment(cfg)
    assert isinstance(exp.training.float, qconfig.PhaseConfig) and exp.training.qat.optimizer is qconfig.Optimizer.sgd
    assert exp.scheme["weights"]["bits"] == exp.scheme["activations"]["bits"] == 3 and exp.hardware is None
    assert exp.config == qconfig.to_dict(cfg) and exp.hash == qconfig.config_hash(cfg)
    assert qconfig.phase_dict(exp.training.qat)["optimizer"] == "sgd"
    assert exp.logger.mode == cfg.logger.mode and exp.paths.cache_dir == cfg.paths.cache_dir
    # a sweep's shared config (with its hydra node) converts too: the hydra node is left out unresolved
    assert "hydra" not in qconfig.experiment(_compose(["+sweep=smoke"], hydra_node=True)).config


def test_the_bits_shorthand_applies_a_schemes_low_bits_rule():
    # the dict the runner's readers (target checks, BN re-estimation) see is the one the model is built with
    for bits, folding in (("2", "no_fold"), ("3", "no_fold"), ("4", "fold")):
        exp = qconfig.experiment(_compose(["scheme=lsq", f"bits={bits}", "~hardware"]))
        assert exp.scheme["bn_folding"] == folding and ("low_bits" in exp.scheme) is (folding == "fold"), bits
    exp = qconfig.experiment(_compose(["scheme=lsq", "bits=2", "scheme.low_bits=null", "~hardware"]))
    assert exp.scheme["bn_folding"] == "fold"
    # widths written into the roles count as the shorthand does
    exp = qconfig.experiment(_compose(["scheme=lsq", "scheme.weights.bits=2", "~hardware"]))
    assert exp.scheme["bn_folding"] == "no_fold"


def test_a_scheme_key_set_on_the_command_line_wins_over_the_low_bits_rule():
    overrides = ["scheme=lsq", "bits=2", "scheme.bn_folding=fold_batch_stats", "~hardware"]
    with _hydra_job(overrides):   # what a Hydra job sees: its own command line
        assert qconfig.given_scheme_keys() == ("bn_folding",)
        exp = qconfig.experiment(_compose(overrides))
        assert exp.scheme["bn_folding"] == "fold_batch_stats" and "low_bits" not in exp.scheme
    assert qconfig.given_scheme_keys() == ()   # outside a job: the rule applies
    assert qconfig.experiment(_compose(overrides)).scheme["bn_folding"] == "no_fold"


@pytest.mark.parametrize("bits", [2, 4])
def test_a_quantizer_field_set_on_the_command_line_wins_over_the_roles_low_bits_rule(bits):
    # lsq's weights take init mse_no_shrink at 2-3 bits from their spec's rule; an init sweep must get what it asks
    from qresearch.quantizers import create

    overrides = ["scheme=lsq", f"bits={bits}", "scheme.weights.init=max", "~hardware"]
    with _hydra_job(overrides):
        scheme = qconfig.experiment(_compose(overrides)).scheme
    assert create(scheme["weights"], role="weights").init == "max"
    assert scheme["weights"]["low_bits"] is None   # the rule set nothing else
    # not given: the rule applies at 2 bits
    plain = qconfig.experiment(_compose(["scheme=lsq", f"bits={bits}", "~hardware"])).scheme
    assert create(plain["weights"], role="weights").init == ("mse_no_shrink" if bits == 2 else "mse")


def test_launchers_compose(monkeypatch):
    # the joblib launcher takes n_jobs from $QRESEARCH_JOBS (default 2), under both names
    monkeypatch.delenv("QRESEARCH_JOBS", raising=False)
    for name in ("parallel", "joblib"):
        cfg = _compose([f"hydra/launcher={name}"], hydra_node=True)
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    monkeypatch.setenv("QRESEARCH_JOBS", "5")
    assert _compose(["hydra/launcher=joblib"], hydra_node=True).hydra.launcher.n_jobs == 5


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("ray", "RayLauncher")])
def test_cluster_launchers_compose(launcher, target):
    # ray composes without its plugin installed (our file is complete: it used to include itself)
    cfg = _compose([f"hydra/launcher={launcher}"], hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_optuna_storage_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("QRESEARCH_OPTUNA_STORAGE", raising=False)
    cfg = _compose(["+hparams_search=pact_optuna"], hydra_node=True)
    assert cfg.hydra.sweeper.storage is None
    monkeypatch.setenv("QRESEARCH_OPTUNA_STORAGE", "sqlite:////tmp/s.db")
    cfg = _compose(["+hparams_search=pact_optuna"], hydra_node=True)
    assert cfg.hydra.sweeper.storage == "sqlite:////tmp/s.db"


def test_experiment_overrides_groups():
    cfg = _compose(["+experiment=cifar10_resnet20_lsq4"])
    assert (cfg.dataset.name, cfg.model.name, cfg.bits) == ("cifar10", "resnet20", 4)
    assert cfg.training.float.optimizer.name == "sgd"


def test_bad_enum_value_lists_choices():
    with pytest.raises(Exception) as e:
        _compose(["training.qat.optimizer=adamm"])
    text = f"{e.value} {e.value.__cause__}"
    assert "adamw" in text and "sgd" in text and "rmsprop" in text


def test_bad_type_fails_at_compose():
    with pytest.raises(Exception, match="epochs"):
        _compose(["training.float.epochs=many"])


def test_unknown_group_option_lists_options():
    with pytest.raises(Exception) as e:
        _compose(["model=resnet"])
    assert "resnet20" in str(e.value)


def test_check_overrides_suggests_close_keys():
    with pytest.raises(ConfigError) as e:
        qoverrides.check_overrides(["training.qat.epoch=3"])
    assert "training.qat.epochs" in str(e.value)
    with pytest.raises(ConfigError, match="seed"):
        qoverrides.check_overrides(["sed=1"])
    # usual abbreviations name the key they stand for first
    for key, meant in (("training.qat.lr", "training.qat.learning_rate"), ("training.float.bs", "training.float.batch_size"),
                       ("training.qat.wd", "training.qat.weight_decay")):
        with pytest.raises(ConfigError) as e:
            qoverrides.check_overrides([f"{key}=1"])
        assert f"Did you mean {meant!r}" in str(e.value)
    # valid keys, sweeps, appends, hydra keys and group choices pass
    qoverrides.check_overrides(["training.qat.epochs=3", "seed=0,1", "+foo=1", "hydra.verbose=true", "model=lenet5",
                             "model.hidden=[8]", "scheme.weights.bits=2", "-m", "dataset.train_samples=100"])


def test_validate_lists_registered_names():
    cfg = _compose(["dataset.name=digitz"])
    with pytest.raises(ConfigError) as e:
        qconfig.validate(cfg)
    assert "digits" in str(e.value) and "mnist" in str(e.value)
    cfg = _compose(["logger.mode=sometimes"])
    with pytest.raises(ConfigError, match="offline"):
        qconfig.validate(cfg)


def test_config_hash_ignores_logging_and_paths():
    a = _compose()
    b = _compose(["logger=disabled", "paths.output_dir=/tmp/elsewhere", "sweep_name=x"])
    c = _compose(["seed=1"])
    assert qconfig.config_hash(a) == qconfig.config_hash(b) != qconfig.config_hash(c)
    d = qconfig.to_dict(a)
    assert d["training"]["qat"]["optimizer"] == "adam" and "hydra" not in d


def test_sweep_config_is_checked_before_any_job(capsys):
    from qresearch.sweep_callback import SweepSummary

    cfg = _compose(["+sweep=smoke", "dataset.train_samples=-3"], hydra_node=True)
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_start(cfg)
    assert "no job was started" in capsys.readouterr().err
    SweepSummary().on_multirun_start(_compose(["+sweep=smoke"], hydra_node=True))


def test_bits_shorthand_with_role_bits_is_refused(capsys):
    from qresearch.sweep_callback import SweepSummary

    qconfig.check_bits_shorthand(None, ["scheme.weights.bits", "seed"])
    qconfig.check_bits_shorthand(4, ["seed", "scheme.weights.quantizer"])
    with pytest.raises(ConfigError, match="scheme.weights.bits"):
        qconfig.check_bits_shorthand(4, ["scheme.weights.bits"])
    # +sweep=bitwidth sweeps the role widths: adding bits=4 would flatten the grid; stop before any job
    cfg = _compose(["+sweep=bitwidth", "bits=4"], hydra_node=True)
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_start(cfg)
    assert "no job was started" in capsys.readouterr().err
    # a sweep over bits with a role width on the command line
    cfg = _compose(["+sweep=smoke", "scheme.activations.bits=8"], hydra_node=True)
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_start(cfg)
    SweepSummary().on_multirun_start(_compose(["+sweep=bitwidth"], hydra_node=True))
    SweepSummary().on_multirun_start(_compose(["+sweep=smoke", "bits=null", "scheme.weights.bits=3"], hydra_node=True))


@pytest.mark.parametrize("override,message", [("seed=-1", "seed must be an integer in"),
                                               ("dataset.test_fraction=1.5", "dataset.test_fraction must be between")])
def test_out_of_range_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        qconfig.validate(_compose([override]))


# ------------------------------------------------------------------ your own code: plugins, _target_, npz
def test_plugins_are_imported_before_the_sweep_is_checked(tmp_path, monkeypatch, capsys):
    from qresearch import quantizers
    from qresearch.stages import check_scheme
    from qresearch.sweep_callback import SweepSummary

    write_quantizer(tmp_path, "qr_plugin_sweep", "qr_rule_sweep")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _compose(["+sweep=smoke", "plugins=[qr_plugin_sweep]", "scheme.weights.quantizer=qr_rule_sweep"],
                   hydra_node=True)
    assert "qr_rule_sweep" not in quantizers.names()
    with pytest.raises(Exception, match="unknown quantizer 'qr_rule_sweep'.*plugins=\\[your_module\\]"):
        check_scheme(qconfig.experiment(cfg))  # what a job would meet without the plugin
    SweepSummary().on_multirun_start(cfg)  # imports the plugins, then checks the sweep's config
    assert "qr_rule_sweep" in quantizers.names()
    target, eff, _ = check_scheme(qconfig.experiment(cfg))
    assert eff["weights"]["quantizer"] == "qr_rule_sweep"
    # a plugin that cannot be imported stops the sweep before any job, naming it
    bad = _compose(["+sweep=smoke", "plugins=[qr_no_such_module]"], hydra_node=True)
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_start(bad)
    err = capsys.readouterr().err
    assert "no job was started" in err and "'qr_no_such_module' could not be imported" in err and "PYTHONPATH" in err


def test_a_plugin_without_brackets_is_a_list_of_one():
    assert qoverrides.plugins_as_list(["plugins=my_mod", "seed=1"]) == ["plugins=[my_mod]", "seed=1"]
    assert qoverrides.plugins_as_list(["+plugins=a,b.c"]) == ["+plugins=[a,b.c]"]
    assert qoverrides.plugins_as_list(["plugins=[a]", "plugins="]) == ["plugins=[a]", "plugins="]
    cfg = _compose(qoverrides.plugins_as_list(["plugins=json"]))  # composes: a list, as the schema wants
    assert list(cfg.plugins) == ["json"]


def test_plugins_from_the_command_line_and_the_environment(tmp_path, monkeypatch):
    from qresearch import plugins, quantizers

    assert plugins.overrides_plugins(["plugins=[a,b.c]", "+plugins=[d]", "seed=1", "plugins=[e],[f]"]) == \
        ["a", "b.c", "d", "e", "f"]
    write_quantizer(tmp_path, "qr_plugin_env", "qr_rule_env")
    monkeypatch.chdir(tmp_path)  # the folder a user runs from is importable, without PYTHONPATH
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setenv(plugins.PLUGINS_ENV, " qr_plugin_env , ")
    assert plugins.import_plugins([]) == ["qr_plugin_env"]
    assert "qr_rule_env" in quantizers.names()
    assert _compose(["plugins=[x,y]"]).plugins == ["x", "y"]
    # plugins do not change what a run computes: not in its identity, nor in its folder name
    assert qconfig.config_hash(_compose(["plugins=[x]"])) == qconfig.config_hash(_compose())
    assert "plugins" in _compose(hydra_node=True).hydra.job.config.override_dirname.exclude_keys


def test_failing_plugin_import_names_the_module_and_the_fix(tmp_path, monkeypatch):
    from qresearch.plugins import PluginImportError, import_plugins

    (tmp_path / "qr_broken_plugin.py").write_text("import numpy\nraise RuntimeError('bad constant')\n")
    (tmp_path / "qr_needs_dep.py").write_text("import qr_dependency_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginImportError) as e:
        import_plugins(["qr_missing_plugin"], env=False)
    msg = str(e.value)
    assert "plugin module 'qr_missing_plugin' could not be imported: ModuleNotFoundError" in msg
    assert "PYTHONPATH" in msg and "pip install -e ." in msg and "plugins=[...]" in msg
    with pytest.raises(PluginImportError, match=r"'qr_broken_plugin' was found but failed while importing: "
                                                r"RuntimeError: bad constant \(at .*qr_broken_plugin.py:2\)"):
        import_plugins(["qr_broken_plugin"], env=False)
    with pytest.raises(PluginImportError, match="'qr_needs_dep' was found but failed.*qr_dependency_not_installed"):
        import_plugins(["qr_needs_dep"], env=False)


def test_a_target_alone_picks_the_custom_option(tmp_path, monkeypatch):
    from qresearch import data, models

    write_data_and_models(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["model._target_=user_models.build", "+model.width=8", "dataset._target_=user_data.as_dict",
            "+dataset.classes=4"]
    with pytest.raises(Exception, match="_target_"):  # the problem: the default options have no such key
        _compose(args)
    implied = qoverrides.with_implied_groups(args)
    assert implied[-2:] == ["dataset=custom", "model=custom"]
    cfg = _compose(implied)
    qconfig.validate(cfg)
    assert qconfig.to_dict(cfg.model) == {"_target_": "user_models.build", "width": 8}  # no mlp options leak in
    ds = data.load_dataset(qconfig.to_dict(cfg.dataset))
    model = models.build_model(qconfig.to_dict(cfg.model), ds.input_shape, ds.num_classes)
    assert model.name == "user_mlp" and model.get_layer("hidden").units == 8 and ds.num_classes == 4
    # an append (+model._target_) is turned into a set, an explicit choice is left alone
    assert qoverrides.with_implied_groups(["+model._target_=a.b"]) == ["model._target_=a.b", "model=custom"]
    assert qoverrides.with_implied_groups(["model=custom", "model._target_=a.b"]) == ["model=custom", "model._target_=a.b"]
    assert qoverrides.with_implied_groups(["seed=1"]) == ["seed=1"]
    # a typo in a target fails at validation, before any data is loaded
    with pytest.raises(ConfigError, match=r"model._target_ 'user_models.biuld': module 'user_models' has no 'biuld'"):
        qconfig.validate(_compose(qoverrides.with_implied_groups(["model._target_=user_models.biuld"])))
    with pytest.raises(ConfigError, match="dataset=custom needs dataset._target_="):
        qconfig.validate(_compose(["dataset=custom"]))


def test_npz_dataset_is_checked_at_validation(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    qconfig.validate(_compose(["dataset=npz", f"dataset.path={path}", "dataset.scale=1/255"]))
    with pytest.raises(ConfigError, match="dataset=npz needs dataset.path="):
        qconfig.validate(_compose(["dataset=npz"]))
    with pytest.raises(ConfigError, match="not x_train, y_train, x_test, y_test"):
        qconfig.validate(_compose(["dataset=npz", f"dataset.path={_npz_with(tmp_path, images=[[[1]]])}"]))
    with pytest.raises(ConfigError, match="To add one: dataset=npz dataset.path="):
        qconfig.validate(_compose(["dataset.name=mine"]))
    with pytest.raises(ConfigError, match="To add one: model._target_="):
        qconfig.validate(_compose(["model.name=mine"]))


def _npz_with(folder, **arrays):
    import numpy as np

    path = folder / "other.npz"
    np.savez(path, **arrays)
    return path


def test_a_sweep_over_dataset_files_is_checked_per_job(tmp_path, capsys):
    from qresearch.sweep_callback import SweepSummary

    a, b = write_npz(tmp_path / "a.npz"), write_npz(tmp_path / "b.npz", single=True)
    # what Hydra hands the callback for `-m dataset=npz dataset.path=a.npz,b.npz`: the swept key unset
    cfg = _compose(["+sweep=smoke", "dataset=npz"], hydra_node=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task.append(f"dataset.path={a},{b}")
    SweepSummary().on_multirun_start(cfg)
    with pytest.raises(SystemExit):  # not swept and not given: stopped before any job
        SweepSummary().on_multirun_start(_compose(["+sweep=smoke", "dataset=npz"], hydra_node=True))
    assert "dataset=npz needs dataset.path=" in capsys.readouterr().err


def test_bn_freeze_steps_counts_in_the_hash_only_with_fold_batch_stats():
    base = qconfig.config_hash(_compose(["scheme=lsq"]))
    plain = qconfig.to_dict(_compose(["scheme=lsq"]))
    plain["scheme"].pop("bn_freeze_steps")  # a record from before the field
    assert qconfig.config_hash(plain) == base == qconfig.config_hash(_compose(["scheme=lsq", "scheme.bn_freeze_steps=5"]))
    a, b = (qconfig.config_hash(_compose(["scheme=lsq", "scheme.bn_folding=fold_batch_stats", f"scheme.bn_freeze_steps={n}"]))
            for n in (5, 6))
    assert len({base, a, b}) == 3


def test_bn_reestimation_batches_counts_in_the_hash_unless_it_is_0():
    # it counts under fold too: a target can turn the scheme's fold into no_fold (academic does), where it acts
    def hashed(*more):
        return qconfig.config_hash(_compose(["scheme=minmax_nbit", *more]))

    assert "bn_reestimation_batches" not in qconfig.to_dict(_compose(["scheme=minmax_nbit"]))["scheme"]
    assert hashed("+scheme.bn_reestimation_batches=0") == hashed()   # 0 (off) hashes as before the field
    assert hashed("scheme.bn_folding=no_fold", "+scheme.bn_reestimation_batches=0") == hashed("scheme.bn_folding=no_fold")
    assert len({hashed(), hashed("+scheme.bn_reestimation_batches=5"), hashed("+scheme.bn_reestimation_batches=6"),
                hashed("scheme.bn_folding=no_fold", "+scheme.bn_reestimation_batches=5")}) == 4
    # the runner's override: null (the scheme's, the default) and 0 leave the hash alone; a number counts
    assert hashed("training.bn_reestimation_batches=0") == hashed()
    assert hashed("training.bn_reestimation_batches=5") != hashed()


def test_the_runner_re_estimates_bn_with_the_scheme_s_batches_unless_training_overrides_them():
    from qresearch import stages

    def batches(overrides):
        exp = qconfig.experiment(_compose(overrides))
        qconfig.validate(exp)
        return stages.bn_reestimation_batches(exp, exp.scheme)

    assert batches(["scheme=lsq"]) == 0                                      # as shipped: fold, nothing stays
    assert batches(["scheme=lsq", "scheme.bn_folding=no_fold"]) == 50       # BN stays: the preset's 50 batches
    assert batches(["scheme=lsq", "scheme.bn_folding=no_fold", "training.bn_reestimation_batches=0"]) == 0
    assert batches(["scheme=minmax_nbit", "training.bn_reestimation_batches=7"]) == 7
    assert batches(["scheme=minmax_nbit", "scheme.bn_folding=no_fold"]) == 0   # its scheme asks for none


def test_the_bn_sweep_crosses_the_learned_presets_with_every_bn_strategy():
    from qresearch import stages
    from qresearch.sweep_callback import SweepSummary

    cfg = _compose(["+sweep=bn"], hydra_node=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params["scheme.bn_folding"] == "fold,no_fold,fold_batch_stats"
    assert params["scheme"] == "lsq,lsq_plus,pact_lsq" and params["bits"] == "4,3,2"
    assert cfg.model.name == "resnet20" and cfg.model.depth == 8 and cfg.sweep_name == "bn"
    assert cfg.get("hardware") is None   # no target: academic would set no_fold over every strategy
    SweepSummary().on_multirun_start(cfg)   # every job's config is valid before any starts
    job = qconfig.experiment(_compose(["+sweep=bn", "scheme=lsq", "scheme.bn_folding=no_fold", "bits=2"]))
    assert stages.bn_reestimation_batches(job, job.scheme) == 50   # no_fold: the preset's re-estimation acts
    # the presets' low_bits rule is off in this sweep: fold at 2 bits stays fold
    job = qconfig.experiment(_compose(["+sweep=bn", "scheme=lsq", "scheme.bn_folding=fold", "bits=2"]))
    assert job.scheme["bn_folding"] == "fold" and stages.bn_reestimation_batches(job, job.scheme) == 0


def test_the_init_sweep_names_every_weight_rule_and_each_job_gets_its_own():
    from qresearch.quantizers import create
    from qresearch.sweep_callback import SweepSummary

    cfg = _compose(["+sweep=init"], hydra_node=True)
    assert cfg.hydra.sweeper.params["scheme.weights.init"] == "paper,max,mse,mse_no_shrink"
    SweepSummary().on_multirun_start(cfg)   # every job's config is valid before any starts
    for rule in ("paper", "max", "mse", "mse_no_shrink"):   # at 2 bits, where lsq's weights have their own rule
        overrides = ["+sweep=init", "scheme=lsq", f"scheme.weights.init={rule}", "bits=2"]
        with _hydra_job(overrides):
            job = qconfig.experiment(_compose(overrides))
        assert create(job.scheme["weights"], role="weights").init == rule
