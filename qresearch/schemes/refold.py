"""A trained ``bn_folding: no_fold`` QAT model carried into its folded twin, for a target that deploys the fold.

Training keeps BN (batch statistics, as LSQ's and PACT's papers and tfmot's own QAT train); a runtime such as
TFLite folds BN into the layer before it. With ``g = γ/√(σ²+ε)`` per output channel (``folding.py``), ``Q(W)·g``
lies on the grid of step ``s·|g|`` where ``Q(W)`` lies on step ``s``: the same integers, negated where ``g < 0``
(which a symmetric narrow-range grid holds). So a weight grid per output channel folds exactly.

The twin is the float model built with ``bn_folding: fold`` and a min-max weight quantizer (``FOLDED_WEIGHTS``)
on each layer a BN folds into; ``carry_trained_state`` then gives it:

- each folded layer: the kernel ``Q(W)·g`` and bias ``β + (b-μ)·g`` (``folding.fold_weights``), and the range
  the trained quantizer hands FakeQuant times ``|g|`` (symmetric grids) or times ``g``, ends swapped where
  ``g < 0`` (asymmetric ones);
- a ``ChannelAffine`` (a BN no layer absorbs, made integer under ``quantize_ops: all``): the BN's affine on its
  own min-max range (one value per channel: exact per channel);
- every other layer weight and quantizer variable, by layer and role. A folded layer's output quantizer is the
  BN's where the BN carried it.

A per-tensor grid does not fold exactly (``Q(W)·g`` is on no one grid): that layer's folded kernel is quantized on
its own min-max range. The report gives, per folded layer, the largest change of a weight in steps of its new
grid: 0 where the integers are the trained ones.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping

import numpy as np

from qresearch._compat import keras, tf
from qresearch.errors import ConfigError
from qresearch.kernels.grid import fake_quant_range, grid_of
from qresearch.schemes.bn_reestimate import batch_norm_layers
from qresearch.schemes.folding import affine_weights, bn_affine, fold_weights
from qresearch.schemes.layers import layer_spec
from qresearch.schemes.transfer import own_weights_by_path
from qresearch.schemes.wrappers import ChannelAffine, QuantizeInput, QuantizeWrapper

#: The weight quantizer of a folded layer in the twin: it holds a range and quantizes with it in inference.
FOLDED_WEIGHTS = {"quantizer": "minmax", "range_tracking": "last_value", "init": "paper"}
#: A weight whose folded value moved by more than this many steps of its new grid is reported as requantized.
EXACT_STEPS = 1e-3


def _label(name: str) -> str:
    return f"fold_for_deployment: layer {name!r}"


def wrappers_by_inner(model) -> Dict[str, Any]:
    """qresearch's wrappers of a QAT model by the name of the layer they wrap."""
    return {layer.layer.name: layer for layer in model.layers if isinstance(layer, QuantizeWrapper)}


def _weight_entry(wrapper, attr: str):
    """``(weight, quantizer, its variables)`` of the wrapper's weight ``attr``, or None (left float)."""
    attrs = list(wrapper.quantize_config.weights)
    return wrapper._weight_vars[attrs.index(attr)] if attr in attrs else None


def _quantized_weight(wrapper):
    """The entry (``_weight_entry``) of the weight the layer's fold rule scales."""
    return _weight_entry(wrapper, layer_spec(wrapper.layer).fold[0])


def has_quantized_fold_weight(wrapper) -> bool:
    """Whether the weight ``wrapper``'s fold rule scales is quantized (not left float)."""
    return _quantized_weight(wrapper) is not None


def trained_grid(wrapper) -> Dict[str, Any]:
    """``{bits, narrow_range, symmetric}`` of the trained grid of ``wrapper``'s folded weight: the twin's min-max
    quantizer takes them (its own role defaults, e.g. a narrow range, would clip the trained integers)."""
    weight, quantizer, qvars = _quantized_weight(wrapper)
    rng = fake_quant_range(quantizer, qvars, weight)
    if rng is None:  # not one FakeQuant call: the quantizer's own fields (the fold then re-fits the range)
        return {"bits": int(quantizer.bits), "narrow_range": bool(getattr(quantizer, "narrow_range", False)),
                "symmetric": bool(getattr(quantizer, "symmetric", True))}
    return {"bits": int(rng[2]), "narrow_range": bool(rng[3]),
            "symmetric": bool(np.all(grid_of(*rng).zero_point.numpy() == 0.0))}


def folded_weight_overrides(grids: Mapping[str, Mapping[str, Any]], affine: List[str]) -> List[dict]:
    """Scheme overrides giving each folded layer (name -> its ``trained_grid``) and each ``ChannelAffine`` the
    twin's min-max weight quantizer; granularity stays the scheme's."""
    out = [{"match": re.escape(n), "weights": dict(FOLDED_WEIGHTS, **g)} for n, g in grids.items()]
    return out + [{"match": re.escape(n), "weights": dict(FOLDED_WEIGHTS, symmetric=True)} for n in affine]


def _assign_range(quantizer, qvars, lo, hi) -> None:
    qvars["min"].assign(np.reshape(lo, qvars["min"].shape).astype(np.float32))
    qvars["max"].assign(np.reshape(hi, qvars["max"].shape).astype(np.float32))
    if "seen" in qvars:
        qvars["seen"].assign(1.0)


def _own_range(value, qvars, symmetric: bool):
    """The min-max range of ``value`` per the quantizer's channels (its parameter shape)."""
    shape = tuple(qvars["min"].shape)
    axes = qvars.get("channel_axes")
    keep = tuple(axes) if axes else ()
    reduce = tuple(i for i in range(value.ndim) if i not in keep)
    lo, hi = value.min(axis=reduce), value.max(axis=reduce)
    if symmetric:
        hi = np.maximum(-lo, hi)
        lo = -hi
    return np.reshape(lo, shape), np.reshape(hi, shape)


def _steps_moved(quantizer, qvars, value) -> float:
    """The largest change of ``value``'s entries through ``quantizer`` (inference), in steps of its grid."""
    out = quantizer(tf.constant(value), False, weights=qvars).numpy()
    rng = fake_quant_range(quantizer, qvars, tf.constant(value))
    scale = grid_of(*rng).scale.numpy().astype(np.float32) if rng is not None else np.float32(1.0)
    scale = np.asarray(quantizer.broadcast(tf.constant(scale), tf.constant(value), qvars.get("channel_axes")))
    return float(np.max(np.abs(out - value) / np.maximum(scale, np.finfo(np.float32).tiny))) if value.size else 0.0


def _fold_layer(src, dst, bn, symmetric: bool) -> float:
    """Set the twin's folded layer ``dst`` from the trained ``src`` and its BN; returns the steps moved."""
    attr, _ = layer_spec(src.layer).fold
    trained = _quantized_weight(src)
    weight = trained[1](trained[0], False, weights=trained[2]).numpy() if trained is not None else None
    values = fold_weights(src.layer, bn, layer_spec(src.layer).fold, weight=weight)
    getattr(dst.layer, attr).assign(values[attr])
    dst.layer.bias.assign(values["bias"])
    target = _quantized_weight(dst)
    if trained is None or target is None:
        return 0.0
    _, quantizer, qvars = target
    rng = fake_quant_range(trained[1], trained[2], trained[0])
    g = bn_affine(bn)[0]   # γ/√(σ²+ε) per channel
    if rng is not None and np.size(rng[0]) == g.size:
        lo, hi = (np.asarray(v, np.float64) for v in rng[:2])
        gg = np.reshape(g, lo.shape).astype(np.float64)
        if symmetric:  # zero point 0: the positive end sets the step (ops.symmetric_range), the integers flip sign
            hi = hi * np.abs(gg)
            lo = -hi
        else:
            lo, hi = np.where(gg >= 0, lo * gg, hi * gg), np.where(gg >= 0, hi * gg, lo * gg)
    else:  # a per-tensor grid: Q(W)·g is on no one grid, so the folded kernel gets its own range
        lo, hi = _own_range(values[attr], qvars, symmetric)
    _assign_range(quantizer, qvars, lo, hi)
    return _steps_moved(quantizer, qvars, values[attr])


def _affine_layer(bn, dst) -> float:
    """The twin's ``ChannelAffine`` for a BN the trained model kept in float: its affine, on its own range."""
    kernel, bias = affine_weights(bn)
    dst.layer.depthwise_kernel.assign(kernel)
    dst.layer.bias.assign(bias)
    target = _weight_entry(dst, "depthwise_kernel")
    if target is None:
        return 0.0
    _, quantizer, qvars = target
    _assign_range(quantizer, qvars, *_own_range(kernel, qvars, symmetric=True))
    return _steps_moved(quantizer, qvars, kernel)


def quantizer_roles(layer) -> Dict[str, Mapping[str, Any]]:
    """A qresearch layer's quantizer variables by role: ``weights:<attr>``, ``activation:<attr>:<pre|inner|post>``,
    ``output``, ``inner`` (``LayerSpec.split``), ``input`` (a ``QuantizeInput``)."""
    if isinstance(layer, QuantizeInput):
        return {"input": layer.quantizer_vars}
    roles: Dict[str, Mapping[str, Any]] = {}
    if not isinstance(layer, QuantizeWrapper):
        return roles
    for attr, (_, _, qvars) in zip(layer.quantize_config.weights, layer._weight_vars):
        roles[f"weights:{attr}"] = qvars
    for attr, built in layer._activation_vars.items():
        for where, (_, qvars) in built.items():
            roles[f"activation:{attr}:{where}"] = qvars
    if layer._output_quantizers:
        roles["output"] = layer._output_quantizer_vars
    if layer.quantize_config.inner is not None:
        roles["inner"] = layer._inner_quantizer_vars
    return roles


def _copy_vars(src: Mapping[str, Any], dst: Mapping[str, Any], where: str) -> None:
    for key, var in dst.items():
        if not isinstance(var, tf.Variable):
            continue
        if key not in src or tuple(src[key].shape) != tuple(var.shape):
            raise ConfigError(f"{where}: the trained model has no quantizer variable {key!r} of shape "
                              f"{tuple(var.shape)}; fold_for_deployment needs the float model the QAT model was "
                              "quantized from, with the same scheme")
        var.assign(src[key])


def _copy_weights(src, dst, where: str) -> None:
    mine, theirs = own_weights_by_path(src), own_weights_by_path(dst)
    shapes = {k: tuple(w.shape) for k, w in mine.items()}
    if shapes != {k: tuple(w.shape) for k, w in theirs.items()}:
        raise ConfigError(f"{where}: its weights {sorted(theirs)} do not match the trained model's {shapes}; "
                          "fold_for_deployment needs the float model the QAT model was quantized from")
    for key, var in theirs.items():
        var.assign(mine[key])
    dst.finalize_state()   # constants computed from weights (Normalization's mean and variance)


def _copy_all(src, dst, where: str) -> None:
    values = src.get_weights()
    if [np.shape(v) for v in values] != [tuple(w.shape) for w in dst.weights]:
        raise ConfigError(f"{where}: its weights do not match the trained model's; fold_for_deployment needs the "
                          "float model the QAT model was quantized from")
    dst.set_weights(values)
    dst.finalize_state()


def _carry_roles(layer, given_for, where: str) -> None:
    """Every quantizer role of the twin's ``layer`` but its weights, from ``given_for(role)`` (None: missing)."""
    for role, qvars in quantizer_roles(layer).items():
        if role.startswith("weights:"):
            continue
        given = given_for(role)
        if given is None:
            raise ConfigError(f"{where}: the trained model has no {role} quantizer for it")
        _copy_vars(given, qvars, f"{where} ({role})")


def _roles_of(layer) -> Dict[str, Mapping[str, Any]]:
    return quantizer_roles(layer) if layer is not None else {}


def carry_trained_state(trained, twin, folded: Mapping[str, str], grids: Mapping[str, Mapping[str, Any]]
                        ) -> Dict[str, Any]:
    """Give ``twin`` (built with ``bn_folding: fold``) the state of ``trained`` (``no_fold``); ``folded`` maps each
    layer a BN folds into to that BN. Returns ``{"folded": {layer: bn}, "affine": [...], "steps_moved":
    {layer: steps}, "requantized": [layers whose integers moved]}``."""
    bns = {bn.name: bn for bn in batch_norm_layers(trained)}
    sources = {layer.name: layer for layer in trained.layers}
    src_wrappers = wrappers_by_inner(trained)
    # a tensor the BN produced in the trained model is the folded layer's in the twin (its input quantizers)
    alias = {f"quantize_{conv}": f"quantize_{bn}" for conv, bn in folded.items()}
    moved: Dict[str, float] = {}
    affine: List[str] = []
    for layer in twin.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        where = _label(layer.name)
        inner_name = getattr(getattr(layer, "layer", None), "name", None)
        if isinstance(layer, QuantizeWrapper) and inner_name in folded:
            src, bn_name = src_wrappers.get(inner_name), folded[inner_name]
            if src is None:
                raise ConfigError(f"{where}: the trained model has no qresearch wrapper of {inner_name!r} (a layer "
                                  "with its own QuantizeConfig cannot be folded at deployment; train it with "
                                  "bn_folding: fold)")
            moved[inner_name] = _fold_layer(src, layer, bns[bn_name], grids.get(inner_name, {}).get("symmetric", True))
            # the output quantizer sits on the conv, or on its BN where the BN fed an op that needs its own range
            bn_roles = _roles_of(src_wrappers.get(bn_name))
            _carry_roles(layer, lambda role: _roles_of(src).get(role) or bn_roles.get(role), where)
        elif isinstance(layer, QuantizeWrapper) and isinstance(layer.layer, ChannelAffine):
            if inner_name not in bns:
                raise ConfigError(f"{where}: the trained model has no BatchNormalization {inner_name!r}")
            moved[inner_name] = _affine_layer(bns[inner_name], layer)
            affine.append(inner_name)
            _carry_roles(layer, _roles_of(src_wrappers.get(inner_name)).get, where)
        else:
            src = sources.get(layer.name) or sources.get(alias.get(layer.name, ""))
            if src is None:
                raise ConfigError(f"{where}: the trained model has no layer of that name; fold_for_deployment "
                                  "needs the float model the QAT model was quantized from, with the same scheme")
            _carry_same(src, layer, where)
    return {"folded": dict(folded), "affine": affine, "steps_moved": moved,
            "requantized": sorted(n for n, s in moved.items() if s > EXACT_STEPS)}


def _carry_same(src, layer, where: str) -> None:
    """A layer the fold leaves as it was: its weights and every quantizer state."""
    if not isinstance(layer, (QuantizeWrapper, QuantizeInput)):
        if layer.weights:  # a plain layer, or a user's QuantizeConfig wrapper: all its state, in order
            _copy_all(src, layer, where)
        return
    _copy_weights(src, layer, where)
    theirs = quantizer_roles(src)
    for role, qvars in quantizer_roles(layer).items():
        if role not in theirs:
            raise ConfigError(f"{where}: the trained model has no {role} quantizer there")
        _copy_vars(theirs[role], qvars, f"{where} ({role})")
