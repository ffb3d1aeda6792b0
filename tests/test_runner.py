"""The runner end to end: the post reproduced, every option of every group, the CLI."""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, compose_config, event_accumulator, read_metrics, scalars

from runner.build import build
from runner.config.check import ConfigError
from runner.run import run
from runner.train.loop import train
from runner.train.state import State

POST_W, POST_B = 1.92383, 1.05029


def post_loop(epochs: int = 200, lr: float = 0.1):
    """The post's code, verbatim, as the reference the runner must match bit for bit."""
    torch.manual_seed(42)
    x_data = torch.linspace(0, 1, 50)
    y_data = 2 * x_data + 1 + 0.1 * torch.randn(50)
    w = torch.tensor(0.0, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    losses = []
    for _ in range(epochs):
        y_pred = w * x_data + b
        loss = ((y_pred - y_data) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    return w.item(), b.item(), losses, loss


def count_nodes(loss: torch.Tensor) -> int:
    """An independent count of the backward graph's nodes (AccumulateGrad included)."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_linear_fit_reproduces_the_post_bit_for_bit(run_experiment):
    metrics, run_dir = run_experiment("experiment=linear_fit")
    w, b, losses, _ = post_loop()
    assert metrics["status"] == "completed"
    assert metrics["params"] == {"w": w, "b": b}
    assert abs(metrics["params"]["w"] - POST_W) < 1e-5
    assert abs(metrics["params"]["b"] - POST_B) < 1e-5
    assert metrics["learned"] == "y = 1.924x + 1.050"
    assert metrics["final_loss"] == losses[-1]
    assert metrics["best_loss"] == min(losses)
    assert metrics["steps"] == 200 and metrics["epochs"] == 200
    assert [v for _, v in scalars(run_dir, "loss/train")] == pytest.approx(losses, rel=1e-6)


def test_the_learned_line_names_the_loss_formulas_own_parameters_too(run_experiment):
    """A robust loss with a learned scale s: the fit and s, as metrics.json holds them."""
    metrics, _ = run_experiment(
        "experiment=linear_fit",
        "loss=expression",
        'loss.formula="mean(log(1 + ((pred - y) / s)**2))"',
        "+loss.params.s=1.0",
        "logger=none",
    )
    w, b, s = (metrics["params"][name] for name in "wbs")
    assert s != 1.0 and metrics["learned"] == f"y = {w:.3f}x + {b:.3f}, s = {s:.3f}"


def test_tensorboard_holds_every_tag_with_one_point_per_step(run_experiment):
    _, run_dir = run_experiment("experiment=linear_fit")
    acc = event_accumulator(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in ["loss/train", "param/w", "param/b", "grad/w", "grad/b", "grad/total_norm", "lr"]:
        assert tag in tags, tag
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == list(range(200)), tag
    for tag in ["graph/nodes", "graph/leaves", "graph/depth"]:
        assert len(acc.Scalars(tag)) == 200, tag
    *_, post_loss = post_loop(epochs=1)
    assert {e.value for e in acc.Scalars("graph/nodes")} == {count_nodes(post_loss)} == {7}
    assert {e.value for e in acc.Scalars("graph/leaves")} == {2}
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([0.1] * 200)
    w_curve = [e.value for e in acc.Scalars("param/w")]
    assert w_curve[-1] == pytest.approx(POST_W, abs=1e-5)
    assert w_curve[0] == pytest.approx(0.1 * 2 * 1.0, rel=0.2)  # first gd step from w = 0
    total = acc.Scalars("grad/total_norm")[0].value
    gw, gb = acc.Scalars("grad/w")[0].value, acc.Scalars("grad/b")[0].value
    assert total == pytest.approx(math.hypot(gw, gb), rel=1e-5)
    assert (run_dir / "graph.txt").read_text().startswith("MeanBackward0 → PowBackward0")


def test_log_every_n_steps_and_validation_split(run_experiment):
    _, run_dir = run_experiment(
        "experiment=linear_fit",
        "trainer.epochs=30",
        "trainer.log_every_n_steps=10",
        "dataset.val_fraction=0.2",
    )
    assert [s for s, _ in scalars(run_dir, "loss/train")] == [0, 10, 20, 29]
    assert [s for s, _ in scalars(run_dir, "loss/val")] == list(range(30))
    assert read_metrics(run_dir)["val_loss"] is not None


class DropoutNet(torch.nn.Module):
    """Batch norm and dropout: what a forward pass gives depends on the training mode."""

    def __init__(self, hidden=(16,), activation="tanh", in_features=1, out_features=1) -> None:
        super().__init__()
        width = hidden[0]
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, width),
            torch.nn.BatchNorm1d(width),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(width, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_validation_sees_the_model_in_eval_mode(tmp_path: Path):
    """loss/val is the eval-mode loss of the model as trained (dropout off, batch norm's running
    statistics, which looking does not move); training goes on in training mode."""
    overrides = ["experiment=sine_mlp", "model._target_=test_runner.DropoutNet", "logger=none"]
    overrides += ["trainer.epochs=3", "trainer.checkpoint_every=1000", "dataset.n=200"]
    metrics = run(compose_config(*overrides), tmp_path / "run")
    b = build(compose_config(*overrides), None)  # the same data, and a model to load into
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    b.model.load_state_dict(saved["modules"]["model"])
    b.model.eval()
    with torch.no_grad():
        by_hand = float(b.loss_fn(b.forward(b.data.x_val), b.data.y_val))
    assert metrics["val_loss"] == pytest.approx(by_hand, rel=1e-6)
    assert metrics["val_loss"] != pytest.approx(float(b.loss_fn(*train_mode(b))), rel=1e-3)


def test_an_early_stop_between_log_steps_reports_the_accuracy_it_ends_with(tmp_path: Path):
    """mlp_classify stopped early at an epoch's end that is no log step: acc and val_acc are
    the final parameters' (read back from the checkpoint and counted by hand), not the last
    log step's, and TensorBoard has them, and every other kind of data, at the last step."""
    overrides = ["experiment=mlp_classify", "trainer.log_every_n_steps=100"]
    overrides += [
        "trainer.early_stop={patience: 2, min_delta: 0.01}",
        "trainer.checkpoint_every=1000",
    ]
    metrics = run(compose_config(*overrides), tmp_path / "run")
    assert metrics["early_stopped_epoch"] is not None and (metrics["steps"] - 1) % 100 != 0
    b = build(compose_config(*overrides), None)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    b.model.load_state_dict(saved["modules"]["model"])
    with torch.no_grad():
        right = [
            (b.forward(x).argmax(-1) == y).float().mean().item()
            for x, y in ((b.data.x, b.data.y), (b.data.x_val, b.data.y_val))
        ]
    assert [metrics["acc"], metrics["val_acc"]] == pytest.approx(right, rel=1e-6)
    last = metrics["steps"] - 1
    assert scalars(tmp_path / "run", "acc/val")[-1] == (last, pytest.approx(right[1]))
    norm = torch.linalg.vector_norm(saved["modules"]["model"]["0.weight"]).item()
    assert scalars(tmp_path / "run", "param/0.weight")[-1] == (last, pytest.approx(norm))
    events = event_accumulator(tmp_path / "run")
    for tag in ("loss/train", "grad/total_norm", "graph/nodes"):
        assert events.Scalars(tag)[-1].step == last, tag
    assert events.Histograms("param_hist/0.weight")[-1].step == last


def test_an_early_stop_right_after_a_log_step_still_has_the_last_steps_histograms(tmp_path):
    """Logged at every step, the stop at an epoch's end comes after that step's log, which
    was no histogram step: the end writes them, of the final parameters."""
    overrides = ["experiment=mlp_classify", "trainer.log_every_n_steps=1"]
    overrides += ["trainer.early_stop={patience: 1, min_delta: 10}"]
    overrides += ["trainer.checkpoint_every=1000"]
    metrics = run(compose_config(*overrides), tmp_path / "run")
    last = metrics["steps"] - 1
    assert metrics["early_stopped_epoch"] == 2 and last % 100 != 0  # no histogram step
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    events = event_accumulator(tmp_path / "run")
    (*_, end) = events.Histograms("param_hist/0.weight")
    assert end.step == last
    weight = saved["modules"]["model"]["0.weight"]
    assert end.histogram_value.sum == pytest.approx(weight.sum().item(), rel=1e-5)
    assert events.Histograms("grad_hist/0.weight")[-1].step == last


def test_norms_of_huge_but_finite_gradients_are_finite(tmp_path):
    """A float32 sum of squares overflows long before the values do (lr=100 diverges)."""
    overrides = ["experiment=linear_fit", "optimizer.lr=100", "trainer.epochs=12"]
    run(compose_config(*overrides), tmp_path / "run")
    w, b = (dict(scalars(tmp_path / "run", f"grad/{name}")) for name in "wb")
    total = dict(scalars(tmp_path / "run", "grad/total_norm"))
    huge = [s for s in w if math.isfinite(w[s]) and math.isfinite(b[s]) and abs(b[s]) > 1e19]
    assert huge  # the case: |b| squared is past float32's largest
    for step in huge:
        assert total[step] == pytest.approx(math.hypot(w[step], b[step]), rel=1e-6)


def train_mode(b):
    b.model.train()
    with torch.no_grad():
        return b.forward(b.data.x_val), b.data.y_val


class NoClosure:
    """A hand-written optimizer that updates from `.grad` and never calls the closure."""

    def __init__(self, params, lr: float = 0.1) -> None:
        self.param_groups = [{"params": list(params), "lr": lr}]

    def step(self, closure=None) -> None:
        with torch.no_grad():
            for p in self.param_groups[0]["params"]:
                if p.grad is not None:
                    p -= self.param_groups[0]["lr"] * p.grad

    def zero_grad(self) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None


class ReturnsNothing(NoClosure):
    """The same, calling the closure first but returning None, as many hand-written ones do."""

    def step(self, closure=None) -> None:
        closure()
        super().step()


def test_a_users_optimizer_may_return_nothing_but_must_call_the_closure(tmp_path: Path):
    """The loss comes from the closure's own record; a step that never calls it computes no
    gradients, which is one config line rather than a traceback."""
    base = ["experiment=linear_fit", "logger=none"]
    metrics = run(
        compose_config(*base, "optimizer._target_=test_runner.ReturnsNothing"), tmp_path / "a"
    )
    w, b, _, _ = post_loop()
    assert metrics["params"] == {"w": pytest.approx(w, abs=1e-6), "b": pytest.approx(b, abs=1e-6)}
    with pytest.raises(ConfigError, match=r"NoClosure.step\(closure\) returned without calling"):
        run(compose_config(*base, "optimizer._target_=test_runner.NoClosure"), tmp_path / "b")


class Eta(torch.optim.Optimizer):
    """A torch optimizer whose step size is not called `lr`."""

    def __init__(self, params, eta: float = 0.1) -> None:
        super().__init__(params, {"eta": eta})

    def step(self, closure=None):
        loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p -= group["eta"] * p.grad
        return loss


class NoZeroGrad:
    """Its step calls the closure, whose first call is `optimizer.zero_grad()`."""

    def __init__(self, params, lr: float = 0.1) -> None:
        self.param_groups = [{"params": list(params), "lr": lr}]

    def step(self, closure=None):
        return closure()


def test_a_users_optimizer_needs_what_the_runner_calls_and_no_lr(tmp_path: Path):
    """What the loop, logging and checkpoints call is checked when the optimizer is built, so
    a missing method is one line, not a traceback at step 0 or at the first checkpoint; a
    group without `lr` trains and logs no `lr`."""
    base = ["experiment=linear_fit", "trainer.epochs=3", "trainer.log_every_n_steps=1"]
    eta = ["optimizer._target_=test_runner.Eta", "~optimizer.lr", "+optimizer.eta=0.1"]
    metrics = run(compose_config(*base, *eta), tmp_path / "eta")
    w, b, _, _ = post_loop(epochs=3)
    assert metrics["params"] == {"w": pytest.approx(w, abs=1e-6), "b": pytest.approx(b, abs=1e-6)}
    tags = event_accumulator(tmp_path / "eta").Tags()["scalars"]
    assert "loss/train" in tags and "lr" not in tags
    nothing = "optimizer._target_=test_runner.ReturnsNothing"
    with pytest.raises(ConfigError, match=r"NoZeroGrad' has no zero_grad; the runner uses step"):
        build(compose_config(*base, "optimizer._target_=test_runner.NoZeroGrad"), None)
    with pytest.raises(
        ConfigError,
        match=r"has no state_dict, load_state_dict; .* \(the last two for checkpoints\)",
    ):
        build(compose_config(*base, nothing, "trainer.checkpoint_every=1"), None)
    build(compose_config(*base, nothing), None)  # no checkpoints: no state_dict needed


def test_the_post_data_is_generated_in_the_post_order():
    from runner.build.data import synthetic

    torch.manual_seed(42)
    data = synthetic("2*x + 1", n=50, low=0, high=1, noise=0.1)
    torch.manual_seed(42)
    x = torch.linspace(0, 1, 50)
    assert torch.equal(data.x, x)
    assert torch.equal(data.y, 2 * x + 1 + 0.1 * torch.randn(50))


def test_uniform_sampling_and_val_split_are_seeded():
    from runner.build.data import synthetic

    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(synthetic("sin(x)", n=40, sampling="uniform", val_fraction=0.25))
    assert torch.equal(runs[0].x, runs[1].x) and torch.equal(runs[0].x_val, runs[1].x_val)
    assert runs[0].n == 30 and runs[0].x_val.shape == (10,)
    assert torch.all((runs[0].x >= 0) & (runs[0].x <= 1))


def test_csv_dataset_with_one_and_several_columns(run_experiment, tmp_path: Path):
    csv = tmp_path / "data.csv"
    rows = ["a,b,target"] + [
        f"{i / 20},{1 - i / 20},{3 * i / 20 - 2 * (1 - i / 20) + 0.5}" for i in range(21)
    ]
    csv.write_text("\n".join(rows) + "\n")
    metrics, _ = run_experiment(
        "experiment=linear_fit",
        "dataset=csv",
        f"dataset.path={csv}",
        "dataset.x=[a,b]",
        "dataset.y=target",
        "model.formula=p * x1 + q * x2 + r",
        "optimizer=lbfgs",
        "trainer.epochs=5",
    )
    p = metrics["params"]
    assert metrics["final_loss"] < 1e-8
    # x1 + x2 = 1, so only p - q and q + r... are identified: check the fit itself
    for i in (0, 7, 20):
        a, b = i / 20, 1 - i / 20
        assert p["p"] * a + p["q"] * b + p["r"] == pytest.approx(3 * a - 2 * b + 0.5, abs=1e-3)
    one, _ = run_experiment(
        "experiment=linear_fit",
        "dataset=csv",
        f"dataset.path={csv}",
        "dataset.x=a",
        "dataset.y=target",
        "trainer.epochs=3",
    )
    assert one["steps"] == 3


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=linear"],
        ["model=mlp", "model.hidden=[8]", "optimizer=adam", "optimizer.lr=0.05"],
        ["model=fourier", "optimizer=adam", "optimizer.lr=0.05"],
        ["model=expression", "model.formula=a * x + c", "+model.params.a=1.0"],
    ],
    ids=["linear", "mlp", "custom-target", "expression-params"],
)
def test_each_model_learns(run_experiment, overrides):
    metrics, run_dir = run_experiment("experiment=linear_fit", "trainer.epochs=60", *overrides)
    assert metrics["status"] == "completed"
    assert metrics["final_loss"] < 0.5 * scalars(run_dir, "loss/train")[0][1]


def test_expression_parameter_initialisers():
    from runner.build.models import Expression

    torch.manual_seed(0)
    m = Expression(
        "v * x + s + t + u",
        {
            "v": [1.0, 2.0, 3.0],
            "s": 2.5,
            "t": {"shape": [2], "init": "normal", "std": 0.1},
            "u": {"shape": [2, 2], "init": "uniform", "low": 0, "high": 1},
        },
    )
    params = dict(m.named_parameters())
    assert params["v"].tolist() == [1.0, 2.0, 3.0]
    assert params["s"].item() == 2.5 and params["t"].shape == (2,)
    assert params["u"].min() >= 0 and params["u"].max() <= 1
    assert set(params) == {"v", "s", "t", "u"}


@pytest.mark.parametrize(
    "spec, told",
    [
        ({"shape": [3], "std": 0.5}, "model.params.w.std is for init: normal, and init is zeros"),
        ({"shape": [3], "init": "uniform", "std": 2}, "std is for init: normal, and init is unif"),
        ({"shape": [3], "init": "normal", "low": 0}, "low is for init: uniform, and init is nor"),
        ({"shape": [3], "init": "normal", "std": -1}, "model.params.w.std=-1.0 must be positive"),
        ({"shape": [3], "init": "uniform", "low": 1, "high": -1}, "needs low < high, not 1.0"),
        ([1.0, True], "model.params.w=[1.0, True] is not a rectangular list of numbers"),
    ],
)
def test_a_parameter_setting_that_would_do_nothing_or_mislead_is_refused(spec, told):
    from runner.build.models import initial_value

    with pytest.raises(ConfigError, match=re.escape(told)):
        initial_value("model.params.w", spec)


def test_a_float64_run_starts_exactly_at_the_values_given(run_experiment):
    """Not at float32's nearest value to them, then widened."""
    given = ("+model.params.w=0.1", "+model.params.b=0.3", "trainer.epochs=0", "logger=none")
    metrics, _ = run_experiment("experiment=linear_fit", *given, "trainer.dtype=float64")
    assert metrics["params"] == {"w": 0.1, "b": 0.3}
    metrics, _ = run_experiment("experiment=linear_fit", *given)
    assert metrics["params"] == {"w": float(torch.tensor(0.1)), "b": float(torch.tensor(0.3))}


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "adam", "adamw", "rmsprop", "lbfgs"])
def test_each_optimizer_reduces_the_loss(run_experiment, optimizer):
    lr = {"gd": 0.1, "sgd": 0.1, "adam": 0.1, "adamw": 0.1, "rmsprop": 0.01, "lbfgs": 1.0}
    metrics, run_dir = run_experiment(
        "experiment=linear_fit",
        f"optimizer={optimizer}",
        f"optimizer.lr={lr[optimizer]}",
        "trainer.epochs=20",
    )
    losses = [v for _, v in scalars(run_dir, "loss/train")]
    assert metrics["status"] == "completed"
    assert losses[-1] < 0.5 * losses[0]


def test_gd_is_the_posts_update_and_zeroes_in_place():
    from runner.build.optim import GD

    w = torch.nn.Parameter(torch.tensor(1.0))
    opt = GD([w], lr=0.5)
    (w * 3).backward()
    grad = w.grad
    opt.step()
    assert w.item() == 1.0 - 0.5 * 3
    opt.zero_grad()
    assert w.grad is grad and w.grad.item() == 0.0  # zeroed in place, not set to None


@pytest.mark.parametrize(
    ("loss", "extra"),
    [
        ("mse", []),
        ("mae", []),
        ("huber", []),
        ("expression", ['loss.formula="mean(abs(pred - y)**3)"']),
    ],
)
def test_each_regression_loss_trains(run_experiment, loss, extra):
    metrics, run_dir = run_experiment(
        "experiment=linear_fit",
        f"loss={loss}",
        *extra,
        "optimizer=adam",
        "optimizer.lr=0.1",
        "trainer.epochs=40",
    )
    losses = [v for _, v in scalars(run_dir, "loss/train")]
    assert losses[-1] < 0.5 * losses[0]


def test_mse_keeps_the_posts_graph_and_mae_its_own(run_experiment):
    _, mse_dir = run_experiment("experiment=linear_fit", "trainer.epochs=1")
    _, mae_dir = run_experiment("experiment=linear_fit", "loss=mae", "trainer.epochs=1")
    assert scalars(mse_dir, "graph/nodes")[0][1] == 7
    assert "AbsBackward0" in (mae_dir / "graph.txt").read_text()


def test_classification_losses(run_experiment, tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 2, generator=g) - 2, torch.randn(40, 2, generator=g) + 2])
    labels = torch.cat([torch.zeros(40), torch.ones(40)])
    csv = tmp_path / "blobs.csv"
    csv.write_text(
        "u,v,label\n" + "".join(f"{a},{b},{int(c)}\n" for (a, b), c in zip(x.tolist(), labels))
    )
    common = [f"dataset.path={csv}", "dataset.x=[u,v]", "dataset.y=label"]
    common += ["dataset.task=classification", "trainer.epochs=30"]
    bce, _ = run_experiment(
        "dataset=csv",
        *common,
        "model=linear",
        "loss=bce",
        "optimizer=adam",
        "optimizer.lr=0.1",
    )
    ce, _ = run_experiment(
        "dataset=csv",
        *common,
        "model=mlp",
        "model.hidden=[8]",
        "model.out_features=2",
        "loss=cross_entropy",
        "optimizer=adam",
        "optimizer.lr=0.05",
    )
    assert bce["final_loss"] < 0.2 and ce["final_loss"] < 0.2  # ln 2 = 0.69 at the start


def test_objective_only_rosenbrock(run_experiment):
    metrics, run_dir = run_experiment("experiment=rosenbrock", "trainer.epochs=300")
    assert metrics["params"]["a"] != -1.5
    assert metrics["final_loss"] < scalars(run_dir, "loss/train")[0][1]
    assert set(metrics["params"]) == {"a", "b"}
    full, _ = run_experiment("experiment=rosenbrock")
    assert full["params"]["a"] == pytest.approx(1.0, abs=1e-3)
    assert full["params"]["b"] == pytest.approx(1.0, abs=1e-3)
    assert full["learned"] == "a = 1.000, b = 1.000"


@pytest.mark.parametrize(("scheduler", "expected_last"), [("step", 0.1 * 0.1), ("cosine", 0.0)])
def test_schedulers_change_the_learning_rate(run_experiment, scheduler, expected_last):
    _, run_dir = run_experiment(
        "experiment=linear_fit",
        f"scheduler={scheduler}",
        "trainer.epochs=40",
        "scheduler.step_size=30" if scheduler == "step" else "scheduler.eta_min=0.0",
    )
    lrs = [v for _, v in scalars(run_dir, "lr")]
    assert lrs[0] == pytest.approx(0.1)
    if scheduler == "step":
        assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(expected_last)
    else:
        assert lrs[20] == pytest.approx(0.05, rel=1e-3)
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_minibatches_accumulate_clip_and_dtype(run_experiment):
    metrics, run_dir = run_experiment(
        "experiment=linear_fit",
        "trainer.epochs=4",
        "trainer.batch_size=8",
    )
    assert metrics["steps"] == 4 * 7  # ceil(50 / 8) batches an epoch
    acc, _ = run_experiment(
        "experiment=linear_fit",
        "trainer.epochs=4",
        "trainer.batch_size=8",
        "trainer.accumulate=3",
    )
    assert acc["steps"] == 4 * 3  # 7 micro-batches an epoch, updates of 3, 3, 1
    _, clip_dir = run_experiment(
        "experiment=linear_fit",
        "trainer.epochs=3",
        "trainer.grad_clip=0.5",
    )
    # grad/total_norm is the norm clipping cut down, the update the clipped one: at w = b = 0
    # the post's gradients are -2 mean(x y) and -2 mean(y)
    torch.manual_seed(42)
    x = torch.linspace(0, 1, 50)
    y = 2 * x + 1 + 0.1 * torch.randn(50)
    unclipped = math.hypot(-2 * (x * y).mean().item(), -2 * y.mean().item())
    assert scalars(clip_dir, "grad/total_norm")[0] == (0, pytest.approx(unclipped, rel=1e-5))
    moved = math.hypot(scalars(clip_dir, "param/w")[0][1], scalars(clip_dir, "param/b")[0][1])
    assert unclipped > 4 and moved == pytest.approx(0.1 * 0.5, rel=1e-5)  # lr x grad_clip
    f64, _ = run_experiment("experiment=linear_fit", "trainer.dtype=float64")
    assert f64["params"]["w"] == pytest.approx(POST_W, abs=1e-5)
    assert f64["params"]["w"] != post_loop()[0]  # computed in float64, not float32


def test_micro_batches_update_as_one_batch_of_their_points(run_experiment):
    """sine_mlp's 800 training points in batches of 120 end with 80 points; micro-batches of
    60 in twos end with 60 + 20, which must weigh 3 : 1 (their points), not 1 : 1."""
    args = ("experiment=sine_mlp", "trainer.epochs=2", "trainer.log_every_n_steps=1")
    one, one_dir = run_experiment(*args, "trainer.batch_size=120")
    two, two_dir = run_experiment(*args, "trainer.batch_size=60", "trainer.accumulate=2")
    assert two["steps"] == one["steps"] == 2 * 7
    losses = [v for _, v in scalars(one_dir, "loss/train")]
    assert [v for _, v in scalars(two_dir, "loss/train")] == pytest.approx(losses, rel=1e-5)
    for key in ("final_loss", "best_loss", "val_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    nodes = {value for _, value in scalars(two_dir, "graph/nodes")}  # the weight's Mul in all
    assert nodes == {max(v for _, v in scalars(one_dir, "graph/nodes")) + 1}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_an_epochs_loss_weighs_each_minibatch_by_its_share_of_the_data(
    tmp_path: Path, accumulate: int
) -> None:
    """The post's 50 points in minibatches of 20, 20 and 10 (updates of 20, 20, 10 points, or
    of 40 and 10), nothing learned: each epoch's loss is the mean over all 50 points, which
    the plain mean of the batch losses would miss, for the short last batch weighs less."""
    cfg = compose_config(
        "experiment=linear_fit",
        "trainer.batch_size=20",
        f"trainer.accumulate={accumulate}",
        "trainer.epochs=3",
        "logger=none",
    )
    b = build(cfg, tmp_path)
    b.optimizer.param_groups[0]["lr"] = 0.0  # w = b = 0 throughout: the loss is mean(y**2)
    state = train(b, State(), [], None)
    expected = (b.data.y.double() ** 2).mean().item()
    assert state.epoch_loss.item() == pytest.approx(expected, rel=1e-6)
    assert state.fold().item() == pytest.approx(expected, rel=1e-6)  # the best epoch


def test_minibatch_runs_are_reproducible(run_experiment):
    args = ("experiment=sine_mlp", "trainer.epochs=2", "model.hidden=[8]", "dataset.n=200")
    a, _ = run_experiment(*args)
    b, _ = run_experiment(*args)
    assert a["params"] == b["params"] and a["final_loss"] == b["final_loss"]


def test_device_cpu_is_reported(run_experiment):
    metrics, _ = run_experiment("experiment=linear_fit", "trainer.epochs=2", "trainer.device=cpu")
    assert metrics["device"] == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_linear_fit_on_cuda(run_experiment):
    metrics, _ = run_experiment("experiment=linear_fit", "trainer.device=cuda")
    assert metrics["device"].startswith("cuda")
    assert metrics["params"]["w"] == pytest.approx(POST_W, abs=1e-4)


@pytest.mark.slow
def test_compile_runs_the_model_through_torch_compile(run_experiment):
    """aot_eager traces with dynamo and AOTAutograd as inductor does, without a C++ build
    (inductor on 2 CPU cores takes ~30 s): the graph shows the compiled region, and the
    numbers are eager's."""
    args = ("experiment=sine_mlp", "trainer.epochs=3", "dataset.n=300", "trainer.device=cpu")
    eager, eager_dir = run_experiment(*args)
    fast, run_dir = run_experiment(*args, "trainer.compile=aot_eager")
    graph = (run_dir / "graph.txt").read_text()
    assert "CompiledFunctionBackward" in graph and "AddmmBackward0" not in graph
    assert "AddmmBackward0" in (eager_dir / "graph.txt").read_text()
    assert fast["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-5)
    assert fast["steps"] == eager["steps"]


@pytest.mark.slow
def test_a_compiled_formula_model_is_one_compiled_region(run_experiment):
    """The formula's names were read with operator.itemgetter, where dynamo breaks the graph:
    the model ran as two compiled regions, the second nested in the first."""
    args = ("experiment=linear_fit", "trainer.epochs=3", "logger=none", "trainer.device=cpu")
    eager, _ = run_experiment(*args)
    fast, run_dir = run_experiment(*args, "trainer.compile=aot_eager")
    tree = (run_dir / "graph.txt").read_text().split("\n\n", 1)[1]
    assert tree.count("CompiledFunctionBackward") == 1, tree
    assert fast["params"] == pytest.approx(eager["params"], rel=1e-6)


@pytest.mark.parametrize(
    ("raised", "shown"),
    [
        (
            "maximum recursion depth exceeded\n\nfrom user code:\n  File ...",
            "maximum recursion depth exceeded",
        ),
        (  # a backend that failed: Dynamo's first line says so, its second says why
            "backend='openxla' raised:\nImportError: install torch_xla\n\nfrom user code:",
            "backend='openxla' raised: ImportError: install torch_xla",
        ),
    ],
)
def test_a_failed_compile_is_one_line(monkeypatch, raised, shown):
    """Dynamo's errors run to dozens of lines (the user code, the frames, the hints): the
    message keeps what says why, and how to run without compiling."""

    def compile_that_fails(forward, backend):
        def fails(x):
            raise RuntimeError(raised)

        return fails

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    cfg = compose_config("experiment=sine_mlp", "trainer.compile=aot_eager", "logger=none")
    with pytest.raises(ConfigError) as error:
        build(cfg, None)
    assert "\n" not in str(error.value) and "from user code" not in str(error.value)
    assert f"({shown}); set trainer.compile=false" in str(error.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_with_inductor_on_cuda(run_experiment):
    args = ("experiment=sine_mlp", "trainer.epochs=3", "trainer.device=cuda")
    eager, _ = run_experiment(*args)
    fast, run_dir = run_experiment(*args, "trainer.compile=true")
    assert "CompiledFunctionBackward" in (run_dir / "graph.txt").read_text()
    assert fast["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path):
    done = cli(
        "experiment=linear_fit", "trainer.device=cuda", f"hydra.run.dir={tmp_path}/r", cwd=ROOT
    )
    assert done.returncode != 0
    assert "trainer.device='cuda'" in done.stderr and "no CUDA device" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.slow
def test_cli_prints_the_posts_line(tmp_path: Path):
    done = cli("experiment=linear_fit", f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Learned: y = 1.924x + 1.050" in done.stdout
    metrics = read_metrics(tmp_path / "run")
    assert abs(metrics["params"]["w"] - POST_W) < 1e-5
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert "\r" not in done.stdout + done.stderr  # no progress bar when not on a TTY


@pytest.mark.slow
def test_the_runner_script_runs_from_the_project_root(tmp_path: Path):
    try:
        importlib.metadata.distribution("runner")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("runner is on the path but not pip-installed, so it has no script")
    script = Path(sys.executable).with_name("runner")
    done = subprocess.run(
        [
            str(script),
            "experiment=sine_mlp",
            "model=fourier",
            "trainer.epochs=1",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


USER_EXPERIMENT = """\
# @package _global_
# python -m runner --config-dir my_configs experiment=cubic
defaults:
  - override /optimizer: adam

seed: 0
dataset:
  formula: "0.5*x**3 - x + 2"
  low: -2.0
  high: 2.0
  n: 200
  noise: 0.05
model:
  formula: "a * x**3 + b * x + c"
optimizer:
  lr: 0.05
trainer:
  epochs: 600
  log_every_n_steps: 50
"""


@pytest.mark.slow
def test_an_experiment_written_only_in_yaml_converges(tmp_path: Path):
    """What a README reader would write: a formula dataset, a 3-parameter model, Adam."""
    (tmp_path / "my_configs" / "experiment").mkdir(parents=True)
    (tmp_path / "my_configs" / "experiment" / "cubic.yaml").write_text(USER_EXPERIMENT)
    done = cli(
        "--config-dir",
        str(tmp_path / "my_configs"),
        "experiment=cubic",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    params = read_metrics(tmp_path / "run")["params"]
    assert params == pytest.approx({"a": 0.5, "b": -1.0, "c": 2.0}, abs=0.05)
    assert "Learned: y = 0.5" in done.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_gd_updates_bit_for_bit_as_the_posts_line_for_any_shape_and_lr(dtype):
    """GD multiplies by a cached lr tensor in two foreach calls; each element must still be
    exactly `p -= lr * p.grad`, also after a scheduler changes lr."""
    from runner.build.optim import GD

    gen = torch.Generator().manual_seed(0)
    shapes = [(), (7,), (3, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    plain = [p.detach().clone() for p in params]
    opt = GD(params, lr=0.1)
    for lr in (0.1, 0.1, 0.037, 1e-3):
        opt.param_groups[0]["lr"] = lr
        grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for q, g in zip(plain, grads, strict=True):
            q -= lr * g
        for p, q in zip(params, plain, strict=True):
            assert p.dtype == dtype and torch.equal(p.detach(), q)


FAILING = """
calls = 0


def mse(input, target):
    global calls
    calls += 1
    if calls == 3:
        raise RuntimeError("a fault in the user's loss")
    return ((input - target) ** 2).mean()
"""


def test_a_run_that_fails_writes_the_metrics_every_run_has(tmp_path, monkeypatch):
    """DESIGN's keys, the losses it reached (one epoch, at the starting values: the mean of
    y squared), and the error that stopped it."""
    (tmp_path / "failing_loss.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config("experiment=linear_fit", "loss._target_=failing_loss.mse", "logger=none")
    with pytest.raises(RuntimeError, match="a fault in the user's loss"):
        run(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "failed" and metrics["error"].startswith("RuntimeError: a fault")
    assert metrics["steps"] == metrics["epochs"] == 1 and metrics["device"] == "cpu"
    start = (build(cfg, None).data.y ** 2).mean().item()  # w = b = 0
    assert metrics["final_loss"] == metrics["best_loss"] == pytest.approx(start, rel=1e-6)
    assert metrics["duration_s"] > 0


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_gone_before_the_summary_is_no_traceback(tmp_path, unbuffered):
    """`python -m runner ... | head -1`: the lines after the reader left go nowhere, quietly."""
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    env.pop("HYDRA_FULL_ERROR", None)
    args = ["experiment=linear_fit", "trainer.epochs=5", f"hydra.run.dir={tmp_path / 'run'}"]
    read, write = os.pipe()
    os.close(read)  # gone before the first line
    done = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    os.close(write)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


def test_paths_are_read_from_where_the_command_started_when_hydra_changes_directory(tmp_path):
    """`hydra.job.chdir=true` runs the job in its run directory; dataset.path stays the user's."""
    (tmp_path / "points.csv").write_text("x,y\n0,1\n1,3\n2,5\n")
    done = cli(
        "experiment=linear_fit",
        "dataset=csv",
        "dataset.path=points.csv",
        "hydra.job.chdir=true",
        "hydra.run.dir=run",
        "trainer.epochs=3",
        "logger=none",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert read_metrics(tmp_path / "run")["steps"] == 3
