"""The figures' drawing: numpy arrays in, RGB pixels (height, width, 3) uint8 out; matplotlib is
imported only to draw, without pyplot: an Agg `Figure` needs no GUI and keeps no global state."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np


def available() -> bool:
    """Whether matplotlib can be imported, without importing it."""
    return importlib.util.find_spec("matplotlib") is not None


def fit_images(
    x: np.ndarray,
    y: np.ndarray,
    grid: np.ndarray,
    curves: np.ndarray,
    whens: list[str],
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One picture per row of `curves` (the model on `grid`), on axes and data drawn once."""
    figure = _figure(6.0, 4.0)
    ax = figure.add_subplot()
    # plot's markers draw faster than scatter's
    ax.plot(x, y, ".", ms=4, alpha=0.6, color="tab:blue", label="train")
    if x_val is not None and y_val is not None:
        ax.plot(x_val, y_val, ".", ms=4, alpha=0.6, color="tab:orange", label="validation")
    # animated: left out of the background, drawn per snapshot
    (line,) = ax.plot(grid, curves[0], color="black", lw=2, label="model", animated=True)
    data_y = y if y_val is None else np.concatenate([y, y_val])
    ax.set(xlabel="x", ylabel="y", ylim=_limits(data_y, curves))
    when = ax.set_title("", loc="right", animated=True)
    # above the axes, where no point or curve can be: "best" would test every point
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=3, frameon=False, borderaxespad=0)
    canvas = figure.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(figure.bbox)
    pictures = []
    for curve, name in zip(curves, whens, strict=True):
        canvas.restore_region(background)
        line.set_ydata(curve)
        when.set_text(name)
        ax.draw_artist(line)
        ax.draw_artist(when)
        pictures.append(_pixels(canvas))
    return pictures


def _limits(data_y: np.ndarray, curves: np.ndarray) -> tuple[float, float]:
    """y limits for the data and the curves, where a wild curve never squashes the data flat."""
    low, high = float(data_y.min()), float(data_y.max())
    span = max(high - low, 1e-6)
    finite = curves[np.isfinite(curves)]
    c_low, c_high = (float(finite.min()), float(finite.max())) if finite.size else (low, high)
    low, high = max(min(low, c_low), low - span), min(max(high, c_high), high + span)
    margin = 0.05 * (high - low)
    return low - margin, high + margin


def landscape_image(
    first: np.ndarray,
    second: np.ndarray,
    surface: np.ndarray,
    path: np.ndarray,
    names: list[str],
    start: str = "start",
) -> np.ndarray:
    """Contours of the loss (`surface[i, j]` at `first[j], second[i]`) with the optimizer's
    path (one row per point, first parameter then second) on top."""
    finite = surface[np.isfinite(surface)]
    figure = _figure(6.0, 5.0)
    ax = figure.add_subplot()
    if finite.size and float(finite.min()) > 0:  # a log scale shows the valley's floor
        shown, label = np.log10(np.maximum(surface, finite.min())), "log10 loss"
    else:
        shown, label = surface, "loss"
    filled = ax.contourf(first, second, shown, levels=30, cmap="viridis")
    figure.colorbar(filled, ax=ax, label=label)
    ax.plot(path[:, 0], path[:, 1], color="white", linewidth=1.5, marker=".", markersize=3)
    ax.plot(*path[0], marker="o", color="white", markeredgecolor="black", label=start)
    ax.plot(*path[-1], marker="*", markersize=12, color="red", markeredgecolor="black", label="end")
    ax.set(xlabel=names[0], ylabel=names[1], title="loss landscape and the optimizer's path")
    ax.legend(loc="upper right")
    figure.canvas.draw()
    return _pixels(figure.canvas)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    # fixed margins: tight_layout would measure every label of every figure
    figure.subplots_adjust(left=0.12, right=0.95, bottom=0.12, top=0.92)
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _pixels(canvas: Any) -> np.ndarray:
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # the canvas reuses its buffer
