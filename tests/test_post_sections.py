"""Each section of the autograd post as an experiment: the post's numbers on the terminal,
in metrics.json and in TensorBoard; and section 4, everything logged is outside the graph."""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, cli, event_accumulator, read_metrics, scalars

import runner.log.tensorboard
from runner.config.check import ConfigError
from runner.observe.scalars import Scalars
from runner.observe.walkthrough import formula_grad_fns

# the post's numbers, section by section
DERIVATIVE_LINES = ["x = 3.0", "y = x**2 + 2*x + 1 = 16.0", "dy/dx = 8.0"]
GRAPH_WALK_LINES = [
    "a = 2.0",
    "y = a * 3 + 1 = 7.0",
    "a.grad_fn = None",
    "(a * 3).grad_fn = MulBackward0",
    "y.grad_fn = AddBackward0",
    "y.backward() walks the graph from the root to the leaves:",
    "AddBackward0",
    "└── MulBackward0",
    "    └── AccumulateGrad (a)",
    "dy/da = 3.0",
]
VECTOR_GRAD_LINES = ["x = [1.0, 2.0, 3.0]", "y = sum(x**3) = 36.0", "dy/dx = [3.0, 12.0, 27.0]"]


def printed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for r in caplog.records for line in r.getMessage().splitlines()]


def text_summary(run_dir: Path, tag: str) -> str:
    (event,) = event_accumulator(run_dir).Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def in_order(expected: list[str], lines: list[str]) -> bool:
    """Every expected line appears, in this order (other lines may come between)."""
    it = iter(lines)
    return all(any(line == want for line in it) for want in expected)


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="runner")
    return caplog


# --- sections 1-3: one forward and backward pass, trainer.epochs=0 ---------------------------


def test_derivative(run_experiment, info_logs):
    metrics, run_dir = run_experiment("experiment=derivative", "trainer.device=cpu")
    assert in_order(DERIVATIVE_LINES, printed(info_logs))
    assert metrics["final_loss"] == 16.0
    assert metrics["params"] == {"x": 3.0}  # no update
    assert metrics["grads"] == {"x": 8.0}  # 2x + 2 at x = 3
    assert (metrics["status"], metrics["steps"], metrics["epochs"]) == ("completed", 0, 0)
    assert read_metrics(run_dir)["grads"] == {"x": 8.0}
    assert scalars(run_dir, "loss/train") == [(0, 16.0)]
    assert scalars(run_dir, "param/x") == [(0, 3.0)]
    assert scalars(run_dir, "grad/x") == [(0, 8.0)]
    assert "dy/dx = 8.0" in text_summary(run_dir, "autograd/first_step")


def test_graph_walk(run_experiment, info_logs):
    metrics, run_dir = run_experiment("experiment=graph_walk", "trainer.device=cpu")
    assert in_order(GRAPH_WALK_LINES, printed(info_logs))
    # leaf to root: the order in which the forward pass made them
    assert list(metrics["grad_fn"].items()) == [
        ("a", None),
        ("a * 3", "MulBackward0"),
        ("a * 3 + 1", "AddBackward0"),
    ]
    assert metrics["grads"] == {"a": 3.0} and metrics["params"] == {"a": 2.0}
    assert read_metrics(run_dir)["grad_fn"] == metrics["grad_fn"]
    text = text_summary(run_dir, "autograd/first_step")
    for line in ("a.grad_fn = None", "(a * 3).grad_fn = MulBackward0", "y.grad_fn = AddBackward0"):
        assert line in text
    assert scalars(run_dir, "graph/op/MulBackward0") == [(0, 1.0)]
    assert scalars(run_dir, "graph/op/AddBackward0") == [(0, 1.0)]
    assert scalars(run_dir, "graph/nodes") == [(0, 3.0)]  # Add, Mul, AccumulateGrad (a)
    assert (run_dir / "graph.txt").read_text().endswith("    └── AccumulateGrad (a)\n")


def test_vector_grad(run_experiment, info_logs):
    metrics, run_dir = run_experiment("experiment=vector_grad", "trainer.device=cpu")
    assert in_order(VECTOR_GRAD_LINES, printed(info_logs))
    assert metrics["final_loss"] == 36.0
    assert metrics["params"] == {"x": [1.0, 2.0, 3.0]}
    assert metrics["grads"] == {"x": [3.0, 12.0, 27.0]}  # 3x**2, one per element
    assert "dy/dx = [3.0, 12.0, 27.0]" in text_summary(run_dir, "autograd/first_step")
    # a tensor's scalar tag is its L2 norm; the histogram holds the elements
    assert scalars(run_dir, "grad/x")[0][1] == pytest.approx(math.sqrt(9 + 144 + 729))
    hist = event_accumulator(run_dir).Histograms("grad_hist/x")[0].histogram_value
    assert (hist.min, hist.max, hist.sum, hist.num) == (3.0, 27.0, 42.0, 3.0)


@pytest.mark.parametrize(
    ("reduction", "y", "grads"), [("sum", 36.0, [3.0, 12.0, 27.0]), ("mean", 12.0, [1.0, 4.0, 9.0])]
)
def test_a_vector_objective_is_reduced_as_the_config_says(run_experiment, reduction, y, grads):
    metrics, _ = run_experiment(
        "experiment=vector_grad", "loss.formula=x**3", f"loss.reduction={reduction}"
    )
    assert metrics["final_loss"] == y and metrics["grads"] == {"x": grads}
    assert metrics["grad_fn"][f"{reduction}(x**3)"] == f"{reduction.capitalize()}Backward0"


@pytest.mark.parametrize("source", ["(x**2    # the square\n + 2*x + 1)", "x**2 + \\\n2*x + 1"])
def test_a_formula_over_several_lines_shows_each_pieces_own_grad_fn(source):
    """A YAML block formula with a comment or a backslash: each piece is evaluated as its own
    tree, not as its text joined onto one line (where `#` would swallow the rest)."""
    x = torch.tensor(3.0, requires_grad=True)
    pieces = formula_grad_fns(source, {"x": x})
    one_line = formula_grad_fns("x**2 + 2*x + 1", {"x": x})
    assert list(pieces.values()) == list(one_line.values())
    assert list(pieces.values())[-1] == (x**2 + 2 * x + 1).grad_fn.name()


def test_a_reduction_of_a_scalar_objective_is_in_its_graph_as_printed(run_experiment):
    """`mean(sum(x**3))` is printed, so the graph's root is mean's node, as in plain torch."""
    metrics, _ = run_experiment("experiment=vector_grad", "loss.reduction=mean")
    plain = torch.ones(3, requires_grad=True).sum().mean().grad_fn
    assert metrics["grad_fn"]["mean(sum(x**3))"] == type(plain).__name__
    assert metrics["final_loss"] == 36.0


@pytest.mark.parametrize(
    ("overrides", "lines"),
    [
        (  # an objective over x and y: the result is f, so df/dy is plainly the gradient
            ["experiment=derivative", 'loss.formula="(x - 1)**2 + (y - 2)**2"'],
            ["f = (x - 1)**2 + (y - 2)**2 = 8.0", "y.grad_fn = None", "df/dy = -4.0"],
        ),
        (  # a model parameter named loss: the loss is L, and the parameter keeps its grad_fn
            ["experiment=linear_fit", 'model.formula="loss * x + b"', "trainer.epochs=0"],
            ["loss.grad_fn = None", "L.grad_fn = MeanBackward0"],
        ),
    ],
)
def test_a_parameter_named_as_the_result_leaves_the_result_another_name(
    run_experiment, info_logs, overrides, lines
):
    metrics, _ = run_experiment(*overrides)
    assert in_order(lines, printed(info_logs))
    assert not any(line.startswith(("dy/dy", "dloss/dloss")) for line in printed(info_logs))


def test_a_vector_objective_without_a_reduction_stops_before_training(run_experiment, tmp_path):
    with pytest.raises(ConfigError, match=r"shape \(3,\).*loss\.reduction=sum"):
        run_experiment("experiment=vector_grad", "loss.formula=x**3")
    assert not (tmp_path / "run0" / "metrics.json").exists()  # stopped before any work


def test_epochs_0_with_data_shows_the_loss_and_its_gradients(run_experiment, info_logs):
    metrics, run_dir = run_experiment("experiment=linear_fit", "trainer.epochs=0")
    assert metrics["params"] == {"b": 0.0, "w": 0.0}  # the post's start, not updated
    assert set(metrics["grads"]) == {"b", "w"} and metrics["grads"]["w"] < 0
    assert metrics["grad_fn"] == {"b": None, "w": None, "loss": "MeanBackward0"}
    assert scalars(run_dir, "loss/train") == [(0, pytest.approx(metrics["final_loss"]))]
    assert scalars(run_dir, "grad/w") == [(0, pytest.approx(metrics["grads"]["w"]))]
    lines = printed(info_logs)
    assert f"dloss/dw = {metrics['grads']['w']:.7g}" in lines
    assert "loss.grad_fn = MeanBackward0" in lines


@pytest.mark.slow
def test_the_commands_print_the_posts_numbers(tmp_path):
    """As a user types them: the three experiments print the post's lines (one multirun
    process saves two interpreter start-ups); a vector objective without a reduction is one
    config error line and exit status 2."""
    sweep = ("-m", "experiment=derivative,graph_walk,vector_grad", f"hydra.sweep.dir={tmp_path}")
    error = ("experiment=vector_grad", "loss.formula=x**3", f"hydra.run.dir={tmp_path / 'e'}")
    with ThreadPoolExecutor(2) as pool:
        jobs, failed = pool.map(
            lambda a: cli(*a, "trainer.device=cpu", cwd=tmp_path), [sweep, error]
        )
    assert jobs.returncode == 0, jobs.stderr
    out = jobs.stdout.split("Run directory:")  # the jobs run one after another
    for job, expected in enumerate([DERIVATIVE_LINES, GRAPH_WALK_LINES, VECTOR_GRAD_LINES]):
        assert in_order(expected, out[job].splitlines()), jobs.stdout
    assert read_metrics(tmp_path / "0_experiment=derivative")["grads"] == {"x": 8.0}
    assert read_metrics(tmp_path / "1_experiment=graph_walk")["grad_fn"]["a * 3"] == "MulBackward0"
    assert read_metrics(tmp_path / "2_experiment=vector_grad")["grads"] == {"x": [3.0, 12.0, 27.0]}
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        "Config error: loss.formula='x**3' gives a tensor of shape (3,), and .backward() "
        "needs a scalar; set loss.reduction=sum or loss.reduction=mean, or wrap it in "
        "sum(...) or mean(...)"
    ]


def test_every_experiment_file_opens_with_its_command():
    for name in ("derivative", "graph_walk", "vector_grad"):
        lines = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_"  # Hydra reads this line first
        assert lines[1] == f"# python -m runner experiment={name}"
        assert lines[2].startswith("# ") and len(lines[2]) > 20  # what it shows


# --- section 4: detach / no_grad: what the runner logs is outside the graph ----------------


class Probe(runner.log.tensorboard.Null):
    """logger=none that checks everything it is handed is a plain number or a detached tensor."""

    count = 0  # histograms handed over

    def scalars(self, step: int, values: Any) -> None:
        assert all(type(v) is float for v in values.values()), values

    def histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        for tag, values in tensors.items():
            assert values.grad_fn is None and not values.requires_grad, tag
            Probe.count += 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _checked_log(samples: dict[int, dict[str, int]], at: tuple[int, ...]) -> Any:
    """Scalars.log that refuses losses handed over still on the graph, and samples memory
    at `at`."""
    log = Scalars.log

    def checked(self, look):  # noqa: ANN001, ANN202
        for tensor in (look.loss, look.losses, *look.before):
            assert tensor.grad_fn is None and not tensor.requires_grad, look.step
        log(self, look)
        step = look.step
        if step in at:
            gc.collect()
            samples[step] = {
                "tensors": sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()),
                "blocks": sys.getallocatedblocks(),
                "rss": _rss_bytes(),
            }

    return checked


def test_logged_tensors_are_detached(run_experiment, monkeypatch):
    """Short run with a tensor parameter, so the histograms are checked too."""
    monkeypatch.setattr(runner.log.tensorboard, "Null", Probe)
    monkeypatch.setattr(Scalars, "log", _checked_log({}, ()))
    Probe.count = 0
    metrics, _ = run_experiment(
        "experiment=vector_grad",
        "loss.formula=x**2",
        "loss.reduction=sum",
        "trainer.epochs=20",
        "trainer.log_every_n_steps=5",
        "logger=none",
        "logger.histogram_every_n_steps=5",
    )
    assert metrics["status"] == "completed"
    assert Probe.count == 10  # param_hist/x and grad_hist/x at steps 0, 5, 10, 15, 19


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_20000_steps_keep_no_graph_and_no_memory(run_experiment, monkeypatch):
    """If a logged loss kept its grad_fn, each step's graph would stay alive: the tensor
    count and the heap would grow with the steps. Between step 5,000 and step 20,000 they
    must not."""
    samples: dict[int, dict[str, int]] = {}
    monkeypatch.setattr(runner.log.tensorboard, "Null", Probe)
    monkeypatch.setattr(Scalars, "log", _checked_log(samples, (5_000, 19_999)))
    metrics, _ = run_experiment(
        "experiment=derivative",
        "trainer.epochs=20000",
        "optimizer.lr=0.01",  # x walks down to the minimum at -1 and stays
        "trainer.log_every_n_steps=10",  # 2,000 logged rows
        "trainer.device=cpu",
        "logger=none",
    )
    assert metrics["status"] == "completed" and metrics["steps"] == 20_000
    assert metrics["params"]["x"] == pytest.approx(-1.0, abs=1e-3)
    early, late = samples[5_000], samples[19_999]
    assert late["tensors"] - early["tensors"] <= 5, samples
    # 15,000 kept graphs would be thousands of blocks and megabytes
    assert late["blocks"] - early["blocks"] < 2_000, samples
    assert late["rss"] - early["rss"] < 4 * 2**20, samples
