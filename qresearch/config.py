"""Structured config of an experiment: types, valid values, and checks that fail at start.

The dataclasses below are registered in Hydra's ConfigStore as ``qresearch_schema``, the
first entry of ``conf/config.yaml``'s defaults list: every YAML file merges onto it, so a
wrong type (``training.qat.epochs=abc``) or a value outside an enum
(``training.qat.optimizer=adamm``) fails when Hydra composes the config, before any job
runs (the basic sweeper composes every job of a batch before launching it).
``validate`` checks what only the code knows (registered dataset/model names, logger modes);
``qresearch.overrides`` adds "did you mean" hints for misspelt command-line keys.

Also here: the one list of keys by role (identity hash, variant labels, sweep folder names) and
the typed boundary: ``experiment(cfg) -> Experiment``, built once per job; below it, no OmegaConf.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from qresearch.errors import ConfigError

SCHEMA_NAME = "qresearch_schema"
# ---- The one list of keys by role (identity hash, variant labels, sweep folder names, the report).
#: Keys that do not change what a run computes: left out of its identity hash and its variant label.
# ``plugins`` only makes names available; the names a run uses (scheme.weights.quantizer=...) are in its config.
NON_SEMANTIC_KEYS = ("logger", "paths", "sweep_name", "resume", "threads", "plugins")
#: Keys (and their sub-keys) that change how a run is carried out or described, not its numbers:
#: in its identity hash, but never in its variant label.
NO_RESULT_KEYS = ("deploy", "save_model", "dataset.data_dir", "dataset.download", "dataset.cache_dir",
                  "hardware.description", "training.verbose", "scheme.name", "training.strategy",
                  "training.devices")
#: Keys (exactly these) that name a run's coordinates: they place a run in a table, not in a variant.
COORDINATE_KEYS = ("seed", "bits", "scheme", "hardware", "dataset", "model", "scheme.weights.bits",
                   "scheme.activations.bits", "sweep", "experiment", "hparams_search",
                   "hardware.pipeline.accumulator_bits",  # the x-axis of the accumulator-width panel
                   # labels.model names a model's _target_; labels.dataset says only "npz"/"custom", so
                   # dataset.path and dataset._target_ stay in the variant label, which then names the data
                   "model._target_",
                   # a mixed run's budget and base algorithm place it on the accuracy-vs-cost axes
                   "mixed.budget.bops", "mixed.budget.memory", "mixed.budget.table_cost", "mixed.algorithm",
                   "precision")
#: Override keys left out of a sweep job's folder name: conf/config.yaml's
#: ``hydra.job.config.override_dirname.exclude_keys`` must equal this list (a test checks). Hydra
#: matches them exactly, so the non-semantic keys are listed with the sub-keys a user sets.
FOLDER_EXCLUDED_KEYS = ("sweep", "sweep_name", "resume", "plugins", "logger", "logger.mode", "logger.project",
                        "logger.group", "paths", "paths.output_dir", "paths.cache_dir", "paths.data_dir", "threads",
                        "hydra/launcher", "hydra.launcher.n_jobs", "experiment", "hparams_search")


def is_coordinate(key: str) -> bool:
    """Whether a config or override key stays out of a variant label (a coordinate, or no effect on results)."""
    key = key.lstrip("+~")
    return (key in COORDINATE_KEYS or key.startswith("hydra") or key.split(".")[0] in NON_SEMANTIC_KEYS
            or any(key == k or key.startswith(k + ".") for k in NO_RESULT_KEYS))


LOGGER_MODES = ("auto", "online", "offline", "disabled", "dryrun", "run")  # last two: wandb's aliases


class Optimizer(enum.Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"
    rmsprop = "rmsprop"


class Schedule(enum.Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass
class PhaseConfig:
    """One training phase (float pre-training or quantization-aware fine-tuning)."""
    epochs: int = 10
    batch_size: int = 64
    optimizer: Optimizer = Optimizer.adam
    learning_rate: float = 1e-3
    momentum: float = 0.9          # sgd / rmsprop
    nesterov: bool = False         # sgd
    weight_decay: float = 0.0      # decoupled weight decay (every optimizer)
    schedule: Schedule = Schedule.constant
    steps_per_epoch: Optional[int] = None  # cap batches per epoch (quick experiments); null = all
    clipnorm: Optional[float] = None
    # resumable: a checkpoint every N batches and per epoch (qresearch.checkpoints); null = off
    checkpoint_every: Optional[int] = None


@dataclass
class QuantizerTraining:
    """How quantizer parameters (steps, clips, offsets) train; set per scheme (``scheme.quantizer_*``)."""
    lr_multiplier: float = 1.0       # scheme.quantizer_lr_multiplier: their learning rate over the model's
    weight_decay: bool = False       # scheme.quantizer_weight_decay: the phase's weight decay applies to them
    freeze_steps: int = 0            # scheme.freeze_quantizer_steps: held at their initial values this long

    @property
    def changes_updates(self) -> bool:
        return self.lr_multiplier != 1.0 or self.freeze_steps > 0


#: Scheme keys of ``QuantizerTraining``'s fields.
QUANTIZER_TRAINING_KEYS = {"quantizer_lr_multiplier": "lr_multiplier", "quantizer_weight_decay": "weight_decay",
                           "freeze_quantizer_steps": "freeze_steps"}


def quantizer_training(scheme: Optional[Mapping[str, Any]]) -> QuantizerTraining:
    """The typed quantizer-training settings of a scheme dict (checked as SchemeSpec checks them)."""
    from types import SimpleNamespace

    from qresearch.schemes.spec import TRAINING_FIELDS, check_training_fields

    values = SimpleNamespace(**{k: (scheme or {}).get(k, default) for k, default in TRAINING_FIELDS.items()})
    check_training_fields(values)
    return QuantizerTraining(**{QUANTIZER_TRAINING_KEYS[k]: v for k, v in vars(values).items()})


@dataclass
class TrainingConfig:
    qat: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=3, learning_rate=1e-4))
    calibration_samples: int = 256  # training images for PTQ calibration (range set-up)
    eval_batch_size: int = 256
    timing_steps: int = 20           # steps of the float model timed against QAT steps
    verbose: int = 2                 # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch
    strategy: str = "none"           # none | mirrored (tf.distribute.MirroredStrategy; qresearch.distribute)
    # After QAT, BN layers that stay get their moving statistics re-estimated over this many training batches
    # (schemes/bn_reestimate.py). null: the scheme's ``bn_reestimation_batches`` (acts with no_fold); 0: off.
    bn_reestimation_batches: Optional[int] = None
    devices: Optional[List[str]] = None  # mirrored: the devices ("/gpu:0", ...); null = every GPU (else CPU)
    # Declared last: in this class body the field name shadows the builtin ``float``.
    float: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class LoggerConfig:
    mode: str = "auto"               # auto | online | offline | disabled
    project: str = "qresearch"
    entity: Optional[str] = None
    group: Optional[str] = None      # default: the sweep name
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None        # default: the job's output folder
    log_history: bool = True


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"
    data_dir: Optional[str] = None


@dataclass
class BudgetConfig:
    """A mixed-precision budget: ONE of these, a fraction in (0, 1] of the all-8-bit cost."""
    bops: Optional[float] = None     # bit operations (MACs x weight bits x input activation bits)
    memory: Optional[float] = None   # weight memory (bits)
    table_cost: Optional[float] = None  # the target's own cost table (its YAML's costs:)


@dataclass
class MixedConfig:
    """Mixed precision (``scheme=mixed mixed.budget.bops=0.25``): per-layer widths chosen under a budget by
    ``qresearch.mixed.search`` between the float baseline and PTQ. Off while no budget is set."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    algorithm: Optional[str] = None  # scheme preset whose quantizers the widths use; null: the run's scheme
    bits: Optional[List[int]] = None  # candidate widths; null: the target's allowed widths (no target: 8,4,3,2)
    sensitivity: str = "measured"    # a name in qresearch.mixed.search.SENSITIVITY: measured | hessian
    samples: int = 256               # seeded training images the sensitivity is measured on
    solver: str = "ilp"              # ilp (scipy milp; greedy when it finds nothing) | greedy

    @property
    def enabled(self) -> bool:
        return bool(self.budget_dict()) if isinstance(self.budget, BudgetConfig) else bool(self.budget)

    def budget_dict(self) -> Dict[str, float]:
        """``{"bops": f}`` or ``{"memory": f}``, as ``qresearch.mixed.allocate`` takes it."""
        return {k: v for k, v in dataclasses.asdict(self.budget).items() if v is not None}


@dataclass
class Config:
    seed: int = 0
    sweep_name: str = "adhoc"
    resume: bool = True              # multirun: skip jobs completed with the same config hash and data
    deterministic: bool = True       # tf.config.experimental.enable_op_determinism()
    adapt: bool = True               # coerce the scheme's details to the target instead of failing
    adapt_bits: bool = False         # ... bit widths included (off: a width the target lacks fails the run)
    bits: Optional[int] = None       # shorthand: bit width of the scheme's weights and activations
    deploy: bool = True              # run the target's deployment check where it has a runtime
    save_model: bool = False         # save the QAT model (SavedModel) in the job folder
    threads: Optional[int] = None    # TensorFlow intra-op threads (null: TensorFlow's default)
    plugins: List[str] = field(default_factory=list)  # modules imported before validation (qresearch.plugins)
    # Progressive bit reduction: QAT at each of these widths in turn (both roles), the run's own width last,
    # each starting from the previous one's weights (APoT: [4] before 2 bits). Empty: off.
    progressive_bits: List[int] = field(default_factory=list)
    dataset: Any = MISSING
    model: Any = MISSING
    scheme: Any = MISSING
    hardware: Any = None             # none (`~hardware` on the command line): the scheme as written, no deployment
    mixed: MixedConfig = field(default_factory=MixedConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def _subdir(override_dirname: str) -> str:
    """A job's folder name in a sweep: its sorted overrides, or a hash when that is too long."""
    name = str(override_dirname or "").replace("/", "_")
    if not name:
        return "default"
    if len(name) > 200:
        return name[:150] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("qr_subdir", _subdir, replace=True)


register_configs()
register_resolvers()
# conf/hydra/launcher/joblib.yaml replaces the plugin's own `joblib` config (to set n_jobs) and Hydra
# still type-checks it against the plugin's schema of that name, warning that this matching is
# deprecated. The file sets every field itself, so it works with or without the matching.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")


# ------------------------------------------------------------------ plain data and identity
def to_dict(cfg) -> Dict[str, Any]:
    """The resolved config as plain data (enums as their names, no ``hydra`` node)."""
    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        # left out before resolving: its ${hydra:...} values resolve only inside a running Hydra job
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    if isinstance(cfg, (DictConfig, ListConfig)):
        data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    else:
        data = json.loads(json.dumps(cfg, default=str))
    if isinstance(data, dict):
        data.pop("hydra", None)
    return data


def stable_hash(obj: Any, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(cfg) -> str:
    """The run's identity: a hash of everything in the resolved config that changes its results."""
    return _hash_of(to_dict(cfg))


def _hash_of(data: Mapping[str, Any]) -> str:
    # the mixed node at its defaults (mixed precision off) is left out: runs recorded before it existed keep
    # their hashes, so a resumed sweep still finds them; any setting of it (mixed.algorithm too) counts
    default_mixed = data.get("mixed") in (None, dataclasses.asdict(MixedConfig()))
    data = {k: v for k, v in data.items() if k not in NON_SEMANTIC_KEYS and not (k == "mixed" and default_mixed)}
    if isinstance(data.get("training"), Mapping):  # one device (the default) keeps the hashes from before
        data["training"] = {k: v for k, v in data["training"].items()
                            if not (k == "strategy" and v in (None, "none")) and not (k == "devices" and not v)
                            and not (k == "bn_reestimation_batches" and not v)}
    if isinstance(data.get("scheme"), Mapping):
        # bn_freeze_steps acts only with fold_batch_stats: elsewhere it changes nothing. bn_reestimation_batches
        # counts unless 0: it acts with no_fold, which a target can set over the scheme's fold (academic does).
        # At their defaults, records from before the fields keep their hashes.
        bn = data["scheme"].get("bn_folding")
        data["scheme"] = {k: v for k, v in data["scheme"].items()
                          if not (k == "bn_freeze_steps" and bn != "fold_batch_stats")
                          and not (k == "bn_reestimation_batches" and not v)}
    return stable_hash(data)


# ------------------------------------------------------------------ the typed boundary
@dataclass(frozen=True)
class Experiment:
    """One job's config as typed objects, built once from the Hydra config by ``experiment(cfg)``;
    everything below the run takes these (no OmegaConf past this point)."""
    config: Dict[str, Any]            # the resolved config as plain data: recorded, logged, hashed
    hash: str                         # config_hash: the run's identity
    seed: Any                         # as given: validate() names a bad one
    dataset: Dict[str, Any]
    model: Dict[str, Any]
    scheme: Dict[str, Any]            # the ``bits`` shorthand applied
    hardware: Optional[Dict[str, Any]]
    training: TrainingConfig
    logger: LoggerConfig
    mixed: MixedConfig
    paths: PathsConfig
    sweep_name: str = "adhoc"
    resume: bool = True
    deterministic: bool = True
    adapt: bool = True
    adapt_bits: bool = False
    bits: Optional[int] = None
    deploy: bool = True
    save_model: bool = False
    threads: Optional[int] = None
    plugins: List[str] = field(default_factory=list)
    progressive_bits: List[int] = field(default_factory=list)

    @property
    def quantizer_training(self) -> QuantizerTraining:
        return quantizer_training(self.scheme)


def _typed(cls, data: Optional[Mapping[str, Any]], **fixed):
    """``cls`` from plain data: its own fields only (a ``+key`` added on the command line stays in
    ``Experiment.config``, and so in the hash, without breaking the typed view)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(data or {}).items() if k in names}, **fixed)


def phase_config(data: Mapping[str, Any]) -> PhaseConfig:
    """A PhaseConfig from plain data (``{"optimizer": "sgd", ...}``; enums from their names)."""
    d = {k: v for k, v in dict(data).items() if k not in ("optimizer", "schedule")}
    return _typed(PhaseConfig, d, optimizer=Optimizer(data.get("optimizer", "adam")),
                  schedule=Schedule(data.get("schedule", "constant")))


def phase_dict(phase: PhaseConfig) -> Dict[str, Any]:
    """A phase as plain data (enums as their names), e.g. for a cache key."""
    return {k: getattr(v, "value", v) for k, v in dataclasses.asdict(phase).items()}


def with_bits(scheme: Mapping[str, Any], bits: Optional[int], given: Iterable[str] = ()) -> Dict[str, Any]:
    """The scheme with the ``bits`` shorthand applied to both roles' widths, then its ``low_bits`` rule where the
    widths are at most the rule's (``qresearch.schemes.low_bits``: the dict the runner's readers see is the one
    the model is built with), except for the scheme keys in ``given`` (set on the command line: they win)."""
    from qresearch.schemes import low_bits

    spec = copy.deepcopy(dict(scheme or {}))
    if bits is not None:
        for key in ROLE_BITS_KEYS:
            role = key.split(".")[1]
            if isinstance(spec.get(role), dict):
                spec[role]["bits"] = int(bits)
    return low_bits.resolved(spec, keep=given)


def given_scheme_keys() -> Tuple[str, ...]:
    """The scheme keys the running Hydra job sets on its command line (``scheme.bn_folding=fold`` ->
    ``bn_folding``); none outside a Hydra job (a config composed in Python)."""
    from qresearch.labels import setting_key  # (labels reads this module's coordinate keys)

    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:  # (not inside a Hydra job)
        return ()
    keys = (setting_key(o) for o in task)
    return tuple(k.split(".", 1)[1] for k in keys if k.startswith("scheme."))


def experiment(cfg) -> Experiment:
    """The typed objects of one job, from a composed Hydra config (or its plain-data form)."""
    data = to_dict(cfg)
    t = data.get("training") or {}
    training = _typed(TrainingConfig, {k: v for k, v in t.items() if k not in ("float", "qat")},
                      float=phase_config(t.get("float") or {}), qat=phase_config(t.get("qat") or {}))
    flags = {k: data[k] for k in ("sweep_name", "resume", "deterministic", "adapt", "adapt_bits", "bits", "deploy",
                                  "save_model", "threads", "plugins", "progressive_bits") if data.get(k) is not None}
    return Experiment(config=data, hash=_hash_of(data), seed=data.get("seed"), dataset=dict(data.get("dataset") or {}),
                      model=dict(data.get("model") or {}),
                      scheme=with_bits(data.get("scheme"), data.get("bits"), given=given_scheme_keys()),
                      hardware=dict(data["hardware"]) if data.get("hardware") else None, training=training,
                      logger=_typed(LoggerConfig, data.get("logger")), paths=_typed(PathsConfig, data.get("paths")),
                      mixed=mixed_config(data.get("mixed")), **flags)


def mixed_config(data: Optional[Mapping[str, Any]]) -> MixedConfig:
    """A MixedConfig from plain data (its own fields; ``validate_mixed`` names any other key)."""
    d = dict(data or {})
    budget = d.pop("budget", None) or {}
    return _typed(MixedConfig, d, budget=_typed(BudgetConfig, budget) if isinstance(budget, Mapping) else budget)


def _unknown_keys(cls, data: Any, prefix: str = "") -> List[str]:
    """Keys of ``data`` that are not fields of the dataclass ``cls``, nested dataclass fields included."""
    if not isinstance(data, Mapping):
        return []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = [prefix + str(k) for k in data if k not in fields]
    for k, f in fields.items():
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            out += _unknown_keys(f.default_factory, data.get(k), f"{prefix}{k}.")
    return sorted(out)


# ------------------------------------------------------------------ semantic validation
def _choice_error(what: str, value: Any, valid: Iterable[str], how_to_add: str = "") -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    add = f" To add one: {how_to_add}" if how_to_add else ""
    return ConfigError(f"{what} {value!r} is not valid.{hint} Valid values: {', '.join(valid)}.{add}")


def validate(cfg, check_data: bool = True) -> None:
    """Checks only the code can make (registries, modes); raises ConfigError listing valid values.

    ``check_data=False`` skips the dataset loader's own check (its file or target), for a sweep's
    shared config in which a swept dataset key is not set yet."""
    from qresearch import data, models
    from qresearch.plugins import import_object

    exp = cfg if isinstance(cfg, Experiment) else experiment(cfg)
    dcfg = exp.dataset
    if dcfg.get("name") not in data.DATASETS:
        raise _choice_error("dataset.name", dcfg.get("name"), data.DATASETS.names(), data.DATASETS.how_to_add)
    # the loader's own early check (dataset=npz: the file and its arrays; custom: the target)
    check = getattr(data.DATASETS.get(dcfg.get("name")), "check_config", None)
    if check is not None and check_data:
        check(dcfg)
    mcfg = exp.model
    if mcfg.get("_target_"):  # imported now, so a typo fails before any data is loaded
        import_object(mcfg.get("_target_"), "model._target_", models.BUILDER_CONTRACT)
    elif mcfg.get("name") not in models.MODELS:
        raise _choice_error("model.name", mcfg.get("name"), models.MODELS.names(), models.MODELS.how_to_add)
    if exp.logger.mode not in LOGGER_MODES:
        raise _choice_error("logger.mode", exp.logger.mode, LOGGER_MODES)
    for phase in ("float", "qat"):
        p = getattr(exp.training, phase)
        if p.epochs < 0:
            raise ConfigError(f"training.{phase}.epochs must be >= 0, got {p.epochs}")
        if p.batch_size < 1:
            raise ConfigError(f"training.{phase}.batch_size must be >= 1, got {p.batch_size}")
        lr = float(p.learning_rate)
        if not lr > 0 and not math.isnan(lr):  # NaN passes: it is how tests exercise the NaN-loss path
            raise ConfigError(f"training.{phase}.learning_rate must be > 0, got {p.learning_rate}")
    for split in ("train", "test"):
        n = dcfg.get(f"{split}_samples")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"dataset.{split}_samples must be a positive integer or null (all), got {n!r}")
    seed = exp.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    frac = dcfg.get("test_fraction")
    if frac is not None and not (isinstance(frac, (int, float)) and 0 < float(frac) < 1):
        raise ConfigError(f"dataset.test_fraction must be between 0 and 1 (the share of images held out), got {frac!r}")
    from qresearch.distribute import STRATEGIES

    bn = exp.training.bn_reestimation_batches
    if bn is not None and (isinstance(bn, bool) or not isinstance(bn, int) or bn < 0):
        raise ConfigError(f"training.bn_reestimation_batches must be null (the scheme's bn_reestimation_batches) "
                          f"or an integer >= 0 (0: off; e.g. 50 batches of training images after QAT), got {bn!r}")
    if exp.training.strategy not in STRATEGIES:
        raise _choice_error("training.strategy", exp.training.strategy, STRATEGIES)
    if exp.training.devices and exp.training.strategy == "none":
        raise ConfigError("training.devices is only read with training.strategy=mirrored: set both, or drop "
                          "training.devices")
    if exp.training.calibration_samples < 1:
        raise ConfigError(f"training.calibration_samples must be >= 1, got {exp.training.calibration_samples}")
    widths = list(exp.progressive_bits or [])
    if any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16 for b in widths):
        raise ConfigError(f"progressive_bits must be a list of bit widths in [2, 16] (e.g. [4] to start a 2-bit run "
                          f"from a 4-bit one), got {widths!r}")
    quantizer_training(exp.scheme)
    validate_mixed(exp.mixed, exp.config.get("mixed"))


def validate_mixed(m: MixedConfig, raw: Optional[Mapping[str, Any]] = None) -> None:
    """The ``mixed`` node's checks (no data needed): each error names the field and the fix. ``raw``: the node as
    plain data, whose keys are checked too (Hydra's schema refuses unknown ones; a dict config does not)."""
    example = "e.g. mixed.budget.bops=0.25 (a quarter of the all-8-bit BOPs) or mixed.budget.memory=0.3"
    unknown = _unknown_keys(MixedConfig, raw)
    if unknown:
        valid = "budget.bops, budget.memory, budget.table_cost" if unknown[0].startswith("budget.") else \
            ", ".join(f.name for f in dataclasses.fields(MixedConfig))
        raise ConfigError(f"mixed.{unknown[0]} is not a mixed-precision setting; valid: {valid} ({example})")
    if not isinstance(m.budget, BudgetConfig):
        raise ConfigError(f"mixed.budget must be a mapping with bops, memory or table_cost, got {m.budget!r} "
                          f"({example})")
    given = m.budget_dict()
    if len(given) > 1:
        raise ConfigError(f"mixed.budget sets {' and '.join(f'{k} ({v})' for k, v in given.items())}: give one of "
                          f"them (set the others to null), {example}")
    for kind, frac in given.items():
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise ConfigError(f"mixed.budget.{kind} must be a fraction in (0, 1] of the all-8-bit cost, got {frac!r} "
                              f"({example}; 1 = the 8-bit cost itself)")
    if not m.enabled:
        return
    from qresearch.mixed.search import SENSITIVITY, SOLVERS
    from qresearch.schemes import names as scheme_names

    if m.sensitivity not in SENSITIVITY:
        raise _choice_error("mixed.sensitivity", m.sensitivity, SENSITIVITY)
    if m.solver not in SOLVERS:
        raise _choice_error("mixed.solver", m.solver, SOLVERS)
    if m.algorithm is not None and m.algorithm not in scheme_names():
        raise _choice_error("mixed.algorithm", m.algorithm, scheme_names(),
                            "a scheme preset (conf/scheme/NAME.yaml or qresearch.schemes.register)")
    if m.bits is not None:
        if not m.bits or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16 for b in m.bits):
            raise ConfigError(f"mixed.bits must be a non-empty list of integer widths in [2, 16], got {m.bits!r} "
                              f"(e.g. mixed.bits=[8,4,3,2]; null: the target's allowed widths)")
    if isinstance(m.samples, bool) or not isinstance(m.samples, int) or m.samples < 1:
        raise ConfigError(f"mixed.samples must be a positive integer (training images), got {m.samples!r}")


ROLE_BITS_KEYS = ("scheme.weights.bits", "scheme.activations.bits")


def check_bits_shorthand(bits: Any, override_keys: Iterable[str]) -> None:
    """``bits`` sets both roles' widths; with ``scheme.weights.bits``/``scheme.activations.bits``
    also given, one of the two would be silently ignored, so refuse the pair."""
    if bits is None:
        return
    keys = sorted({str(k).lstrip("+~") for k in override_keys} & set(ROLE_BITS_KEYS))
    if keys:
        raise ConfigError(
            f"bits={bits} sets the bit width of both weights and activations, and {' and '.join(keys)} "
            f"{'is' if len(keys) == 1 else 'are'} set too: bits would replace {'it' if len(keys) == 1 else 'them'}. "
            f"Use either bits=N, or scheme.weights.bits / scheme.activations.bits with bits=null.")
