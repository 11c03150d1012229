"""Multi-device training: ``training.strategy`` (``none`` | ``mirrored``) and ``training.devices``.

``strategy_for(training)`` gives a ``tf.distribute.MirroredStrategy`` (or None), ``scope(strategy)`` its
scope, or nothing at all for None: with ``strategy: none`` no TensorFlow distribution code runs, so the
single-device path is the one it always was. Under the scope the float model, the quantized rebuild
(quantizer variables), calibration (cross-replica: assignments reach every copy) and the optimizer
(``compile``) are created; Keras' ``fit`` then splits each global batch over the replicas.

Quantizer variables written inside the training step (min-max range tracking, data init of an
uncalibrated model) are made replica-safe by ``qresearch.quantizers.replicas``: the statistics are reduced
over the replicas first, so every copy gets the value one device would compute on the whole batch.

BatchNormalization is per replica in tf_keras (each replica normalises its own slice of the batch):
with BN, results match one device only approximately; use ``SyncBatchNormalization`` or a larger
per-replica batch (notes/distribute.md).
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

from qresearch.errors import ConfigError

STRATEGIES = ("none", "mirrored")
_made: dict = {}  # one strategy per (name, devices) in a process: jobs sharing a process reuse it


def strategy_for(training: Any) -> Optional[Any]:
    """The strategy a ``TrainingConfig`` (or anything with ``strategy``/``devices``) asks for; None: one device."""
    name = str(getattr(training, "strategy", "none") or "none")
    devices: Optional[Sequence[str]] = getattr(training, "devices", None)
    return make(name, devices)


def make(name: str, devices: Optional[Sequence[str]] = None) -> Optional[Any]:
    if name not in STRATEGIES:
        raise ConfigError(f"training.strategy={name!r} is unknown; valid: {', '.join(STRATEGIES)}")
    if name == "none":
        if devices:
            raise ConfigError("training.devices is only read with training.strategy=mirrored; "
                              "set training.strategy=mirrored or drop training.devices")
        return None
    key = (name, tuple(devices or ()))
    if key not in _made:
        from qresearch._compat import tf

        _made[key] = tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    return _made[key]


def configure_devices(training: Any) -> None:
    """Split the CPU into logical devices when ``training.devices`` names more CPUs than exist
    (``training.devices=[/cpu:0,/cpu:1]``: two replicas on one machine without GPUs, for checking that
    a mirrored run matches one device). Must run before TensorFlow initialises its devices (the job's
    first TensorFlow call: ``stages.setup_tf`` calls this first)."""
    import re

    devices = list(getattr(training, "devices", None) or [])
    if getattr(training, "strategy", "none") != "mirrored" or not devices:
        return
    cpus = [re.fullmatch(r"/?(?:job:\w+/)?(?:replica:\d+/)?(?:task:\d+/)?(?:device:)?cpu:(\d+)", d.strip().lower())
            for d in devices]
    if not all(cpus):
        return  # GPUs (or other devices): TensorFlow's own
    from qresearch._compat import tf

    wanted = max(int(m.group(1)) for m in cpus) + 1
    physical = tf.config.list_physical_devices("CPU")[0]  # listing logical devices would initialise them
    if len(tf.config.get_logical_device_configuration(physical) or [None]) >= wanted:
        return
    try:
        tf.config.set_logical_device_configuration(physical, [tf.config.LogicalDeviceConfiguration()] * wanted)
    except RuntimeError as exc:
        if len(tf.config.list_logical_devices("CPU")) >= wanted:
            return
        raise ConfigError(f"training.devices={devices} needs {wanted} logical CPU devices, and TensorFlow already "
                          f"started with {len(tf.config.list_logical_devices('CPU'))} in this process ({exc}); run "
                          f"the job in a fresh process (hydra/launcher=submitit_local for a sweep)") from exc


def scope(strategy: Optional[Any]):
    """``strategy.scope()``, or a no-op context for None."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy: Optional[Any]) -> int:
    return int(strategy.num_replicas_in_sync) if strategy is not None else 1


def per_replica_batchnorm(model) -> list:
    """Names of ``model``'s BatchNormalization layers that normalise per replica (not the Sync kind)."""
    from qresearch._compat import keras

    sync = getattr(getattr(keras.layers, "experimental", None), "SyncBatchNormalization", None)
    return [layer.name for layer in getattr(model, "layers", [])
            if isinstance(layer, keras.layers.BatchNormalization) and not (sync and isinstance(layer, sync))]
