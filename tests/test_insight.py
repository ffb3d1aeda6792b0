"""What autograd did, as TensorBoard shows it: the graph tree, saved bytes, gradient checks,
update ratios, the accumulation check, accuracy, figures and the Custom Scalars layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli, compose_config, event_accumulator, read_metrics, scalars

from runner.build import build
from runner.build import data as datasets
from runner.config.check import ConfigError
from runner.observe import draw, gradcheck
from runner.observe.gradcheck import GradCheckError, check_grads, sample_elements
from runner.run import run

POST_NODES = [
    "MeanBackward0",
    "PowBackward0",
    "SubBackward0",
    "AddBackward0",
    "MulBackward0",
    "AccumulateGrad (w)",
    "AccumulateGrad (b)",
]
NODE = re.compile(r"\w+Backward\d+|AccumulateGrad \(\w+\)")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs whose figures are not the point skip drawing them (~0.3 s a figure)."""
    monkeypatch.setattr(draw, "available", lambda: False)


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """linear_fit, short, with every insight on: 4 epochs, a figure every 2, check_grads."""
    run_dir = tmp_path_factory.mktemp("linear_fit")
    overrides = (
        "experiment=linear_fit",
        "trainer.epochs=4",
        "trainer.check_grads=true",
        "logger.figure_every_n_epochs=2",
    )
    return run(compose_config(*overrides), run_dir), run_dir


def test_linear_fit_tree_names_the_posts_nodes_in_order(linear_run):
    _, run_dir = linear_run
    acc = event_accumulator(run_dir)
    (event,) = acc.Tensors("graph/tree/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    chain, tree = text.split("\n", 1)
    assert NODE.findall(chain) == POST_NODES  # the one-line chain, in the post's order
    assert NODE.findall(tree) == POST_NODES  # the tree, depth first
    graph_txt = (run_dir / "graph.txt").read_text()
    assert NODE.findall(graph_txt.split("\n\n")[0]) == POST_NODES
    assert [v for _, v in scalars(run_dir, "graph/leaves")] == [2.0] * 4
    assert scalars(run_dir, "graph/nodes")[0] == (0, 7.0)


def test_saved_bytes_grow_linearly_with_n(run_experiment, no_figures):
    saved = []
    for n in (50, 100, 200):
        _, run_dir = run_experiment("experiment=linear_fit", f"dataset.n={n}", "trainer.epochs=1")
        ((step, value),) = scalars(run_dir, "graph/saved_bytes")
        assert step == 0
        saved.append(value)
    # a + b n: equal steps in n add equal bytes (x and the residual, 4 bytes each a point)
    assert saved[1] - saved[0] > 0
    assert saved[2] - saved[1] == 2 * (saved[1] - saved[0])
    assert (saved[1] - saved[0]) / 50 == 8.0


@pytest.mark.parametrize(
    "several", [("trainer.batch_size=10", "trainer.accumulate=2"), ("optimizer=lbfgs",)]
)
def test_a_step_of_several_forwards_counts_the_saved_bytes_of_one(
    run_experiment, no_figures, several
):
    """Accumulation and LBFGS run several forwards a step: graph/saved_bytes is what one of
    them saved (the graph the other graph/ scalars describe), as a step of one forward of
    that batch saves, not a sum that a reused address would cut short."""
    one = "trainer.batch_size=10" if "trainer.accumulate=2" in several else "optimizer=gd"
    _, reference = run_experiment("experiment=linear_fit", one, "trainer.epochs=2")
    _, tested = run_experiment("experiment=linear_fit", *several, "trainer.epochs=2")
    expected, got = (scalars(run_dir, "graph/saved_bytes")[0] for run_dir in (reference, tested))
    assert got == expected and got[1] > 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_check_grads_passes_on_every_shipped_experiment(experiment, tmp_path):
    b = build(compose_config(f"experiment={experiment}", "logger=none"), tmp_path)
    before = {n: p.detach().clone() for n, p in b.params.items()}
    result = check_grads(b)
    assert result["max_abs_error"] <= gradcheck.ATOL
    assert result["max_rel_error"] <= gradcheck.RTOL
    assert result["elements"] == min(result["of_elements"], result["elements"]) > 0
    for name, p in b.params.items():  # the check works on copies
        assert torch.equal(p.detach(), before[name]) and p.grad is None


def test_check_grads_logged_and_in_metrics(linear_run):
    metrics, run_dir = linear_run
    assert metrics["gradcheck"]["elements"] == 2
    assert read_metrics(run_dir)["gradcheck"]["max_abs_error"] < 1e-6
    ((step, value),) = scalars(run_dir, "gradcheck/max_rel_error")
    assert step == 0 and value < 1e-6


def test_check_grads_catches_a_wrong_backward(run_experiment):
    with pytest.raises(GradCheckError, match=r"d loss / d w is 0 by autograd but -2\.3"):
        run_experiment("experiment=linear_fit", "model=broken_grad", "trainer.check_grads=true")


def test_wrong_backward_trains_silently_without_the_check(run_experiment, no_figures):
    metrics, _ = run_experiment("experiment=linear_fit", "model=broken_grad", "trainer.epochs=20")
    assert metrics["status"] == "completed"
    assert metrics["params"]["w"] == 0.0  # its gradient is w itself: w never moves
    assert metrics["learned"] == f"w = 0.000, b = {metrics['params']['b']:.3f}"  # what is wrong


@pytest.mark.slow
def test_check_grads_failure_exits_with_one_clear_message(tmp_path):
    out = cli(
        "experiment=linear_fit",
        "model=broken_grad",
        "trainer.check_grads=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "autograd and finite differences disagree" in out.stderr
    assert "d loss / d w" in out.stderr
    assert "graph (WrongMulBackward, a torch.autograd.Function) is the likely cause" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


class Float32Inside(torch.nn.Module):
    """A line that computes in float32 whatever its parameters are: trains, cannot be checked."""

    def __init__(self, hidden=(), activation="tanh", in_features=1, out_features=1) -> None:
        super().__init__()
        self.line = torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.line(x.float().unsqueeze(-1)).squeeze(-1)


def test_check_grads_without_a_custom_backward_blames_no_custom_backward(tmp_path):
    """At relu's kink the central difference is 1.5 and autograd's 1 is right: the message
    must not send the user after a custom backward that does not exist; a model that fixes
    its own dtype cannot run in float64 and gets one line."""
    kink = compose_config("experiment=derivative", 'loss.formula="relu(x - 3) + x"')
    with pytest.raises(GradCheckError, match="No custom backward is in the graph"):
        check_grads(build(kink, None))
    # sqrt(w) at w = 0: autograd's gradient is infinite, the central difference NaN
    nan = compose_config("experiment=linear_fit", 'model.formula="sqrt(w) * x + b"')
    with pytest.raises(GradCheckError, match=r"d loss / d w is -inf .* has no derivative"):
        check_grads(build(nan, None))
    own_dtype = compose_config("experiment=sine_mlp", "model._target_=test_insight.Float32Inside")
    with pytest.raises(ConfigError, match="runs float64 copies of the model, which failed"):
        check_grads(build(own_dtype, None))


def test_sample_elements_caps_big_models():
    params = {
        "big": torch.nn.Parameter(torch.zeros(100, 100)),
        "small": torch.nn.Parameter(torch.zeros(3)),
    }
    picks = sample_elements(params, 50)
    assert 45 <= len(picks) <= 55
    assert {name for name, _ in picks} == {"big", "small"}  # every tensor gets a look
    assert picks == sample_elements(params, 50)  # seeded: the same elements every time
    assert len(sample_elements({"w": torch.nn.Parameter(torch.zeros(4))}, 50)) == 4


def test_update_ratio_per_parameter(linear_run):
    _, run_dir = linear_run
    w = scalars(run_dir, "ratio/w")
    b = scalars(run_dir, "ratio/b")
    assert [s for s, _ in w] == [0, 1, 2, 3]
    # w starts at 0, so its first update is all of it: ||dw|| / ||w|| = 1
    assert w[0][1] == pytest.approx(1.0)
    assert b[0][1] == pytest.approx(1.0)
    assert 0 < w[3][1] < w[1][1] < 1  # then the updates shrink next to the parameter
    values = [v for _, v in scalars(run_dir, "param/w")]  # w after each step
    for step in (1, 2, 3):
        update = abs(values[step] - values[step - 1])
        assert w[step][1] == pytest.approx(update / abs(values[step]), rel=1e-4)


def test_first_step_gradients_are_the_closed_form(linear_run):
    """At w = b = 0 the MSE's gradients are -2 mean(x y) and -2 mean(y): the logged numbers
    must be those, worked out here from the post's data without autograd."""
    _, run_dir = linear_run
    torch.manual_seed(42)
    x = torch.linspace(0, 1, 50)
    y = 2 * x + 1 + 0.1 * torch.randn(50)
    grad_w, grad_b = (-2 * (x * y).mean()).item(), (-2 * y.mean()).item()
    logged = {tag: scalars(run_dir, tag)[0][1] for tag in ("grad/w", "grad/b", "grad/total_norm")}
    assert logged["grad/w"] == pytest.approx(grad_w, rel=1e-6)
    assert logged["grad/b"] == pytest.approx(grad_b, rel=1e-6)
    assert logged["grad/total_norm"] == pytest.approx((grad_w**2 + grad_b**2) ** 0.5, rel=1e-6)
    assert scalars(run_dir, "param/w")[0][1] == pytest.approx(-0.1 * grad_w, rel=1e-6)


def test_figures_are_images_in_the_event_file(linear_run):
    _, run_dir = linear_run
    acc = event_accumulator(run_dir)
    fit = acc.Images("figure/fit")
    # start, epoch 2 (step 1), end (step 3): the last epoch's is the end's
    assert [e.step for e in fit] == [0, 1, 3]
    assert all(e.encoded_image_string.startswith(b"\x89PNG") for e in fit)
    assert (fit[0].width, fit[0].height) == (600, 400)
    (landscape,) = acc.Images("figure/landscape")
    assert landscape.step == 3 and landscape.encoded_image_string.startswith(b"\x89PNG")


def test_custom_scalars_layout(linear_run):
    from tensorboard.plugins.custom_scalar import layout_pb2

    _, run_dir = linear_run
    (event,) = event_accumulator(run_dir).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: [list(ch.multiline.tag) for ch in c.chart] for c in layout.category}
    assert set(charts) == {"loss", "gradients", "parameters", "autograd graph"}
    tags = set(event_accumulator(run_dir).Tags()["scalars"])
    for category, regexes in charts.items():  # every chart shows at least one logged tag
        for chart in regexes:
            assert any(re.match(r, t) for r in chart for t in tags), (category, chart)


def test_model_graph_for_modules(linear_run):
    _, run_dir = linear_run
    assert event_accumulator(run_dir).Tags()["graph"]  # the Expression module traced


def test_model_graph_shows_the_mlp_and_leaves_its_mode_alone(run_experiment, no_figures):
    metrics, run_dir = run_experiment("experiment=sine_mlp", "trainer.epochs=1")
    ops = {node.op for node in event_accumulator(run_dir).Graph().node}
    assert {"aten::linear", "aten::tanh"} <= ops
    assert metrics["status"] == "completed"


def test_accumulated_micro_batches_make_the_full_batch_update(run_experiment, no_figures):
    """Five micro-batches of 10 points, one update an epoch, give the full batch's update:
    the gradients add up across micro-batches and are zeroed between updates."""
    common = ("experiment=linear_fit", "trainer.epochs=20", "logger=none")
    full, _ = run_experiment(*common)
    accumulated, _ = run_experiment(*common, "trainer.batch_size=10", "trainer.accumulate=5")
    assert accumulated["steps"] == full["steps"] == 20
    for name in ("w", "b"):
        assert accumulated["params"][name] == pytest.approx(full["params"][name], rel=1e-5)


def test_logistic_blobs_logs_accuracy(run_experiment, no_figures):
    metrics, run_dir = run_experiment("experiment=logistic_blobs", "trainer.epochs=20")
    acc_train = scalars(run_dir, "acc/train")
    acc_val = scalars(run_dir, "acc/val")
    assert [s for s, _ in acc_train] == [s for s, _ in scalars(run_dir, "loss/train")]
    assert acc_train[-1][1] > 0.9 and acc_val[-1][1] > 0.85
    assert all(0.0 <= v <= 1.0 for _, v in acc_train + acc_val)
    assert metrics["status"] == "completed"
    (w1, w2), b = metrics["params"]["weight"][0], metrics["params"]["bias"][0]
    assert metrics["learned"] == f"weight = [[{w1:.3f}, {w2:.3f}]], bias = {b:.3f}"


def test_mlp_classify_learns(run_experiment, no_figures):
    metrics, run_dir = run_experiment("experiment=mlp_classify", "trainer.epochs=3")
    assert scalars(run_dir, "acc/train")[-1][1] > 0.7  # three classes: chance is 1/3
    assert "acc/val" in event_accumulator(run_dir).Tags()["scalars"]


def test_regression_has_no_accuracy(linear_run):
    _, run_dir = linear_run
    assert not [t for t in event_accumulator(run_dir).Tags()["scalars"] if t.startswith("acc/")]


def test_blobs_dataset():
    torch.manual_seed(0)
    d = datasets.blobs(n=90, classes=3, features=2, spread=0.1, distance=4.0)
    assert d.x.shape == (90, 2) and d.y.shape == (90,)
    assert torch.bincount(d.y.long()).tolist() == [30, 30, 30]
    for c in range(3):  # each class sits around its own centre, 2 from the origin
        centre = d.x[d.y == c].mean(0)
        assert centre.norm().item() == pytest.approx(2.0, abs=0.1)
    one = datasets.blobs(n=10, classes=2, features=1)
    assert one.x.shape == (10,) and one.features == 1
    drawn = {}  # trainer.dtype=float64: the same points as float32, in more bits
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        drawn[dtype] = datasets.blobs(n=50, val_fraction=0.2, dtype=dtype)
    assert drawn[torch.float64].x.dtype == torch.float64
    assert torch.equal(drawn[torch.float64].x, drawn[torch.float32].x.double())
    assert torch.equal(drawn[torch.float64].y_val, drawn[torch.float32].y_val)
    with pytest.raises(ValueError, match="dataset.classes"):
        datasets.blobs(classes=1)


@pytest.mark.parametrize(("log_every", "every"), [(5, 7), (25, 10)])
def test_histograms_and_graph_stats_keep_their_cadence_between_log_steps(
    tmp_path, log_every, every
):
    """`logger.*_every_n_steps` need not be multiples of `trainer.log_every_n_steps`: each
    multiple of N is covered by the first log step at or after it, and the last step too."""
    run_dir = tmp_path / "run"
    overrides = (
        "experiment=sine_mlp",
        "trainer.epochs=4",
        f"trainer.log_every_n_steps={log_every}",
    )
    overrides += (f"logger.histogram_every_n_steps={every}", f"logger.graph_every_n_steps={every}")
    metrics = run(compose_config(*overrides, "logger.figure_every_n_epochs=null"), run_dir)
    last = metrics["steps"] - 1
    logged = [step for step, _ in scalars(run_dir, "loss/train")]
    assert logged[-1] == last and any(step % every for step in logged)
    covering = {min(s for s in logged if s >= m) for m in range(0, last + 1, every)}
    expected = sorted(covering | {last})
    assert [step for step, _ in scalars(run_dir, "graph/nodes")] == expected
    events = event_accumulator(run_dir)
    for tag in ("param_hist/0.weight", "grad_hist/0.weight"):
        assert [e.step for e in events.Histograms(tag)] == expected
