"""Matplotlib figures of the eval reports, rendered to PNG bytes (the Agg backend: no display needed).

- scatter: predicted vs true log indicator on the test tiles, one panel per (city, indicator);
- maps: true, predicted and residual values over the tile grid (x east, y north: Baidu tile indices grow
  northwards, so y points up), test tiles only, the rest of the grid left blank;
- trend (index page): test R2 per indicator and retrieval R@k over training steps, the best baseline dashed and
  the random-init twin dotted.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, never to a screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def scatter(panels: list[dict]) -> bytes:
    """Panels of {title, true, pred, r2}: predicted vs true (natural log), identity line dashed."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        true, pred = np.asarray(p["true"]), np.asarray(p["pred"])
        ax.scatter(true, pred, s=9, alpha=0.6, edgecolors="none")
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(title=f"{p['title']}  (R² {p['r2']:.2f}, n={len(true)})", xlabel="true (log)", ylabel="predicted (log)")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _grid(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Values on a dense [y, x] grid (NaN where no test tile) and the imshow extent."""
    x0, y0 = x.min(), y.min()
    grid = np.full((y.max() - y0 + 1, x.max() - x0 + 1), np.nan)
    grid[y - y0, x - x0] = v
    return grid, (x0 - 0.5, x.max() + 0.5, y0 - 0.5, y.max() + 0.5)


def residual_map(title: str, x: list[int], y: list[int], true: list[float], pred: list[float]) -> bytes:
    """Three panels over the tile grid: true, predicted (shared colour scale) and residual (predicted - true)."""
    x, y, true, pred = (np.asarray(a) for a in (x, y, true, pred))
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    resid = pred - true
    r = float(np.abs(resid).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (name, v, cmap, vmin, vmax) in zip(axes, [("true (log)", true, "viridis", lo, hi),
                                                      ("predicted (log)", pred, "viridis", lo, hi),
                                                      ("residual (predicted - true)", resid, "RdBu_r", -r, r)]):
        grid, extent = _grid(x, y, v)
        im = ax.imshow(grid, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_facecolor("#eeeeee")
        ax.set(title=name, xlabel="tile x", ylabel="tile y")
        for axis in (ax.xaxis, ax.yaxis):  # whole tile indices, written out (no offset notation)
            axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.ticklabel_format(useOffset=False, style="plain")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{title}: test tiles (grey = train/val or no tile)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def trend(steps: list[int], series: dict[str, list[float]], references: dict[str, dict[str, list[float]]],
          retrieval: dict[str, list[float]]) -> bytes:
    """Left: test R2 by indicator over steps, each with its reference lines (indicator -> label -> values: the
    best baseline dashed, the random-init twin dotted, in that order). Right: retrieval R@k over steps."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, values) in enumerate(series.items()):
        colour = f"C{i}"
        left.plot(steps, values, "o-", color=colour, label=name)
        for style, (label, ref) in zip(("--", ":"), references.get(name, {}).items()):
            left.plot(steps, ref, style, color=colour, alpha=0.7, label=f"{name} ({label})")
    left.set(title="indicator probe: test R² (image MLP)", xlabel="training step", ylabel="R²")
    for name, values in retrieval.items():
        right.plot(steps, values, "o-", label=name)
    right.set(title="test retrieval", xlabel="training step", ylabel="recall", ylim=(0, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def thumbnail_png(image: np.ndarray, scale: int = 3) -> bytes:
    """A uint8 [H, W, 3] tile as PNG, enlarged by pixel repetition (what the model saw, without smoothing)."""
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, big, format="png")
    return buf.getvalue()


__all__ = ["scatter", "residual_map", "trend", "thumbnail_png"]
