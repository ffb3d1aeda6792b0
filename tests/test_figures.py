"""Figures: the pixels drawn where the numbers say, the loss landscape equal to the loss
computed directly, snapshots and path points at the right steps, and a run that never fails
for a picture. `Figures` is driven by hand, as the loop drives it, on a model trained here
with the post's update."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_config, event_accumulator

from runner.build import Built, build
from runner.build.optim import GD
from runner.log.tensorboard import Null
from runner.observe import Look, dashboard, draw, figures
from runner.observe.figures import Figures
from runner.run import run
from runner.train.state import State

GRID = np.linspace(0.0, 1.0, 200)
X = np.linspace(0.0, 1.0, 50)
Y = 1.5 * X + 1 + 0.1 * np.random.default_rng(0).standard_normal(50)


class Recorder(Null):
    """A logger that keeps what Figures and the dashboard hand it."""

    writes = True

    def __init__(self, graph_fails: bool = False) -> None:
        self.images: list[tuple[int, str, np.ndarray]] = []
        self.graphs: list[tuple[torch.nn.Module, torch.Tensor]] = []
        self.graph_fails = graph_fails

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        self.images.append((step, tag, pixels))

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        if self.graph_fails:
            raise RuntimeError("cannot trace")
        self.graphs.append((model, example))

    def steps(self, tag: str) -> list[int]:
        return [step for step, t, _ in self.images if t == tag]


def built(tmp_path: Path, *overrides: str) -> Built:
    return build(compose_config(*overrides, "logger=none"), tmp_path)


def train_by_hand(b: Built, fig: Figures, steps: int, log_every: int = 1) -> State:
    """The post's loop (full batch, `p -= lr * p.grad`), calling Figures as the loop does:
    `log` at log steps, `epoch` at each epoch's end (one step an epoch)."""
    assert b.data is not None and b.forward is not None
    state = State()
    fig.start()
    for _ in range(steps):
        loss = ((b.forward(b.data.x) - b.data.y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in b.params.values():
                p -= 0.1 * p.grad
                p.grad = None
        state.step += 1
        if (state.step - 1) % log_every == 0:
            look = Look(state, loss.detach(), loss.detach().reshape(1), [], None, 0)
            fig.log(look)
        state.end_epoch()
        fig.epoch(state)
    fig.end(state)
    return state


@pytest.fixture
def quick_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests about when and what, not pixels: a tiny picture per call instead of drawing."""
    blank = np.zeros((2, 2, 3), np.uint8)
    monkeypatch.setattr(draw, "fit_images", lambda **a: [blank for _ in a["whens"]])
    monkeypatch.setattr(draw, "landscape_image", lambda **a: blank)


def dark(pixels: np.ndarray) -> np.ndarray:
    return (pixels < 100).all(axis=-1)


# -- draw: pixels --


def test_fit_curves_are_drawn_where_their_values_say_on_shared_axes():
    """Two lines through (0, 1) with slopes 1 and 2, in one call: the pixels each adds are a
    straight line in the picture, the second twice as steep (the axes are the same), and
    the two meet at the left end of the curves, x = 0."""
    images = draw.fit_images(X, Y, GRID, np.stack([GRID + 1, 2 * GRID + 1]), ["same", "same"])
    assert [(i.shape, i.dtype) for i in images] == [((400, 600, 3), np.uint8)] * 2
    lines = []
    for mine, other in ((images[0], images[1]), (images[1], images[0])):
        rows, cols = np.nonzero(dark(mine) & ~dark(other))
        slope, intercept = np.polyfit(cols, rows, 1)
        assert np.abs(rows - (slope * cols + intercept)).max() < 3  # a straight line
        lines.append((slope, intercept, cols.min()))
    (s1, i1, left), (s2, i2, _) = lines
    assert s1 < 0 and s2 < 0  # rows count down: y grows upwards
    assert s2 / s1 == pytest.approx(2.0, rel=0.05)
    assert (i1 - i2) / (s2 - s1) == pytest.approx(left, abs=4)


def test_fit_pictures_differ_by_curve_and_by_title_only():
    curves = np.stack([GRID + 1, GRID + 1, 2 * GRID + 1])
    a, b, c = draw.fit_images(X, Y, GRID, curves, ["start", "end", "start"], X[:5], Y[:5])
    assert (a != 255).any(axis=-1).mean() > 0.02  # not blank: axes, labels, dots, line
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    again = draw.fit_images(X, Y, GRID, curves, ["start", "end", "start"], X[:5], Y[:5])
    assert np.array_equal(again[0], a)  # the same numbers, the same pixels


def test_landscape_picture():
    first, second = np.linspace(-0.5, 2.0, 60), np.linspace(-0.5, 2.5, 60)
    surface = np.add.outer((second - 2) ** 2, (first - 1) ** 2) + 0.01
    path = np.stack([np.linspace(0, 1, 30), np.linspace(0, 2, 30)], 1)
    pixels = draw.landscape_image(first, second, surface, path, ["b", "w"])
    assert pixels.shape == (500, 600, 3) and pixels.dtype == np.uint8
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 30  # the contour levels' colours
    moved = draw.landscape_image(first, second, surface, path[::-1], ["b", "w"])
    assert not np.array_equal(pixels, moved)


# -- the numbers drawn --


def test_linear_fit_landscape_is_the_loss_at_each_grid_point(tmp_path, monkeypatch):
    b = built(tmp_path, "experiment=linear_fit")
    assert list(b.params) == ["b", "w"]
    path = torch.tensor([[0.0, 0.0], [1.05, 1.92]], dtype=torch.float64)
    arrays = figures.landscape_arrays(b, path)
    first, second, surface = arrays["first"], arrays["second"], arrays["surface"]
    assert surface.shape == (figures.GRID, figures.GRID)
    assert first.min() < 0 < 1.05 < first.max() and second.min() < 0 < 1.92 < second.max()
    x, y = b.data.x.double().numpy(), b.data.y.double().numpy()
    for i, j in ((0, 0), (7, 41), (59, 3), (30, 30)):  # surface[i, j] at first[j], second[i]
        direct = np.mean((second[i] * x + first[j] - y) ** 2)
        assert surface[i, j] == pytest.approx(direct, rel=1e-5)

    def no_vmap(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)  # point by point: the same numbers
    assert np.allclose(figures.landscape_arrays(b, path)["surface"], surface, rtol=1e-6)


def test_rosenbrock_landscape_is_the_function(tmp_path):
    b = built(tmp_path, "experiment=rosenbrock")
    a, c = torch.tensor([1.0, 0.0, -1.5, 0.3]), torch.tensor([1.0, 1.0, 2.0, -0.2])
    expected = (1 - a.double()) ** 2 + 100 * (c.double() - a.double() ** 2) ** 2
    assert figures.loss_surface(b, a, c).tolist() == pytest.approx(expected.tolist(), rel=1e-5)


# -- Figures: when, what, and never failing the run --


@pytest.mark.parametrize(
    ("experiment", "fit", "landscape"),
    [
        ("linear_fit", True, True),  # 1-D regression, w and b
        ("rosenbrock", False, True),  # no data; a and b
        ("sine_mlp", True, False),  # 1-D regression, tensor parameters
        ("logistic_blobs", False, False),  # classification, a weight vector
    ],
)
def test_which_runs_get_which_figures(tmp_path, experiment, fit, landscape):
    fig = Figures(built(tmp_path, f"experiment={experiment}"), Recorder(), 50)
    assert (fig.grid is not None, fig.landscape) == (fit, landscape)


def test_linear_fit_figures_at_their_steps(tmp_path):
    """200 epochs of one step, a snapshot every 50: start (step 0), epochs 50, 100, 150 at
    the steps that ended them, and the end instead of epoch 200; the landscape at the last
    step, its path one point per log step plus the start."""
    b = built(tmp_path, "experiment=linear_fit")
    logger = Recorder()
    fig = Figures(b, logger, every_n_epochs=50)
    train_by_hand(b, fig, 200)
    assert logger.steps("figure/fit") == [0, 49, 99, 149, 199]
    assert [when for _, when, _ in fig.curves] == [
        "start",
        "epoch 50",
        "epoch 100",
        "epoch 150",
        "end",
    ]
    assert logger.steps("figure/landscape") == [199]
    assert all(p.shape[2] == 3 and p.dtype == np.uint8 for _, _, p in logger.images)
    fits = [p for _, tag, p in logger.images if tag == "figure/fit"]
    assert not np.array_equal(fits[0], fits[-1])

    w, c = b.params["w"].item(), b.params["b"].item()
    assert (round(w, 3), round(c, 3)) == (1.924, 1.050)  # the post's numbers
    assert fig.curves[0][2].abs().max() == 0  # the start: w = b = 0
    grid = figures.curve_grid(b)
    assert torch.allclose(fig.curves[-1][2], w * grid + c, atol=1e-5)
    assert len(fig.path) == 201
    assert fig.path[0].tolist() == [0.0, 0.0]
    assert fig.path[-1].tolist() == pytest.approx([c, w])


def test_a_long_run_spaces_its_fit_pictures_to_at_most_max_fits(tmp_path, quick_draw):
    """20000 epochs at the default 50 drew 401 pictures at the end, 20 s of a 30 s run."""
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=200")
    logger = Recorder()
    train_by_hand(b, Figures(b, logger, every_n_epochs=1), 200)
    steps = logger.steps("figure/fit")  # every 200 / 50 = 4 epochs, the start and the end
    assert steps == [0, *range(3, 199, 4), 199] and len(steps) == figures.MAX_FITS + 1


def test_the_path_ends_at_the_last_step_even_when_it_was_not_logged(tmp_path, quick_draw):
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=25")
    fig = Figures(b, Recorder(), None)
    train_by_hand(b, fig, 25, log_every=10)  # logs steps 0, 10, 20
    assert len(fig.path) == 1 + 3 + 1
    assert fig.path[-1].tolist() == pytest.approx([b.params["b"].item(), b.params["w"].item()])


def test_a_run_stopped_at_an_epoch_end_gets_end_not_that_epoch(tmp_path, quick_draw):
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=10")
    logger = Recorder()
    fig = Figures(b, logger, every_n_epochs=1)
    train_by_hand(b, fig, 3)  # stopped after 3 of 10 epochs
    assert [(step, when) for step, when, _ in fig.curves] == [
        (0, "start"),
        (0, "epoch 1"),
        (1, "epoch 2"),
        (2, "end"),
    ]
    assert logger.steps("figure/fit") == [0, 0, 1, 2]


def test_a_diverged_run_says_so_on_its_fit_and_draws_no_landscape(tmp_path, monkeypatch):
    """lr=100 overflows: the end's curve is off any scale (its title says why it is missing),
    and a landscape of overflowing losses would be a white square, so there is none."""
    whens: list[str] = []
    real = draw.fit_images
    monkeypatch.setattr(draw, "fit_images", lambda **a: whens.extend(a["whens"]) or real(**a))
    metrics = run(compose_config("experiment=linear_fit", "optimizer.lr=100"), tmp_path / "run")
    assert metrics["status"] == "diverged" and whens == ["start", "end (diverged)"]
    tags = event_accumulator(tmp_path / "run").Tags()["images"]
    assert "figure/fit" in tags and "figure/landscape" not in tags


def test_without_matplotlib_one_line_and_no_figures(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=3")
    logger = Recorder()
    with caplog.at_level(logging.INFO, logger="runner.observe.figures"):
        train_by_hand(b, Figures(b, logger, every_n_epochs=1), 3)
    assert logger.images == []
    assert [r.getMessage() for r in caplog.records] == [
        "matplotlib is not installed: no figures (pip install 'runner[plots]')"
    ]


def test_logger_none_does_nothing(tmp_path, monkeypatch, caplog):
    def never(**arrays: Any) -> Any:
        raise AssertionError("drawn for logger=none")

    monkeypatch.setattr(draw, "fit_images", never)
    monkeypatch.setattr(draw, "landscape_image", never)
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=3")
    fig = Figures(b, Null(), every_n_epochs=1)
    with caplog.at_level(logging.DEBUG, logger="runner.observe.figures"):
        train_by_hand(b, fig, 3)
    assert fig.curves == [] and fig.path == [] and caplog.records == []


def test_a_drawing_error_is_one_warning_and_the_other_figure_still_comes(
    tmp_path, monkeypatch, caplog
):
    def broken(**arrays: Any) -> Any:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(draw, "fit_images", broken)
    monkeypatch.setattr(draw, "landscape_image", lambda **a: np.zeros((2, 2, 3), np.uint8))
    b = built(tmp_path, "experiment=linear_fit", "trainer.epochs=3")
    logger = Recorder()
    with caplog.at_level(logging.INFO, logger="runner.observe.figures"):
        train_by_hand(b, Figures(b, logger, every_n_epochs=1), 3)
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "figure/fit" in warning.getMessage() and "no fonts" in warning.getMessage()
    assert logger.steps("figure/fit") == [] and logger.steps("figure/landscape") == [2]


# -- dashboard --


def scalar_tags(names: list[str], classification: bool) -> list[str]:
    """Every scalar tag of DESIGN.md's list for these parameter names."""
    tags = ["loss/train", "loss/val", "lr", "grad/total_norm"]
    tags += [f"graph/{k}" for k in ("nodes", "leaves", "depth", "saved_bytes")]
    tags += [f"{kind}/{n}" for kind in ("param", "grad", "ratio") for n in names]
    return tags + (["acc/train", "acc/val"] if classification else [])


def regexes(layout: dict[str, dict[str, list[Any]]]) -> dict[str, list[str]]:
    return {chart: spec[1] for charts in layout.values() for chart, spec in charts.items()}


@pytest.mark.parametrize(
    ("experiment", "classification"), [("linear_fit", False), ("logistic_blobs", True)]
)
def test_layout_charts_every_scalar_tag_and_nothing_else(tmp_path, experiment, classification):
    b = built(tmp_path, f"experiment={experiment}")
    names = [*b.params, "lr_scale", "total"]  # names that look like other tags' starts
    scalars = scalar_tags(names, classification)
    others = [f"{kind}/{n}" for kind in ("param_hist", "grad_hist") for n in names]
    others += ["figure/fit", "figure/landscape", "graph/tree", "hparam/final_loss"]
    charts = regexes(dashboard.layout(b))
    # TensorBoard's Custom Scalars: `re.match` of each regex against the run's scalar tags
    matched = {
        c: [t for t in scalars + others if any(re.match(r, t) for r in rs)]
        for c, rs in charts.items()
    }
    assert {t for tags in matched.values() for t in tags} == set(scalars)
    assert matched["total gradient norm"] == ["grad/total_norm"]
    assert matched["gradient (value or L2 norm)"] == [f"grad/{n}" for n in names]
    assert matched["learning rate"] == ["lr"]
    assert ("accuracy (train, val)" in charts) == classification


@pytest.mark.parametrize(("experiment", "shape"), [("linear_fit", (2,)), ("sine_mlp", (2, 1))])
def test_model_graph_gets_the_model_and_an_example_of_its_input(tmp_path, experiment, shape):
    b = built(tmp_path, f"experiment={experiment}")
    logger = Recorder()
    dashboard.add_model_graph(b, logger)
    ((model, example),) = logger.graphs
    assert model is b.model and tuple(example.shape) == shape
    assert b.forward is not None and b.forward(b.data.x[:2]).shape == (2,)
    dashboard.add_model_graph(b, Recorder(graph_fails=True))  # costs the Graphs tab only


def test_no_model_no_graph(tmp_path):
    logger = Recorder()
    dashboard.add_model_graph(built(tmp_path, "experiment=rosenbrock"), logger)
    assert logger.graphs == []


def test_a_resumed_runs_landscape_draws_the_path_from_the_start(tmp_path, monkeypatch):
    """The checkpoint keeps the path: resumed, the landscape shows the one an uninterrupted
    run draws, point for point (the resume adds the point it goes on from, once more)."""
    drawn, blank = {}, np.zeros((2, 2, 3), np.uint8)

    def keep(**arrays: Any) -> np.ndarray:
        drawn["path"], drawn["start"] = arrays["path"], arrays["start"]
        return blank

    monkeypatch.setattr(draw, "landscape_image", keep)
    monkeypatch.setattr(draw, "fit_images", lambda **a: [blank for _ in a["whens"]])
    args = ("experiment=linear_fit", "trainer.checkpoint_every=40")
    run(compose_config(*args, "trainer.epochs=200"), tmp_path / "whole")
    whole = drawn["path"]
    run(compose_config(*args, "trainer.epochs=120"), tmp_path / "resumed")
    run(compose_config(*args, "trainer.epochs=200", "trainer.resume=auto"), tmp_path / "resumed")
    assert drawn["start"] == "start" and whole.shape == (201, 2)
    assert np.array_equal(drawn["path"][120], drawn["path"][121])  # where it went on from
    assert np.array_equal(np.delete(drawn["path"], 121, axis=0), whole)


def test_a_path_not_in_the_checkpoint_starts_at_the_resume(tmp_path, monkeypatch):
    """A resumed run draws no start curve (the first run did); from a checkpoint that kept no
    path (an older runner's), its path starts at the parameters it resumed with, so marked."""
    b = built(tmp_path, "experiment=linear_fit")
    with torch.no_grad():
        b.params["w"].fill_(1.5)  # as a checkpoint would leave them
        b.params["b"].fill_(0.5)
    labels = []
    landscape_image = draw.landscape_image

    def keep_label(*args: Any, **kwargs: Any) -> np.ndarray:
        labels.append(kwargs["start"])
        return landscape_image(*args, **kwargs)

    monkeypatch.setattr(draw, "landscape_image", keep_label)
    fig = Figures(b, Recorder(), every_n_epochs=50, start=120)
    train_by_hand(b, fig, 3)
    assert fig.path[0].tolist() == [0.5, 1.5]  # (b, w), the order of b.params
    assert [when for _, when, _ in fig.curves] == ["end"]
    assert labels == ["resumed (step 120)"]


class FailsAfter120(GD):
    """The post's update, until an error at the 121st step (a device gone, say) while `fails`."""

    fails = True

    def step(self, closure: Any = None) -> Any:
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps > 120 and self.fails:
            raise RuntimeError("the device is gone")
        return super().step(closure)


def test_a_failed_run_keeps_its_pictures_which_its_resume_replaces(tmp_path, monkeypatch):
    """An error at step 120 draws what was taken (the fit so far and the landscape), the last
    titled `failed`, at the step the resume goes on from; resumed from the checkpoint at step
    100, the run purges them and ends with its own."""
    whens: list[str] = []
    real = draw.fit_images
    monkeypatch.setattr(draw, "fit_images", lambda **a: whens.extend(a["whens"]) or real(**a))
    run_dir, every = tmp_path / "run", ("experiment=linear_fit", "trainer.checkpoint_every=50")
    every += (f"optimizer._target_={__name__}.FailsAfter120",)
    with pytest.raises(RuntimeError, match="device is gone"):
        run(compose_config(*every), run_dir)
    assert whens == ["start", "epoch 50", "epoch 100", "failed"]
    events = event_accumulator(run_dir)
    assert [i.step for i in events.Images("figure/fit")] == [0, 49, 99, 120]
    assert [i.step for i in events.Images("figure/landscape")] == [120]
    monkeypatch.setattr(FailsAfter120, "fails", False)
    run(compose_config(*every, "trainer.resume=auto"), run_dir)
    events = event_accumulator(run_dir)
    assert [i.step for i in events.Images("figure/fit")] == [0, 49, 99, 149, 199]
    assert [i.step for i in events.Images("figure/landscape")] == [199]
