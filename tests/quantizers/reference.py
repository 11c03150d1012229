"""Independent numpy references, written from the papers and the TF kernel source.

Nothing here imports qresearch: each formula is re-derived so a bug in the
package cannot hide in its own reference. All arithmetic is float32, as in TF.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32


def grid(bits, signed, narrow=False):
    """(Qn, Qp) of the papers: integers in [-Qn, Qp]."""
    if signed:
        qp = 2 ** (bits - 1) - 1
        return (qp if narrow else qp + 1), qp
    return 0, (2**bits - 2 if narrow else 2**bits - 1)


def channel_reduce(x, axes):
    """Axes to reduce over for per-channel statistics (None = per tensor)."""
    return None if axes is None else tuple(a for a in range(x.ndim) if a not in axes)


def bcast(p, x, axes):
    p = np.asarray(p, dtype=f32)
    if axes is None:
        return p
    return p.reshape([x.shape[a] if a in axes else 1 for a in range(x.ndim)])


# --------------------------------------------------------------- TF FakeQuant
def nudge(rmin, rmax, bits, narrow):
    """``Nudge`` of tensorflow/core/kernels/fake_quant_ops_functor.h, in float32."""
    qmin, qmax = f32(1 if narrow else 0), f32(2**bits - 1)
    rmin, rmax = f32(rmin), f32(rmax)
    scale = (rmax - rmin) / (qmax - qmin)
    inv_scale = (qmax - qmin) / (rmax - rmin)
    zp_from_min = qmin - rmin / scale
    if zp_from_min < qmin:
        zp = qmin
    elif zp_from_min > qmax:
        zp = qmax
    else:  # std::round: half away from zero (zp_from_min >= 0 here); + 0.5 in float64 is exact, where
        # float32 would round 0.49999997 + 0.5 up to 1
        zp = f32(np.floor(np.float64(zp_from_min) + 0.5))
    return (qmin - zp) * scale, (qmax - zp) * scale, scale, inv_scale


def fake_quant(x, rmin, rmax, bits, narrow, per_channel_kernel=False):
    """TF FakeQuantWithMinMaxVars (per-tensor: divides by the scale) or the
    PerChannel kernel (multiplies by the recomputed inverse scale)."""
    x = np.asarray(x, dtype=f32)
    if f32(rmin) == 0 and f32(rmax) == 0:
        return np.zeros_like(x)
    nmin, nmax, scale, inv = nudge(rmin, rmax, bits, narrow)
    quant_zero = np.floor(-nmin * inv + f32(0.5))
    xc = np.minimum(np.maximum(x, nmin), nmax)  # cwiseMin(max).cwiseMax(min)
    shifted = xc - nmin
    idx = shifted * inv if per_channel_kernel else shifted / scale
    return (np.floor(idx - quant_zero + f32(0.5)) * scale).astype(f32)


def fake_quant_per_channel(x, rmins, rmaxs, bits, narrow, axis=-1):
    """Per-channel FakeQuant along one ``axis``."""
    x = np.moveaxis(np.asarray(x, dtype=f32), axis, -1)
    out = np.stack([fake_quant(x[..., c], rmins[c], rmaxs[c], bits, narrow, per_channel_kernel=True)
                    for c in range(x.shape[-1])], axis=-1)
    return np.moveaxis(out, -1, axis)


def mse_fraction_errors(x, rmin, rmax, bits, narrow, candidates):
    """``Σ (x - Q_f(x))²`` for f = K/K, (K-1)/K, ..., 1/K, on the plain grid of ``f·[rmin, rmax]`` (round half to
    even, no nudging): the errors a per-step MSE range search compares."""
    x = np.asarray(x, dtype=np.float64)
    levels = 2**bits - (2 if narrow else 1)
    errors = []
    for k in range(candidates, 0, -1):
        lo, hi = k / candidates * rmin, k / candidates * rmax
        step = max((hi - lo) / levels, 1e-8)
        errors.append(np.sum((np.clip(np.round((x - lo) / step), 0, levels) * step + lo - x) ** 2))
    return np.array(errors)


def mse_fraction(x, rmin, rmax, bits, narrow, candidates=20):
    """The fraction k/K of ``[rmin, rmax]`` with the least ``mse_fraction_errors`` (a tie keeps the larger range)."""
    return 1 - np.argmin(mse_fraction_errors(x, rmin, rmax, bits, narrow, candidates)) / candidates


def fake_quant_ste_mask(x, rmin, rmax, bits, narrow):
    nmin, nmax, _, _ = nudge(rmin, rmax, bits, narrow)
    return ((x >= nmin) & (x <= nmax)).astype(f32)


# ------------------------------------------------------------------------ LSQ
def lsq_init(x, qp, axes=None):
    """Esser et al. 2020 §2.1: s0 = 2<|x|>/sqrt(Qp)."""
    return (f32(2.0) * np.mean(np.abs(x), axis=channel_reduce(x, axes)) / f32(np.sqrt(qp))).astype(f32)


def lsq_forward(x, s, qn, qp, beta=0.0):
    """LSQ eq. 1-2 / LSQ+ eq. 3: round(clip((x-β)/s, -Qn, Qp))·s + β (round half to even)."""
    v = np.clip((x - beta) / s, -qn, qp)
    return (np.round(v) * s + beta).astype(f32)


def lsq_step_grad(x, s, qn, qp, beta=0.0):
    """∂v/∂s (LSQ eq. 3, LSQ+ eq. 4): -u + round(u) inside, -Qn below, Qp above; u = (x-β)/s."""
    u = (x - beta) / s
    return np.where(u <= -qn, -qn, np.where(u >= qp, qp, np.round(u) - u)).astype(f32)


def lsq_offset_grad(x, s, qn, qp, beta):
    """∂v/∂β (LSQ+ eq. 5): 0 inside the grid, 1 where clipped."""
    u = (x - beta) / s
    return ((u <= -qn) | (u >= qp)).astype(f32)


def lsq_input_grad(x, s, qn, qp, beta=0.0):
    """Straight-through: 1 inside the range, 0 where clipped."""
    u = (x - beta) / s
    return ((u > -qn) & (u < qp)).astype(f32)


def lsq_g(n, qp):
    """LSQ §2.2: g = 1/sqrt(N·Qp)."""
    return 1.0 / np.sqrt(n * qp)


# ----------------------------------------------------------------------- PACT
def pact_forward(x, alpha, bits):
    """Choi et al. 2018 eq. 1-2: y = 0.5(|x| - |x-α| + α); round(y(2^k-1)/α)·α/(2^k-1)."""
    y = f32(0.5) * (np.abs(x) - np.abs(x - alpha) + alpha)
    levels = f32(2**bits - 1)
    return (np.round(y * levels / alpha) * alpha / levels).astype(f32)


def pact_alpha_grad(x, alpha):
    """PACT eq. 3: ∂y_q/∂α = 1 for x >= α, else 0."""
    return (x >= alpha).astype(f32)


def pact_input_grad(x, alpha):
    return ((x > 0) & (x < alpha)).astype(f32)


# --------------------------------------------------------------------- DoReFa
def quantize_k(r, k):
    n = f32(2**k - 1)
    return (np.round(r * n) / n).astype(f32)


def dorefa_weights(w, k, axes=None):
    """Zhou et al. 2016 eq. 9: 2·quantize_k(tanh(w)/(2 max|tanh(w)|) + 1/2) - 1."""
    t = np.tanh(w).astype(f32)
    m = bcast(np.max(np.abs(t), axis=channel_reduce(w, axes)), w, axes)
    return (f32(2) * quantize_k(t / (f32(2) * m) + f32(0.5), k) - f32(1)).astype(f32)


def dorefa_weights_grad(w, r, axes=None):
    """d/dw of Σ r·w_q with STE through quantize_k, including the max's gradient:
    (1 - t_i²)·(r_i/M - [i = argmax]·sign(t_i)·Σ_j r_j t_j / M²)."""
    t = np.tanh(w).astype(np.float64)
    red = channel_reduce(w, axes)
    a = np.abs(t)
    m = np.max(a, axis=red, keepdims=True)
    is_max = (a == m).astype(np.float64)
    s = np.sum(r * t, axis=red, keepdims=True)
    return (1 - t**2) * (r / m - is_max * np.sign(t) * s / m**2)


def dorefa_activations(x, k):
    """DoReFa §2.6: quantize_k(clip(x, 0, 1))."""
    return quantize_k(np.clip(x, 0, 1), k)


# ----------------------------------------------------------------- power of 2
def pot_scale(max_abs, qp, rounding="ceil"):
    e = np.log2(max_abs / qp)
    return f32(2.0) ** (np.ceil(e) if rounding == "ceil" else np.round(e))


def pot_mse_scale(x, qn, qp, channel_axis=None):
    """Of 2^ceil(log2(max|x|/Qp)) and half of it, the one with the smaller squared quantization error (per channel
    along ``channel_axis``, the last axis here)."""
    if channel_axis is None:
        upper = pot_scale(np.abs(x).max(), qp)
        errs = [np.sum((np.clip(np.round(x / s), -qn, qp) * s - x) ** 2) for s in (upper / 2, upper)]
        return upper / 2 if errs[0] < errs[1] else upper
    return np.array([pot_mse_scale(x[..., c], qn, qp) for c in range(x.shape[-1])], f32)


def pot_forward(x, scale, qn, qp):
    """Symmetric grid with a power-of-two step; half-up rounding as TF FakeQuant."""
    return (np.clip(np.floor(x / scale + f32(0.5)), -qn, qp) * scale).astype(f32)
