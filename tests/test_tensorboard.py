"""The TensorBoard logger, read back through a real TensorBoard server's HTTP API."""

from __future__ import annotations

import io
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tb_server import Server, tensorboard, wait_for
from tensorboard.backend.event_processing import event_accumulator as ea

from runner.log.tensorboard import Null, TensorBoard, histogram

N = 6  # the main run logs steps 0..N-1
HPARAMS = {"optimizer.lr": 0.1, "model": "mlp", "trainer.amp": True, "seed": 3}
METRICS = {"hparam/final_loss": 0.25, "hparam/best_loss": 0.125}
LAYOUT = {"loss": {"train vs val": ["Multiline", [r"loss/.*"]]}}
TREE = "MeanBackward0\n  PowBackward0\n    AccumulateGrad (w)"


def weights(step: int) -> torch.Tensor:
    return torch.arange(6.0).reshape(2, 3) + step  # values step..step+5


def picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def untraceable() -> torch.nn.Module:
    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> float:
            return float(x.sum())  # not a tensor: torch.jit.trace refuses it

    return Sum()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs: `main` logs every kind of data, `diverged` ends with a failure status, and
    `resumed` goes on from a checkpoint at step 5 of a run that had reached step 9."""
    logs = tmp_path_factory.mktemp("tb") / "logs"
    tb = TensorBoard(logs / "main")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    tb.graph(model, torch.randn(4, 3))
    assert model.training  # the caller's module keeps its mode
    w, pixels = torch.zeros(2, 3), picture()
    for step in range(N):
        tb.scalars(step, {"loss/train": 1 / (step + 1), "lr": 0.1})
        w.copy_(weights(step))
        tb.histograms(step, {"param_hist/w": w})
        w.add_(1000.0)  # the next update: the logged values must not change
    tb.text(0, "graph/tree", TREE)
    tb.image(0, "figure/fit", pixels)
    pixels[:] = 0  # a canvas reuses its buffer
    tb.layout(LAYOUT)
    tb.hparams(HPARAMS, METRICS, step=N - 1, status="completed")
    tb.close()
    tb.close()
    tb.scalars(N, {"loss/train": 99.0})  # after close: dropped
    tb.text(N, "graph/tree", "late")
    tb.flush()

    diverged = TensorBoard(logs / "diverged")
    diverged.scalars(0, {"loss/train": 1.0})
    diverged.scalars(1, {"loss/train": math.nan})
    lost = {"hparam/final_loss": math.nan, "hparam/best_loss": 1.0}
    diverged.hparams({**HPARAMS, "optimizer.lr": 10.0}, lost, step=1, status="diverged")
    diverged.close()

    first = TensorBoard(logs / "resumed")
    for step in range(10):
        first.scalars(step, {"x": float(step)})
        if step % 3 == 0:
            first.histograms(step, {"param_hist/w": weights(step)})
    first.hparams(HPARAMS, {"hparam/final_loss": 9.0}, step=9, status="interrupted")
    first.close()
    second = TensorBoard(logs / "resumed")
    second.resumed(5)
    for step in range(5, 8):
        second.scalars(step, {"x": 100.0 + step})
        if step % 3 == 0:
            second.histograms(step, {"param_hist/w": weights(100 + step)})
    second.hparams(HPARAMS, {"hparam/final_loss": 7.0}, step=7, status="completed")
    second.close()
    return logs


@pytest.fixture(scope="module")
def server(logs: Path):
    with tensorboard(logs) as server:
        yield server


RESUMED = [(s, float(s)) for s in range(5)] + [(s, 100.0 + s) for s in range(5, 8)]


def test_each_tag_holds_one_kind_of_data(server: Server) -> None:
    assert sorted(server.runs()) == ["diverged", "main", "resumed"]
    scalars = ["hparam/best_loss", "hparam/final_loss", "loss/train", "lr"]
    assert server.tags("scalars")["main"] == scalars
    assert server.tags("histograms")["main"] == ["param_hist/w"]
    assert server.tags("text")["main"] == ["graph/tree/text_summary"]  # SummaryWriter's suffix
    assert list(server.get("plugin/images/tags")["main"]) == ["figure/fit"]


def test_scalars_every_step_in_order_and_nothing_after_close(server: Server) -> None:
    assert server.scalars("main", "loss/train") == [
        (s, pytest.approx(1 / (s + 1))) for s in range(N)
    ]
    assert [step for step, _ in server.scalars("main", "lr")] == list(range(N))


def test_histograms_count_every_element_as_it_was_when_logged(server: Server) -> None:
    rows = server.histograms("main", "param_hist/w")
    assert [step for step, _ in rows] == list(range(N))
    for step, buckets in rows:
        assert sum(count for _, _, count in buckets) == weights(step).numel()
        filled = [(left, right) for left, right, count in buckets if count > 0]
        assert step - 1 <= filled[0][0] and filled[-1][1] <= step + 6  # not the +1000 after


def test_text_is_a_code_block(server: Server) -> None:
    ((step, html),) = server.texts("main", "graph/tree/text_summary")
    assert step == 0
    assert "<pre><code>" + TREE + "\n</code></pre>" in html  # indents kept, not reflowed


def test_image_is_the_rgb_array_as_it_was_when_logged(server: Server) -> None:
    ((step, png),) = server.images("main", "figure/fit")
    assert step == 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), picture())


def test_custom_scalars_layout(server: Server) -> None:
    layout = server.layout()
    shown = {
        category["title"]: {
            c["title"]: ["Multiline", c["multiline"]["tag"]] for c in category["chart"]
        }
        for category in layout["category"]
    }
    assert shown == LAYOUT


def test_graph_of_the_model(server: Server) -> None:
    info = server.graph_info()
    assert info["main"]["run_graph"]
    assert "diverged" not in info and "resumed" not in info
    graph = server.graph("main")
    assert 'op: "aten::linear"' in graph and 'op: "aten::tanh"' in graph


def test_hparams_one_row_per_run_with_its_status(server: Server) -> None:
    experiment = server.hparams_experiment()
    assert sorted(h["name"] for h in experiment["hparamInfos"]) == sorted(HPARAMS)
    types = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    assert types["trainer.amp"] == "DATA_TYPE_STRING" and types["seed"] == "DATA_TYPE_FLOAT64"
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(METRICS)

    groups = {group["name"]: group for group in server.session_groups()}
    assert sorted(groups) == ["diverged", "main", "resumed"]
    main = groups["main"]
    assert main["hparams"] == {**HPARAMS, "trainer.amp": "true"}
    assert {m["name"]["tag"]: m["value"] for m in main["metricValues"]} == METRICS
    assert {m["trainingStep"] for m in main["metricValues"]} == {N - 1}  # the last step
    assert [s["status"] for s in main["sessions"]] == ["STATUS_SUCCESS"]
    diverged = groups["diverged"]
    assert {m["name"]["tag"]: m["value"] for m in diverged["metricValues"]} == {
        "hparam/final_loss": "NaN",
        "hparam/best_loss": 1.0,
    }
    assert [s["status"] for s in diverged["sessions"]] == ["STATUS_FAILURE"]
    # interrupted at step 9, resumed in place from step 5: the resumed run's end and metric
    resumed = groups["resumed"]
    assert [s["status"] for s in resumed["sessions"]] == ["STATUS_SUCCESS"]
    assert [(m["trainingStep"], m["value"]) for m in resumed["metricValues"]] == [(7, 7.0)]
    # the metric values are scalars at the last step, after every other step of the run
    assert server.scalars("main", "hparam/final_loss") == [(N - 1, 0.25)]


def test_resumed_run_shows_each_step_once_with_the_new_values(server: Server) -> None:
    assert server.scalars("resumed", "x") == RESUMED
    rows = server.histograms("resumed", "param_hist/w")
    assert [step for step, _ in rows] == [0, 3, 6]
    new = [left for left, _, count in rows[-1][1] if count > 0]
    assert new[0] >= 100  # step 6 from the second writer


@pytest.mark.slow
def test_resumed_run_with_the_rust_data_server(logs: Path) -> None:
    """`tensorboard --logdir` uses the Rust data server where installed; it purges too."""
    pytest.importorskip("tensorboard_data_server")
    with tensorboard(logs, load_fast=True) as server:
        read = lambda: server.scalars("resumed", "x")  # noqa: E731
        assert wait_for(read, lambda points: points == RESUMED) == RESUMED


@pytest.mark.parametrize(
    "values",
    [
        torch.randn(4096, generator=torch.Generator().manual_seed(0)),
        torch.tensor([3.0, 12.0, 27.0]),
    ],
)
def test_histograms_hold_what_add_histogram_would_write(values: torch.Tensor) -> None:
    """torch's binning against SummaryWriter's own (NumPy's), bucket by bucket."""
    from torch.utils.tensorboard.summary import histogram as reference

    ours = histogram("h", values).value[0].histo
    theirs = reference("h", values.double().numpy(), bins=30).value[0].histo
    for field in ("min", "max", "num", "sum", "sum_squares"):
        assert getattr(ours, field) == pytest.approx(getattr(theirs, field), rel=1e-12), field
    assert list(ours.bucket_limit) == pytest.approx(list(theirs.bucket_limit), rel=1e-12)
    assert list(ours.bucket) == list(theirs.bucket)


def test_a_constant_tensor_is_one_bucket_a_unit_wide_as_numpy_makes_it() -> None:
    histo = histogram("h", torch.full((64,), 0.25)).value[0].histo
    assert (histo.min, histo.max, histo.num, sum(histo.bucket)) == (0.25, 0.25, 64, 64)
    (full,) = [i for i, count in enumerate(histo.bucket) if count]
    assert histo.bucket[full] == 64
    assert histo.bucket_limit[full - 1] <= 0.25 < histo.bucket_limit[full]  # NumPy's [a, b)
    assert (histo.bucket_limit[0], histo.bucket_limit[-1]) == (-0.25, 0.75)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_parameter_that_left_the_finite_numbers_has_no_histogram(bad: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        histogram("param_hist/w", torch.tensor([1.0, bad]))


def test_a_steps_scalars_from_several_calls_are_one_event(tmp_path: Path) -> None:
    """Observers log a step's scalars in turn (loss, then graph statistics); they are written
    as one record, and a later step, another kind of data or close writes what is pending."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tb = TensorBoard(tmp_path)
    tb.scalars(5, {"loss/train": 1.0})
    tb.scalars(5, {"graph/nodes": 4.0})
    tb.scalars(3, {"loss/val": 2.0})  # validation losses of earlier epochs come after
    tb.text(5, "graph/tree", TREE)
    tb.scalars(6, {"loss/train": 0.5})
    tb.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    events = [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
    written = [(e.step, [v.tag for v in e.summary.value]) for e in events]
    assert written == [
        (5, ["loss/train", "graph/nodes"]),
        (3, ["loss/val"]),
        (5, ["graph/tree/text_summary"]),  # add_text's tag
        (6, ["loss/train"]),
    ]


def steps_in(log_dir: Path) -> list[int]:
    """The step of every summary record in the event files, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(log_dir.glob("events.out.tfevents.*"))
    return [e.step for f in files for e in EventFileLoader(str(f)).Load() if e.summary.value]


def test_the_writer_takes_its_work_once_an_interval_and_at_flush(tmp_path: Path) -> None:
    """Log calls pile up on the training thread and the writer takes them together: none of
    them before its interval has passed, all of them at `flush` (what a checkpoint calls)."""
    tb = TensorBoard(tmp_path, handoff_secs=3600)
    for step in range(50):
        tb.scalars(step, {"loss/train": 1.0 / (step + 1)})
    tb.text(49, "graph/tree", TREE)
    time.sleep(0.5)  # time enough for a writer that had been given anything
    assert steps_in(tmp_path) == []
    tb.flush()
    assert steps_in(tmp_path) == [*range(50), 49]
    tb.close()


def test_the_last_log_step_is_written_without_another_call(tmp_path: Path) -> None:
    """A slow run's last log step, its scalars still open for more of the same step, is in
    the file after the writer's interval, with no later call to push it out."""
    tb = TensorBoard(tmp_path, handoff_secs=0.2)
    tb.scalars(0, {"loss/train": 1.0})
    tb.text(0, "graph/tree", TREE)
    tb.scalars(7, {"loss/train": 0.5})
    assert wait_for(lambda: steps_in(tmp_path), lambda steps: steps == [0, 0, 7]) == [0, 0, 7]
    tb.close()


def test_a_failing_write_never_reaches_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tb = TensorBoard(tmp_path)
    # the empty tensor has no histogram, a failed write; the other one of that step is written
    tb.histograms(0, {"param_hist/empty": torch.zeros(0), "param_hist/w": torch.ones(3)})
    tb.scalars(0, {"loss/train": 1.0})
    with caplog.at_level(logging.WARNING, logger="runner.log.tensorboard"):
        tb.close()
    (record,) = caplog.records
    assert "ValueError" in record.getMessage()
    events = accumulator(tmp_path)
    assert [e.step for e in events.Scalars("loss/train")] == [0]  # went on
    assert [e.step for e in events.Histograms("param_hist/w")] == [0]


def test_untraceable_model_costs_only_the_graph(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    tb = TensorBoard(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="runner.log.tensorboard"):
        tb.graph(untraceable(), torch.ones(2))
        tb.scalars(0, {"loss/train": 1.0})
        tb.close()
    assert "no model graph" in caplog.text and "WARNING" not in caplog.text
    assert capfd.readouterr() == ("", "")  # nothing printed over the progress bar
    acc = accumulator(tmp_path)
    assert not acc.Tags()["graph"] and acc.Scalars("loss/train")


def test_files_appear_at_the_first_write_and_flush_waits_for_them(tmp_path: Path) -> None:
    tb = TensorBoard(tmp_path / "run")
    tb.resumed(3)
    assert not (tmp_path / "run").exists()  # the writer is made lazily, with the purge step
    steps = range(3, 2000)  # enough that some would still be queued without the flush
    for step in steps:
        tb.scalars(step, {"loss/train": float(step), "lr": 0.1})
    tb.flush()
    assert [e.step for e in accumulator(tmp_path / "run").Scalars("lr")] == list(steps)
    tb.close()


def test_null_logs_nothing(tmp_path: Path) -> None:
    null = Null(log_dir=None)
    null.scalars(0, {"a": 1.0})
    null.histograms(0, {"h": torch.ones(3)})
    null.text(0, "t", "x")
    null.image(0, "i", picture())
    null.layout(LAYOUT)
    null.graph(torch.nn.Linear(1, 1), torch.ones(1, 1))
    null.hparams(HPARAMS, METRICS, 0, "completed")
    null.resumed(0)
    null.flush()
    null.close()
    null.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_import_leaves_tensorboard_for_the_writer_thread() -> None:
    check = "import sys, runner.log.tensorboard; print('tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def accumulator(run_dir: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return acc
