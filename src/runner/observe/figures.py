"""`figure/fit` (1-D regression) and `figure/landscape` (two one-element parameters): training
keeps device tensors only (curves on a grid, the path), so it never waits; drawing is at the end."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from runner.build import Built
from runner.build.models import evaluating
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer, draw
from runner.observe.gradcheck import Objective
from runner.train.state import State

log = logging.getLogger(__name__)

CURVE_POINTS = 200  # x positions of the drawn curve
MAX_SCATTER = 2000  # data points drawn; more only slow the drawing and hide the curve
GRID = 60  # landscape resolution per axis
GRID_ELEMENTS = 2**22  # grid points x data points per vmap chunk: bounds the memory
MAX_FITS = 50  # each is drawn and encoded at the end: a long run spaces them further apart


class Figures(Observer):
    """What to draw, decided once; curves at the start, every `every_n_epochs` epochs, the end."""

    def __init__(
        self,
        b: Built,
        logger: Logger,
        every_n_epochs: int | None,
        start: int = 0,
        path: torch.Tensor | None = None,  # the resumed checkpoint's
    ) -> None:
        self.b, self.logger = b, logger
        epochs = b.checked.trainer.epochs
        self.every = every_n_epochs and max(every_n_epochs, math.ceil(epochs / MAX_FITS))
        self.resumed_at = start  # the step a resumed run goes on from (0: draw the start curve)
        # logger=none: nothing at all; no matplotlib: one line, then nothing
        on = logger.writes and draw.available()
        if logger.writes and not on:
            log.info("matplotlib is not installed: no figures (pip install 'runner[plots]')")
        self.grid = curve_grid(b) if on else None
        self.landscape = on and [p.numel() for p in b.params.values()] == [1, 1]
        self.curves: list[tuple[int, str, torch.Tensor]] = []  # (step, title, curve on grid)
        self.path: list[torch.Tensor] = [] if path is None else list(path)  # (first, second)
        # where the path starts: an older checkpoint, which kept none, at the resume
        self.path_from = 0 if path is not None else start
        self.path_step = -1  # the step after which the last path point was taken

    def start(self) -> None:
        """Before the first update: the first curve (unless resumed) and the path's first point."""
        if not self.resumed_at:
            self._curve(0, "start")
        self._path_point()

    def log(self, look: Look) -> None:
        self._path_point()
        self.path_step = look.step

    def epoch(self, state: State) -> None:
        last = state.epoch == self.b.checked.trainer.epochs  # `end` takes that one
        drawn = state.step <= self.resumed_at  # resumed at an epoch's last step: drawn before
        if self.every and state.epoch % self.every == 0 and not last and not drawn:
            self._curve(state.step - 1, f"epoch {state.epoch}")

    def end(self, state: State) -> None:
        """After the last step: the end's snapshot, then every picture to the logger. An
        interrupted or failed run's is at the step it goes on from, which its resume purges."""
        stopped = state.status in ("interrupted", "failed")
        last = state.step if stopped else max(state.step - 1, 0)
        if self.curves and self.curves[-1][0] == last and self.curves[-1][1] != "start":
            self.curves.pop()  # a run that stopped early, at an epoch's end: "end" says more
        ending = {"diverged": "end (diverged)", "interrupted": "interrupted", "failed": "failed"}
        self._curve(last, ending.get(state.status, "end"))
        if self.path_step != state.step - 1:  # the last step was not a log step
            self._path_point()
        drawings = {"fit": self._draw_fit} if self.grid is not None else {}
        if self.landscape and state.status == "diverged":  # a surface of overflows
            log.info("no loss landscape: the run diverged")
        elif self.landscape:
            drawings["landscape"] = lambda: self._draw_landscape(last)
        for name, draw_it in drawings.items():
            try:
                draw_it()
            except Exception as e:  # a picture is never worth a failed run
                log.warning(f"figure/{name} skipped: drawing it failed ({type(e).__name__}: {e})")

    def _draw_fit(self) -> None:
        data = self.b.data
        assert self.grid is not None and data is not None
        curves = torch.stack([curve for _, _, curve in self.curves])
        arrays = {"grid": _host(self.grid), "curves": _host(curves)}
        for suffix, x, y in (("", data.x, data.y), ("_val", data.x_val, data.y_val)):
            if x is None or y is None:
                continue
            if x.shape[0] > MAX_SCATTER:  # the same sample every time: seeded apart from the run
                keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
                keep = keep[:MAX_SCATTER].to(x.device)
                x, y = x[keep], y[keep]
            arrays["x" + suffix], arrays["y" + suffix] = _host(x), _host(y)
        whens = [when for _, when, _ in self.curves]
        for (step, _, _), pixels in zip(self.curves, draw.fit_images(**arrays, whens=whens)):
            self.logger.image(step, "figure/fit", pixels)

    def _draw_landscape(self, step: int) -> None:
        path = torch.stack(self.path).double().cpu()
        if not bool(torch.isfinite(path).all()):
            log.info("no loss landscape: the parameters left the finite numbers")
            return
        arrays = landscape_arrays(self.b, path)
        label = f"resumed (step {self.path_from})" if self.path_from else "start"
        pixels = draw.landscape_image(**arrays, names=list(self.b.params), start=label)
        self.logger.image(step, "figure/landscape", pixels)

    def kept(self) -> torch.Tensor | None:
        """The path so far, for a checkpoint: a resumed run draws it from the start."""
        return torch.stack(self.path) if self.path else None

    def _path_point(self) -> None:
        if self.landscape:
            values = [p.detach().reshape(()) for p in self.b.params.values()]
            self.path.append(torch.stack(values))  # a new tensor: later updates leave it

    def _curve(self, step: int, when: str) -> None:
        if self.grid is not None and self.b.forward is not None:
            with evaluating(self.b.model):
                self.curves.append((step, when, self.b.forward(self.grid).detach()))


def curve_grid(b: Built) -> torch.Tensor | None:
    """Where the fitted curve is drawn: evenly over the data's x range (train and validation);
    None unless the run is 1-D regression (one input column, target and prediction per point)."""
    data = b.data
    if data is None or b.forward is None or data.task == "classification" or data.features != 1:
        return None
    with evaluating(b.model):
        if data.y.dim() != 1 or b.forward(data.x[:2]).shape != (min(2, data.n),):
            return None
    xs = [data.x] + ([data.x_val] if data.x_val is not None else [])
    low, high = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
    return torch.linspace(low, high, CURVE_POINTS, dtype=data.x.dtype, device=data.x.device)


def _host(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy()


def landscape_arrays(b: Built, path: torch.Tensor) -> dict[str, np.ndarray]:
    """`draw.landscape_image`'s arrays: the loss on all the training data around the path."""
    lows, highs = path.min(0).values, path.max(0).values
    pad = torch.maximum(0.25 * (highs - lows), 0.05 * path.abs().max(0).values).clamp_min(0.5)
    axes = [torch.linspace(float(lows[i] - pad[i]), float(highs[i] + pad[i]), GRID) for i in (0, 1)]
    a, c = torch.meshgrid(*axes, indexing="xy")  # a[i, j] = first[j], c[i, j] = second[i]
    surface = loss_surface(b, a.reshape(-1), c.reshape(-1)).reshape(a.shape)
    first, second = (axis.double().numpy() for axis in axes)
    return {"first": first, "second": second, "surface": surface.numpy(), "path": path.numpy()}


def loss_surface(b: Built, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The loss at each (first[i], second[i]) for the two parameters, as a CPU tensor:
    batched with vmap, point by point for a model that vmap cannot batch."""
    data = b.data
    objective = Objective(b.model, b.loss_fn, *((data.x, data.y) if data else ()))
    (p1, p2) = b.params.values()
    # functional_call names them by their place in the objective (`model.w`, `loss_fn.a`)
    keys = [next(n for n, p in objective.named_parameters() if p is q) for q in (p1, p2)]

    def loss_at(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        values = {keys[0]: u.reshape(p1.shape), keys[1]: v.reshape(p2.shape)}
        return torch.func.functional_call(objective, values, ())

    first, second = first.to(p1.device, p1.dtype), second.to(p1.device, p1.dtype)
    chunk = max(1, GRID_ELEMENTS // (data.n if data is not None else 1))
    with evaluating(b.model):
        try:
            values = torch.func.vmap(loss_at, chunk_size=chunk)(first, second)
        except Exception as e:  # the same numbers, one at a time
            log.debug(f"loss landscape point by point (vmap failed: {e})")
            values = torch.stack([loss_at(u, v) for u, v in zip(first, second)])
    return values.double().cpu()
