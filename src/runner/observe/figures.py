"""Pictures for TensorBoard where people would rather look than read.

- 1-D regression: the data and the fitted curve (`figure/fit`) at the start, every
  `logger.figure_every_n_epochs`, and at the end.
- Two scalar parameters (`linear_fit`, `rosenbrock`): the loss landscape around the
  optimizer's path, with the path drawn on it (`figure/landscape`), at the end.
- The Custom Scalars layout grouping loss, gradients and parameters, and the model graph
  (`add_graph`) where tracing works.

This module is the training process's side: the curves on a grid, the loss surface and the
path, as tensors until the end, then as numpy arrays. The drawing (matplotlib, the `plots`
extra, on the Agg canvas without pyplot) is `runner.plotter`'s, in a worker process that
`python -m runner` starts with the run, or in this process when none runs.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from typing import Any

import numpy as np
import torch

from runner.build import models

from runner.observe import plotter
from runner.build import Built
from runner.observe.gradcheck import Objective
from runner.observe.insight import accuracy_fn
from runner.log.tensorboard import Null

log = logging.getLogger(__name__)

CURVE_POINTS = 200  # x positions of the drawn curve
MAX_SCATTER = 2000  # data points drawn; more only slows the drawing
GRID = 60  # landscape resolution per axis: 3600 loss evaluations, in one batch
AHEAD = 8  # snapshots sent to the plotter as they are taken, at most: ~1 kB each, with the
# data (<= 35 kB) well inside a pipe's buffer; later ones are drawn at the end with the rest
GRID_ELEMENTS = 2**22  # grid points x data points per vmap chunk: bounds the memory


class Figures:
    """What to draw for this run, decided once; the loop calls start, record, epoch, finish.

    During training only device tensors are kept (the curve on a fixed grid, the path).
    With a plotter process running, the first snapshots go to it at the next log step (a
    step that moves values to the host anyway) to be drawn there while this trains; the
    rest is drawn in `finish`, so the drawing never interrupts the training steps.
    """

    def __init__(self, b: Built, every_n_epochs: int | None) -> None:
        self.b = b
        self.every = every_n_epochs
        self.params = list(b.params.values())
        self.on = not isinstance(b.logger, Null)
        self.plots = self.on and _matplotlib_available()
        self.grid = curve_grid(b) if self.plots and _is_1d_regression(b) else None
        self.curves: list[tuple[int, str, torch.Tensor]] = []  # (step, when, curve on grid)
        self.landscape = self.plots and len(self.params) == 2
        self.landscape = self.landscape and all(p.numel() == 1 for p in self.params)
        self.path: list[torch.Tensor] = []
        self.sent = 0  # snapshots sent to the plotter ahead of `finish`

    def start(self) -> None:
        """Before the first update: the layout, the model graph, the first curve and point."""
        if not self.on:
            return
        self.b.logger.layout(layout(self.b))
        self._curve(0, "start")
        self.record()
        add_model_graph(self.b)

    def record(self) -> None:
        """At log steps: the parameters' position on the landscape, and the snapshots taken
        since the last log step to the plotter, which draws them while this trains (a log
        step moves values to the host anyway)."""
        self._path_point()
        if self.grid is not None and self.sent < len(self.curves) <= AHEAD:
            if not plotter.PLOTTER.running:
                return
            new = self.curves[self.sent :]
            whens = [when for _, when, _ in new]
            if self.sent == 0:  # the data once, with the first snapshot
                arrays = fit_arrays(self.b, self.grid, [curve for _, _, curve in new])
            else:
                arrays = {"curves": _host(torch.stack([curve for _, _, curve in new]))}
            plotter.PLOTTER.prepare("fit", arrays, whens=whens)
            self.sent = len(self.curves)

    def epoch(self, epoch: int, step: int) -> None:
        last = epoch == self.b.checked.trainer.epochs  # `finish` takes that one
        if self.every and epoch % self.every == 0 and not last:
            self._curve(step, f"epoch {epoch}")

    def finish(self, step: int) -> None:
        """After the last step: the numbers to the plotter process, the pictures it draws to
        the logger (drawn here if it is not running; see `runner.plotter`)."""
        self._curve(step, "end")
        self._path_point()  # the last one (the end's curve is drawn with the rest, below)
        try:
            if self.grid is not None:
                arrays = fit_arrays(self.b, self.grid, [curve for _, _, curve in self.curves])
                whens = [when for _, when, _ in self.curves]
                pictures = plotter.PLOTTER.draw("fit", arrays, whens=whens)
                for (at, _, _), picture in zip(self.curves, pictures, strict=True):
                    self.b.logger.png(at, "figure/fit", *picture)
            if self.landscape:
                path = torch.stack(self.path).double().cpu()  # note: the one move to the host
                if bool(torch.isfinite(path).all()):
                    arrays = landscape_arrays(self.b, path)
                    names = list(self.b.params)
                    (picture,) = plotter.PLOTTER.draw("landscape", arrays, names=names)
                    self.b.logger.png(step, "figure/landscape", *picture)
        except Exception as e:  # a picture is never worth a failed run
            log.warning(f"figures skipped: drawing them failed ({type(e).__name__}: {e})")

    def _path_point(self) -> None:
        if self.landscape:
            self.path.append(torch.stack([p.detach().reshape(()) for p in self.params]))

    @torch.no_grad()
    def _curve(self, step: int, when: str) -> None:
        if self.grid is not None and self.b.forward is not None:
            self.curves.append((step, when, self.b.forward(self.grid).detach()))


def _matplotlib_available() -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        log.info("matplotlib is not installed: no figures (pip install 'runner[plots]')")
        return False
    return True


def _is_1d_regression(b: Built) -> bool:
    """One input column, one target and one prediction per point, and not a classifier."""
    if b.data is None or b.forward is None or b.data.features != 1 or b.data.y.dim() != 1:
        return False
    if accuracy_fn(b) is not None:
        return False
    with torch.no_grad():
        return tuple(b.forward(b.data.x[:2]).shape) == (min(2, b.data.n),)


def layout(b: Built) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars dashboard: charts group tags by regex, so every parameter shows."""
    loss_charts: dict[str, list[Any]] = {
        "loss (train, val)": ["Multiline", [r"loss/train", r"loss/val"]],
        "learning rate": ["Multiline", [r"lr"]],
    }
    if accuracy_fn(b) is not None:
        loss_charts["accuracy"] = ["Multiline", [r"acc/.*"]]
    return {
        "loss": loss_charts,
        "gradients": {
            "gradient (value or L2 norm)": ["Multiline", [r"grad/.*"]],
            "update size / parameter size": ["Multiline", [r"ratio/.*"]],
        },
        "parameters": {"parameter (value or L2 norm)": ["Multiline", [r"param/.*"]]},
        "autograd graph": {
            "nodes, leaves, depth": [
                "Multiline",
                [r"graph/nodes", r"graph/leaves", r"graph/depth"],
            ],
            "bytes saved for backward": ["Multiline", [r"graph/saved_bytes"]],
        },
    }


def add_model_graph(b: Built) -> None:
    """`add_graph` for an nn.Module model; tracing fails for some models, which only costs
    the Graphs tab, never the run."""
    if b.model is None or b.data is None:
        return
    x = b.data.x[:2]
    if not isinstance(b.model, models.Expression) and x.dim() == 1:
        x = x.unsqueeze(-1)  # as models.forward_fn feeds a module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings are about tracing, not the run
            b.logger.graph(b.model, x)
    except Exception as e:
        log.debug(f"no model graph for TensorBoard (tracing failed: {e})")


def _sample(n: int) -> torch.Tensor | None:
    if n <= MAX_SCATTER:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:MAX_SCATTER]


def curve_grid(b: Built) -> torch.Tensor:
    """Where the curve is drawn: evenly over the data's x range, train and validation."""
    assert b.data is not None
    xs = [b.data.x] + ([b.data.x_val] if b.data.x_val is not None else [])
    low = min(float(x.min()) for x in xs)
    high = max(float(x.max()) for x in xs)
    return torch.linspace(low, high, CURVE_POINTS, dtype=b.data.x.dtype, device=b.data.x.device)


def fit_arrays(
    b: Built, grid: torch.Tensor, curves: list[torch.Tensor]
) -> dict[str, np.ndarray | None]:
    """What `plotter.fit_images` draws, on the host: the data (a sample when it is large),
    the grid and one curve per snapshot."""
    assert b.data is not None
    data = b.data
    arrays = {"grid": _host(grid), "curves": _host(torch.stack(curves))}
    for suffix, x, y in (("", data.x, data.y), ("_val", data.x_val, data.y_val)):
        if x is None or y is None:
            continue
        keep = _sample(x.shape[0])
        x, y = (x, y) if keep is None else (x[keep.to(x.device)], y[keep.to(y.device)])
        arrays["x" + suffix], arrays["y" + suffix] = _host(x), _host(y)
    return arrays


def _host(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy()


@torch.no_grad()
def landscape_arrays(b: Built, path: torch.Tensor) -> dict[str, np.ndarray | None]:
    """What `plotter.landscape_image` draws: the loss (full data) over a grid around the
    path, and the path."""
    lows, highs = path.min(0).values, path.max(0).values
    span = highs - lows
    pad = torch.maximum(0.25 * span, 0.05 * path.abs().max(0).values).clamp_min(0.5)
    axes = [torch.linspace(float(lows[i] - pad[i]), float(highs[i] + pad[i]), GRID) for i in (0, 1)]
    a, c = torch.meshgrid(*axes, indexing="xy")
    surface = loss_surface(b, a.reshape(-1), c.reshape(-1)).reshape(a.shape)
    first, second = (axis.double().numpy() for axis in axes)
    return {"first": first, "second": second, "surface": surface.numpy(), "path": path.numpy()}


@torch.no_grad()
def loss_surface(b: Built, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The loss on the full training data at each (first[i], second[i]) for the two
    parameters, as a CPU tensor; batched with vmap, point by point if the model cannot be."""
    data = b.data
    objective = Objective(b.model, b.loss_fn, *((data.x, data.y) if data else ()))
    (p1, p2) = b.params.values()
    keys = (objective.key(p1), objective.key(p2))

    def loss_at(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        values = {keys[0]: u.reshape(p1.shape), keys[1]: v.reshape(p2.shape)}
        return torch.func.functional_call(objective, values, ())

    first, second = first.to(p1.device, p1.dtype), second.to(p1.device, p1.dtype)
    chunk = max(1, GRID_ELEMENTS // (data.n if data is not None else 1))
    try:
        values = torch.func.vmap(loss_at, chunk_size=chunk)(first, second)
    except Exception as e:  # a model vmap cannot batch: the same numbers, one at a time
        log.debug(f"loss landscape point by point (vmap failed: {e})")
        values = torch.stack([loss_at(u, v) for u, v in zip(first, second, strict=True)])
    return values.double().cpu()
