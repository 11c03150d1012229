"""The report's figures: a grid of panels (headless matplotlib) and saving it. One place for what every
plot of ``report``, ``pareto`` and ``views`` shares."""
from __future__ import annotations

import math
from pathlib import Path


def panel_grid(n: int, cols: int, width: float, height: float):
    """``(plt, fig, axes)``: ``n`` panels in rows of ``cols`` (fewer if ``n`` is smaller), each ``width`` x
    ``height`` inches; unused cells are hidden. ``axes`` is a flat list."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to files
    import matplotlib.pyplot as plt

    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return plt, fig, list(axes.flat)


def save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
