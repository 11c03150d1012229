"""Independent numpy transcriptions of the init rules (written from the papers, not from the code)."""
import numpy as np

K = 100  # candidates k/K · max, as the rule documents


def rows(x, axis=None):
    """``x`` as rows × channels: channel axis last, flattened (one column per tensor)."""
    x = np.asarray(x, np.float64)
    if axis is None:
        return x.reshape(-1, 1)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def sym_error(x, c, qn, qp):
    """Σ (x - Q(x))² for the grid [-qn, qp]·(c/qp), per column."""
    s = np.maximum(c / qp, 1e-12)
    q = np.clip(np.round(x / s), -qn, qp) * s
    return ((x - q) ** 2).sum(0)


def asym_error(x, lo, hi, qn, qp):
    s = np.maximum((hi - lo) / (qn + qp), 1e-12)
    o = lo + qn * s
    q = np.clip(np.round((x - o) / s), -qn, qp) * s + o
    return ((x - q) ** 2).sum(0)


def mse_clip(x, qn, qp, signed=True):
    """Brute force: the candidate clip with the least error, and that error, per column."""
    top = np.abs(x).max(0) if signed else np.maximum(x.max(0), 0)
    errors = np.stack([sym_error(x, k / K * top, qn, qp) for k in range(1, K + 1)])
    return errors, top


def sym_projection(x, c, qn, qp):
    """Σ x·Q(x) for the grid [-qn, qp]·(c/qp), per column."""
    s = np.maximum(c / qp, 1e-12)
    return (x * (np.clip(np.round(x / s), -qn, qp) * s)).sum(0)


def no_shrink_clip(x, qn, qp):
    """Brute force: per column, the candidate clip with the least error among those with Σ x·Q(x) >= Σ x², or
    (none such) the one with the largest Σ x·Q(x)."""
    top = np.abs(x).max(0)
    clips = np.stack([k / K * top for k in range(1, K + 1)])
    errors = np.stack([sym_error(x, c, qn, qp) for c in clips])
    proj = np.stack([sym_projection(x, c, qn, qp) for c in clips])
    kept = proj >= (x * x).sum(0)
    best = np.where(kept.any(0), np.where(kept, errors, np.inf).argmin(0), proj.argmax(0))
    return clips[best, np.arange(x.shape[1])], kept
