"""Verified deployment to TFLite: convert a QAT model, run it with integer I/O, compare.

``verify(qat_model, target, x, y)`` converts the model's serving function (what
``TFLiteConverter.from_keras_model`` would convert) to an integer-only model, runs it with LiteRT's
*builtin* kernels (no XNNPACK delegate: the reference rounding of tflite-int8-spec.md §2.2), feeds
inputs quantized by the spec's QUANTIZE rule (``clamp(round_half_away(x / S) + Z)``), and compares
with the QAT model in inference mode.
The structure of the flatbuffer is checked against the target (see ``inspect_model``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from qresearch.errors import ConfigError
from qresearch.hardware.bias_widening import widen_biases
from qresearch.hardware.converter_log import held_stderr
from qresearch.hardware.fixed_output_params import pin_outputs
from qresearch.hardware.input_requantize import restore_input_quantizes
from qresearch.hardware import reference_limits, unconvertible, xnnpack_limits
from qresearch.hardware.flatbuffer_edits import edited
from qresearch.hardware.errors import KernelSetError, NoRuntimeError
from qresearch.hardware.registry import get as get_target
from qresearch.hardware.structure import inspect_model

_log = logging.getLogger(__name__)

KERNELS = "builtin_without_default_delegates"
# Kernel sets (LiteRT op resolvers). The default is the contract: TFLite's builtin kernels with the
# reference double rounding (tflite-int8-spec.md §2.2). "builtin" adds the XNNPACK delegate (float32
# requantization, as most phones run it); "builtin_ref" the unoptimized reference kernels.
KERNEL_SETS = {"builtin_without_default_delegates": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "builtin": "BUILTIN",
               "builtin_ref": "BUILTIN_REF"}
# The simulation's integer-kernel emulation (qresearch/kernels) that matches each kernel set.
EMULATIONS = {"builtin_without_default_delegates": "tflite_builtin", "builtin_ref": "tflite_reference",
              "builtin": "xnnpack"}


def _require_runtime(target):
    if not target.has_runtime:
        raise NoRuntimeError(
            f"target {target.name!r} has no runtime here (runtime: none): it can be simulated and its "
            f"constraints checked, but not deployed or verified. Record the deployed result as 'n/a'; "
            f"targets that deploy: {', '.join(n for n in _runtime_targets())}.")


def _runtime_targets() -> List[str]:
    from qresearch.hardware.registry import TARGETS

    return [n for n in TARGETS.names() if TARGETS.get(n).has_runtime]


def model_input(model, x) -> np.ndarray:
    """``x`` as ``model`` reads it: indices (an integer ``Input``, e.g. token ids read by an ``Embedding``) as that
    integer type, everything else as float32. Indices given as floats must be whole numbers."""
    inputs = getattr(model, "inputs", None) or []
    dtype = inputs[0].dtype if len(inputs) == 1 else None
    if dtype is None or not dtype.is_integer:
        return np.asarray(x, np.float32)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer) and not np.array_equal(x, np.round(x)):
        raise ConfigError(f"the model's input is {dtype.name} (indices) but x holds fractional values: "
                          "pass the indices themselves")
    return x.astype(dtype.as_numpy_dtype, copy=False)


def _representative(x, model, n: int = 64):
    sample = model_input(model, x[:n])

    def gen():
        for i in range(len(sample)):
            yield [sample[i:i + 1]]

    return gen


def convert(qat_model, target, representative_data=None) -> bytes:
    """The integer-only ``.tflite`` flatbuffer of ``qat_model`` for a TFLite ``target``.

    int8: ``optimizations=[DEFAULT]`` and int8 I/O; ``supported_ops`` is left at its default
    (TFLITE_BUILTINS_INT8 without a representative dataset raises in TF 2.21 for QAT models) and
    the ops are checked afterwards by ``inspect_model``. 16x8: the
    EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 op set with int16 I/O and no
    representative dataset (with one, TF 2.21 runs its post-training calibrator over the already
    quantized graph and fails: "Quantization to 16x8-bit not yet supported for op: 'DEQUANTIZE'"); its int32 conv
    biases are then stored as the int64 the 16x8 kernels read (``bias_widening.py``), and its LOGISTIC outputs
    with the parameters its kernel computes in (``fixed_output_params.py``).
    ``representative_data`` is only for models whose FakeQuant ranges do not cover every tensor.
    """
    from qresearch._compat import tf

    target = get_target(target)
    _require_runtime(target)
    converter = _converter(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    facts = target.runtime_facts
    if facts.converter_ops is not None:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, facts.converter_ops)]
    converter.inference_input_type = converter.inference_output_type = tf.as_dtype(facts.activation_dtype)
    if representative_data is not None:
        converter.representative_dataset = _representative(representative_data, qat_model)
    failure = None
    with held_stderr() as log:
        try:
            flatbuffer = converter.convert()
        except Exception as err:
            failure = err
    refused = unconvertible.refused_layers(qat_model, facts) if failure is not None else []
    if not refused:
        log.replay()
    if failure is not None:
        if refused:
            raise ConfigError(
                f"{target.name}: the TFLite converter (TF {tf.__version__}) cannot convert this QAT model "
                f"({_first_error_line(failure)}). {unconvertible.describe(refused)} (The converter's own "
                f"log: {log.save()}.)") from failure
        raise failure
    edits = []   # what the converter writes otherwise than the runtime's kernels read (flatbuffer_edits.py)
    readers = _input_readers(qat_model)
    if len(readers) > 1:   # the QUANTIZE ops the converter can drop where several layers read the input
        edits.append(lambda model: restore_input_quantizes(model, _input_grid(readers)))   # (input_requantize.py)
    if facts.conv_bias_dtype == "int64":   # 16x8: the converter stores conv biases as int32 (bias_widening.py)
        edits.append(widen_biases)
    if facts.pins_fixed_outputs:   # 16x8: LOGISTIC's output stored at 1/65536 (fixed_output_params.py)
        edits.append(lambda model: pin_outputs(model, target.fixed_output_params, facts.activation_dtype))
    try:
        flatbuffer = edited(flatbuffer, *edits)[0] if edits else flatbuffer
    except ValueError as err:
        raise ConfigError(f"{target.name}: {err}. Fix: give the layers reading the model input one input quantizer "
                          "(the same activation spec for them, by a scheme override), or deploy with float I/O "
                          "(TFLiteConverter, inference_input_type=tf.float32).") from err
    _check_loads(flatbuffer, qat_model, target)
    return flatbuffer


def _check_loads(flatbuffer: bytes, qat_model, target) -> None:
    """A model with a layer the runtime refuses can convert and then fail when the interpreter prepares it (16x8
    L2_NORMALIZATION): load it, and say which layer and the fix rather than the kernel's check."""
    refused = unconvertible.refused_layers(qat_model, target.runtime_facts)
    if not refused:
        return
    try:
        make_interpreter(flatbuffer).allocate_tensors()
    except RuntimeError as err:
        reason = next((ln.strip() for ln in str(err).splitlines() if "failed to prepare" in ln), str(err))
        raise ConfigError(f"{target.name}: the converted model does not load in LiteRT ({reason}). "
                          f"{unconvertible.describe(refused)}") from err


def _input_readers(qat_model) -> list:
    """The layers of ``qat_model`` that read its one input (none for a model with several inputs)."""
    from qresearch._compat import tf

    inputs = getattr(qat_model, "inputs", None) or []
    if len(inputs) != 1:
        return []
    return [layer for layer in qat_model.layers
            if any(t is inputs[0] for node in layer._inbound_nodes for t in tf.nest.flatten(node.input_tensors))]


def _input_grid(readers):
    """(scale, zero point) of the grid the one ``QuantizeInput`` among the input's ``readers`` puts it on; None if
    there is not exactly one."""
    from qresearch.kernels.grid import grid_of_quantizer
    from qresearch.schemes import QuantizeInput

    readers = [layer for layer in readers if isinstance(layer, QuantizeInput)]
    grid = grid_of_quantizer(readers[0].quantizer, readers[0].quantizer_vars) if len(readers) == 1 else None
    return None if grid is None else (float(grid.scale.numpy()), int(grid.zero_point.numpy()))


def warn_unconvertible(qat_model, target) -> None:
    """Say at ``quantize`` time, before any training, what ``convert`` will refuse, and what it will leave in float
    on an integer-only runtime (``unconvertible.py``)."""
    if not target.has_runtime:
        return
    facts = target.runtime_facts
    refused = unconvertible.refused_layers(qat_model, facts)
    if refused:
        _log.warning("%s: the model trains and simulates, but deploying and verify will fail: %s", target.name,
                     unconvertible.describe(refused))
    kept = unconvertible.float_kept_layers(qat_model, facts, refused)
    if kept:
        _log.warning("%s: the model deploys, but not integer-only (verify lists the float ops; the simulation runs "
                     "them in float as the interpreter does): %s", target.name, unconvertible.describe(kept))


def _first_error_line(err: Exception) -> str:
    """The converter's own message, without the MLIR location dump that precedes it."""
    lines = [ln.strip() for ln in str(err).splitlines() if "error:" in ln]
    return lines[0].split("error:", 1)[1].strip() if lines else type(err).__name__


def _converter(model):
    """A TFLite converter of ``model(x, training=False)``, traced once in export mode (the plain FakeQuant
    graph, not the integer-kernel emulation: qresearch/kernels ``exporting``).

    ``TFLiteConverter.from_keras_model`` saves the whole Keras model to a temporary SavedModel first, and
    Keras' saving traces every layer's call with and without ``training`` (measured: ~80% of a
    MobileNet-like's conversion). The serving function alone, with the model's variables, gives the same
    flatbuffer (same ops, tensors, quantization and values: tests/hardware/test_converter_flow.py) with the
    same signature names. A model without symbolic inputs (subclassed, never called functionally) goes
    through ``from_keras_model``."""
    from qresearch._compat import tf
    from qresearch.kernels import export_mode

    if getattr(model, "inputs", None) is None:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=name) for t, name in zip(model.inputs, model.input_names)]
    structure = model.input

    @tf.function(input_signature=specs)
    def serving_default(*inputs):
        outputs = model(tf.nest.pack_sequence_as(structure, list(inputs)), training=False)
        return dict(zip(model.output_names, tf.nest.flatten(outputs)))

    with export_mode():
        function = serving_default.get_concrete_function()
    holder = tf.Module()   # what the converter's SavedModel step saves: the variables the function reads
    holder.model_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder)


def make_interpreter(tflite_model: bytes, kernels: str = KERNELS):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernels not in KERNEL_SETS:
        raise ConfigError(f"kernels must be one of {sorted(KERNEL_SETS)}, got {kernels!r}")
    interpreter = Interpreter(model_content=tflite_model,
                              experimental_op_resolver_type=getattr(OpResolverType, KERNEL_SETS[kernels]))
    if kernels == "builtin_ref":    # what would abort the process when the interpreter prepares it
        culprits = reference_limits.aborting_ops(interpreter)
        if culprits:
            raise KernelSetError(reference_limits.failure_message(culprits))
    return interpreter


def round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_input(x, scale: float, zero_point: int, dtype) -> np.ndarray:
    """TFLite QUANTIZE: ``clamp(round_half_away(x / S) + Z)`` with a float32 division."""
    info = np.iinfo(dtype)
    q = round_half_away(np.asarray(x, np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def run_tflite(tflite_model: bytes, x, batch_size: int = 256, kernels: str = KERNELS):
    """Run the model on ``x`` (float, quantized here by the input's (S, Z); or indices, for an input the converter
    left integer with no scale, fed as they are); returns (integer outputs, input (S, Z), output (S, Z)).
    Raises ``KernelSetError`` where the XNNPACK delegate cannot prepare the model, or where the reference kernels
    would abort the process on it, saying which ops and why."""
    try:
        return _run_tflite(tflite_model, x, batch_size, kernels)
    except RuntimeError as error:
        if kernels != "builtin" or "XNNPACK" not in str(error):
            raise
        reference = make_interpreter(tflite_model, KERNELS)
        reference.allocate_tensors()
        raise KernelSetError(xnnpack_limits.failure_message(reference, error)) from error


def _run_tflite(tflite_model: bytes, x, batch_size: int, kernels: str):
    interp = make_interpreter(tflite_model, kernels)
    inp = interp.get_input_details()
    out = interp.get_output_details()
    if len(inp) != 1 or len(out) != 1:
        raise ConfigError(f"verify handles models with one input and one output; this one has "
                          f"{len(inp)} inputs and {len(out)} outputs")
    inp, out = inp[0], out[0]
    in_dtype = inp["dtype"]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    x = np.asarray(x)
    indices = np.issubdtype(in_dtype, np.integer) and s_in == 0 and np.issubdtype(x.dtype, np.integer)
    if not indices and (not np.issubdtype(in_dtype, np.integer) or s_in == 0):
        raise ConfigError(f"the converted model's input is {np.dtype(in_dtype).name} with scale {s_in}: "
                          "the QAT model needs an input quantizer so the input can be integer")
    n = len(x)
    xq = x.astype(in_dtype) if indices else quantize_input(x, s_in, z_in, in_dtype)
    batch = max(1, min(batch_size, n))
    try:
        interp.resize_tensor_input(inp["index"], [batch] + list(x.shape[1:]), strict=False)
        interp.allocate_tensors()
    except Exception:  # a graph that cannot take a batch: one sample at a time
        batch = 1
        interp = make_interpreter(tflite_model, kernels)
        interp.allocate_tensors()
    try:
        return _run_batches(interp, xq, batch), (float(s_in), int(z_in)), (float(s_out), int(z_out))
    except Exception:
        if batch == 1:
            raise
    # A graph with a fixed batch somewhere (e.g. a Reshape to a constant shape): one sample at a time.
    interp = make_interpreter(tflite_model, kernels)
    interp.allocate_tensors()
    return _run_batches(interp, xq, 1), (float(s_in), int(z_in)), (float(s_out), int(z_out))


def _run_batches(interp, xq, batch):
    n = len(xq)
    inp_index = interp.get_input_details()[0]["index"]
    out_index = interp.get_output_details()[0]["index"]
    results = []
    for start in range(0, n, batch):
        chunk = xq[start:start + batch]
        m = len(chunk)
        if m < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - m, axis=0)])
        interp.set_tensor(inp_index, chunk)
        interp.invoke()
        results.append(np.array(interp.get_tensor(out_index))[:m])
    return np.concatenate(results)


def _labels(y, n_classes_hint: Optional[int] = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] > 1:
        return np.argmax(y, axis=-1)
    return y.reshape(len(y)).astype(np.int64)


def _predictions(out: np.ndarray, threshold: float) -> np.ndarray:
    out = out.reshape(len(out), -1)
    if out.shape[1] == 1:  # one unit: binary (a probability, or a logit)
        return (out[:, 0] > threshold).astype(np.int64)
    return np.argmax(out, axis=1)


def simulate(qat_model, x, batch_size: int = 256) -> np.ndarray:
    """The QAT model's outputs in inference mode (training=False), through a graph function traced once per
    model and emulation state (``kernels.traced``): the same bits as eager calls, without the emulation's
    per-call Python."""
    from qresearch._compat import tf
    from qresearch.kernels.traced import inference_function

    x = model_input(qat_model, x)
    run = inference_function(qat_model, x.shape[1:], x.dtype)
    outs = []
    for start in range(0, len(x), batch_size):
        outs.append(np.asarray(run(tf.convert_to_tensor(x[start:start + batch_size]))))
    return np.concatenate(outs)


def _emulated_kernels(qat_model, kernels: str):
    """The emulation matching ``kernels`` if the model emulates integer kernels at all, else None."""
    layers = getattr(qat_model, "layers", [])
    own = any((getattr(getattr(layer, "quantize_config", None), "info", None) or {}).get("kernels")
              or getattr(layer, "kernels", None) for layer in layers)
    return EMULATIONS[kernels] if own else None


def _warn_kept_batch_norms(qat_model, target) -> None:
    """A model trained with BN kept (``no_fold``), converted as it is: the converter folds each BN into the quantized
    weights and re-fits their ranges, so the deployed integers are not the trained ones (98.5% argmax agreement on
    the digits MobileNet-like: notes/schemes.md). ``qresearch.fold_for_deployment`` keeps them."""
    scheme = (getattr(qat_model, "qresearch_info", None) or {}).get("scheme") or {}
    if target.bn_folding == "fold" and scheme.get("bn_folding") == "no_fold":
        _log.warning("the model keeps BatchNormalization (bn_folding: no_fold): the converter folds it and re-fits the "
                     "weight ranges, so the deployed integers are not the trained ones. Fix: deploy "
                     "qresearch.fold_for_deployment(qat_model, float_model), the folded model with the trained integers")


def verify(qat_model, target, x, y, *, save_path=None, return_model: bool = False,
           batch_size: int = 256, representative_data=None, kernels: str = KERNELS,
           tflite_model: Optional[bytes] = None) -> Dict[str, Any]:
    """Deploy ``qat_model`` to ``target`` (a TFLite target) and compare with the simulation.

    Returns a dict with: deployed_accuracy, simulated_accuracy (fractions of ``y``), argmax_agreement,
    max_abs_diff_lsb and within_1lsb_fraction (|simulated - deployed| output in units of the output
    scale), model_size_bytes, integer_only, structural_issues, runtime, kernels, ops (op histogram),
    input/output (scale, zero_point), n_samples, convert_s/run_s; plus ``tflite_path`` with
    ``save_path`` and ``tflite_model`` (bytes) with ``return_model=True``.
    ``kernels``: the LiteRT kernel set (see ``KERNEL_SETS``). A model quantized for a target with
    ``kernels`` (tflite_int8) emulates integer kernels in inference; the simulation is then run with the
    emulation of this kernel set (``EMULATIONS``, reported as ``simulated_kernels``): bit-exact for the
    default and "builtin_ref" on the ops qresearch/kernels covers. With the emulation off the float
    simulation rounds once per tensor and keeps biases float, so outputs differ by a few LSB.
    ``tflite_model``: ``qat_model`` already converted for ``target`` (``convert``, or ``return_model=True`` of an
    earlier call), to check it under another kernel set without converting again.
    Raises ``NoRuntimeError`` for targets with ``runtime: none``.
    """
    target = get_target(target)
    _require_runtime(target)
    x = model_input(qat_model, x)
    if len(x) == 0:
        raise ConfigError("verify needs at least one sample")
    _warn_kept_batch_norms(qat_model, target)
    t0 = time.perf_counter()
    if tflite_model is None:
        tflite_model = convert(qat_model, target, representative_data)
    t1 = time.perf_counter()
    q_out, (s_in, z_in), (s_out, z_out) = run_tflite(tflite_model, x, batch_size, kernels)
    t2 = time.perf_counter()
    emulated = _emulated_kernels(qat_model, kernels)
    from qresearch.kernels import emulated_kernels

    with emulated_kernels(emulated):
        sim = simulate(qat_model, x, batch_size).reshape(q_out.shape)

    # A float output (the last layer left float: skipped, or not annotated) has scale 0: its values
    # are already real numbers.
    deq = (q_out.astype(np.float64) - z_out) * s_out if s_out > 0 else q_out.astype(np.float64)
    labels = _labels(y)
    # One output unit: 0.5 for probabilities (all simulated outputs in [0, 1]), else 0 for a logit.
    threshold = 0.5 if float(np.min(sim)) >= 0.0 and float(np.max(sim)) <= 1.0 else 0.0
    pred_dep, pred_sim = _predictions(deq, threshold), _predictions(sim, threshold)
    # In units of the output grid; for a float output, the plain difference.
    diff_lsb = np.abs(sim.astype(np.float64) - deq) / (s_out if s_out > 0 else 1.0)
    report = inspect_model(tflite_model, target)
    result = {
        "target": target.name,
        "runtime": target.runtime,
        "kernels": kernels,
        "simulated_kernels": emulated or "none (float fake-quant)",
        "n_samples": int(len(x)),
        "deployed_accuracy": float(np.mean(pred_dep == labels)),
        "simulated_accuracy": float(np.mean(pred_sim == labels)),
        "argmax_agreement": float(np.mean(pred_dep == pred_sim)),
        "max_abs_diff_lsb": float(diff_lsb.max()),
        "mean_abs_diff_lsb": float(diff_lsb.mean()),
        "within_1lsb_fraction": float(np.mean(diff_lsb <= 1.0 + 1e-3)),
        "model_size_bytes": int(len(tflite_model)),
        "integer_only": report["integer_only"],
        "structural_issues": report["issues"],
        "ops": report["ops"],
        "input_quantization": (s_in, z_in),
        "output_quantization": (s_out, z_out),
        "convert_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
    }
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tflite_model)
        result["tflite_path"] = str(path)
    if return_model:
        result["tflite_model"] = tflite_model
    return result
