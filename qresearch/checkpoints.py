"""Resumable training: a phase killed mid-epoch resumes from its last checkpoint with the same result.

On when a phase sets ``checkpoint_every`` (batches) and the run has a cache folder. The phase is then
trained one epoch per ``fit`` call, and epoch ``e`` reads ``dataset.train_pipeline(seed=epoch_seed(seed,
e))``: its order depends on (seed, epoch) only, not on how many epochs this process has run, so a
resumed process reads the same batches (the first ``b`` of the interrupted epoch skipped). Every
``checkpoint_every`` batches and at each epoch's end, a ``tf.train.Checkpoint`` of the model's
variables (weights, BatchNorm statistics, quantizer ranges and steps) and the optimizer's (slots,
iteration count, hence the learning-rate schedule) is written with ``state.json``: epoch, batch and
the history so far. The folder is removed when the phase completes.

Exact for models without random layers (a Dropout's masks come from Keras' generator, which is not
saved). The per-epoch seeds make a checkpointed run's data order differ from an uncheckpointed one's,
like another seed: ``checkpoint_every`` is part of the phase config, hence of the cache key and hash.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from qresearch._compat import keras, tf
from qresearch.results import write_json_atomic

log = logging.getLogger(__name__)
STATE = "state.json"


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle and augmentation seed of one epoch (fits tf.data's int64 seeds)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31 - 1)


class _Saver(keras.callbacks.Callback):
    """Writes a checkpoint every ``every`` batches: (epoch, batches done in it, history so far)."""

    def __init__(self, save, epoch: int, first_batch: int, every: int):
        super().__init__()
        self.save, self.epoch, self.done, self.every = save, epoch, first_batch, int(every)

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done % self.every == 0:
            self.save(self.epoch, self.done)


def fit(model, dataset, batch_size: int, steps_per_epoch: Optional[int], epochs: int, seed: int, folder: str,
        every: int, callbacks: List[Any], verbose: int, identity: str = "") -> Dict[str, List[float]]:
    """Train ``model`` (compiled) for ``epochs`` with checkpoints in ``folder``; returns the history.

    ``identity``: what the checkpoint belongs to (a cache key); a folder holding another's is ignored."""
    root = Path(folder)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    history: Dict[str, List[float]] = {}
    start_epoch, skip = 0, 0
    state_file = root / STATE
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("identity") == identity:
            model.optimizer.build(model.trainable_variables)  # slots must exist to be restored into
            # (written with ``write``: no save counter, whose absence alone would fail a strict check)
            ckpt.restore(str(root / state["checkpoint"])).expect_partial()
            start_epoch, skip, history = int(state["epoch"]), int(state["batch"]), state["history"]
            log.info("resuming from %s: epoch %d, after batch %d", root, start_epoch + 1, skip)
        else:
            log.warning("checkpoint folder %s belongs to another run; starting afresh", root)
            shutil.rmtree(root, ignore_errors=True)

    written = [0]

    def save(epoch: int, batch: int) -> None:
        # two file sets in turn, the state (written atomically, last) names the complete one: a kill
        # while writing leaves the previous checkpoint intact
        written[0] += 1
        prefix = ckpt.write(str(root / f"ckpt-{written[0] % 2}"))
        write_json_atomic(state_file, {"identity": identity, "epoch": epoch, "batch": batch,
                                       "checkpoint": Path(prefix).name, "history": history})

    root.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, int(epochs)):
        ds = dataset.train_pipeline(int(batch_size), seed=epoch_seed(seed, epoch), steps_per_epoch=steps_per_epoch)
        first = skip if epoch == start_epoch else 0
        if first:
            ds = ds.skip(first)
        saver = _Saver(save, epoch, first, every)
        out = model.fit(ds, initial_epoch=epoch, epochs=epoch + 1, callbacks=[*callbacks, saver],
                        verbose=verbose).history
        for k, v in out.items():
            history.setdefault(k, []).extend(float(x) for x in v)
        save(epoch + 1, 0)
    shutil.rmtree(root, ignore_errors=True)  # completed: nothing to resume
    return history
