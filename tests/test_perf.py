"""Performance contracts that can be checked exactly: no host syncs between log steps, the
start-up path imports nothing heavy it does not use, and the hand-written TensorBoard
events are what `torch.utils.tensorboard` writes. Timings live in benchmarks/."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_config, event_accumulator

from runner.log import events
from runner.build import Built, build
from runner.log.tensorboard import TensorBoard
from runner.train.loop import Loop, train

# What moves a value from the device to the host: on a GPU each one waits for the device.
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
SYNCS += ("__array__", "__format__")


@contextmanager
def counted_syncs(built: Built) -> Iterator[Counter[int]]:
    """Count host syncs made by the runner's code, by the step they happen in.

    Steps are counted by wrapping `optimizer.step` (-1: before the first). A sync counts
    when the first caller outside torch is runner code; torch.optim's own `.item()` on the
    step counters it keeps on the CPU is no device sync and is not counted.
    """
    step = [-1]
    syncs: Counter[int] = Counter()
    optimizer_step = built.optimizer.step

    def counted_step(*args, **kwargs):
        step[0] += 1
        return optimizer_step(*args, **kwargs)

    def by_runner() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith("torch.optim"):
                return False
            if not name.startswith("torch"):
                return name.startswith("runner")
            frame = frame.f_back
        return False

    def wrap(original):
        def method(self, *args, **kwargs):
            if by_runner():
                syncs[step[0]] += 1
            return original(self, *args, **kwargs)

        return method

    saved = {name: torch.Tensor.__dict__.get(name) for name in SYNCS}
    built.optimizer.step = counted_step
    for name in SYNCS:
        setattr(torch.Tensor, name, wrap(getattr(torch.Tensor, name)))
    try:
        yield syncs
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


@pytest.mark.parametrize(
    "overrides",
    [
        ("experiment=linear_fit", "trainer.epochs=35"),  # full batch: every step ends an epoch
        pytest.param(  # minibatches, Adam, a validation split (a row every epoch), histograms
            ("experiment=sine_mlp", "trainer.epochs=3", "dataset.n=500")
            + ("logger.histogram_every_n_steps=10",),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["linear_fit", "sine_mlp"],
)
def test_no_host_sync_between_log_steps(overrides: tuple[str, ...], tmp_path: Path) -> None:
    cfg = compose_config(*overrides, "trainer.log_every_n_steps=10")
    built = build(cfg, tmp_path)
    try:
        with counted_syncs(built) as syncs:
            result = train(built)
    finally:
        built.logger.close()
    last = result.steps - 1
    log_steps = {s for s in range(result.steps) if s % 10 == 0 or s == last}
    between = {s: n for s, n in syncs.items() if s >= 0 and s not in log_steps}
    assert between == {}, f"host syncs at steps that do not log: {between}"
    assert all(syncs[s] > 0 for s in (10, 20)), "the counter must see the log steps' syncs"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "overrides",
    [
        ("experiment=linear_fit", "trainer.epochs=35"),
        ("experiment=sine_mlp", "trainer.epochs=3", "logger.histogram_every_n_steps=10"),
        ("experiment=mlp_classify", "trainer.epochs=8"),  # 4 steps an epoch
    ],
    ids=["linear_fit", "sine_mlp", "mlp_classify"],
)
def test_cuda_sync_debug_mode_sees_no_sync_between_log_steps(
    overrides: tuple[str, ...], tmp_path: Path
) -> None:
    """torch.cuda.set_sync_debug_mode("error") raises at any synchronizing CUDA call: it is
    on from a step that does not log until the next step starts, and off from a log step
    (whose row, histograms and divergence check sync) to the next."""
    cfg = compose_config(*overrides, "trainer.log_every_n_steps=10", "trainer.device=cuda")
    built = build(cfg, tmp_path)
    n_steps, optimizer_step = [0], built.optimizer.step
    last = None

    def guarded_step(*args, **kwargs):
        step = n_steps[0]
        n_steps[0] += 1
        logs = step % 10 == 0 or step == last
        torch.cuda.set_sync_debug_mode(0 if logs else "error")
        return optimizer_step(*args, **kwargs)

    built.optimizer.step = guarded_step
    torch.cuda.set_sync_debug_mode("error")
    with pytest.raises(RuntimeError, match="synchroniz"):  # the guard does catch a sync
        torch.ones(1, device="cuda").item()
    torch.cuda.set_sync_debug_mode(0)
    loop = Loop(built, None, None)
    last = loop.total_steps - 1
    try:
        result = loop.run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        built.logger.close()
    assert result.status == "completed" and result.steps == n_steps[0] > 20


@pytest.mark.slow
def test_a_run_imports_no_dynamo_and_logger_none_no_tensorboard_or_matplotlib(
    tmp_path: Path,
) -> None:
    """`python -m runner` as a user runs it; which heavy modules did the process load?"""
    script = (
        "import runpy, sys\n"
        "sys.argv = ['runner', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('runner', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('torch._dynamo', 'torch.utils.tensorboard', 'matplotlib', 'tensorboard')\n"
        "print('LOADED', *[m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "experiment=linear_fit", "trainer.epochs=20"]
        + ["logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED"], done.stdout + done.stderr


# -- the TensorBoard logger writes what torch.utils.tensorboard writes --


def value(data: bytes):
    from tensorboard.compat.proto.summary_pb2 import Summary

    parsed = Summary.Value()
    parsed.ParseFromString(data)
    return parsed


def test_hand_encoded_summaries_are_byte_identical_to_torch_utils_tensorboard() -> None:
    from torch.utils.tensorboard import summary as reference

    for x in (0.0, -0.0, 1.5, -2.25, 1e-50, 3.4028235e38, 1e39, -1e39, math.inf, math.nan):
        ours, theirs = value(events.scalar("loss/train", x)), reference.scalar("loss/train", x)
        assert str(ours) == str(theirs.value[0])  # str: NaN != NaN
    for text in ("MeanBackward0 → PowBackward0", "", "    ├── AccumulateGrad (w)"):
        ours = events.text("graph/tree", text)
        assert ours == reference.text("graph/tree", text).value[0].SerializeToString()
    bins = events.default_bins()
    rng = np.random.default_rng(0)
    for array in (rng.normal(size=300), np.zeros(4), np.array([2.0]), rng.normal(size=(8, 8))):
        ours = events.histogram("param/w", array.astype(float), np.array(bins))
        assert ours == reference.histogram("param/w", array, bins).value[0].SerializeToString()
    layout = {"loss": {"l": ["Multiline", ["loss/.*"]], "m": ["Margin", ["a", "b", "c"]]}}
    assert events.layout(layout) == reference.custom_scalars(layout).value[0].SerializeToString()


def on_the_device(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The counts `histogram_stats` works out where a tensor is (here: the CPU)."""
    stats = events.histogram_stats(torch.from_numpy(values), torch.from_numpy(edges))
    return stats[5:].numpy()


@pytest.mark.parametrize("binned", [events._histogram, on_the_device], ids=["numpy", "torch"])
def test_histogram_counts_are_numpys_at_and_beyond_every_edge(binned) -> None:
    """events bins by searching each value; np.histogram (what torch's make_histogram uses)
    searches each edge. Values on edges, the last edge, outside them, inf and NaN."""
    edges = np.array(events.default_bins())
    rng = np.random.default_rng(2)
    for trial in range(400):
        values = rng.standard_normal(int(rng.integers(1, 200))) * 10.0 ** rng.integers(-16, 23)
        if trial % 3 == 1:
            values[::2] = rng.choice(edges, values[::2].size)  # exactly on edges
        if trial % 3 == 2:
            values[:4] = [edges[0], edges[-1], math.inf, -math.inf][: values.size]
        expected, _ = np.histogram(values, bins=edges)
        assert np.array_equal(binned(values, edges), expected), trial
    with_nan = np.array([0.5, math.nan, edges[-1]])
    counts = binned(with_nan, edges)
    assert counts.sum() == 2 and counts[-1] == 1  # NaN not counted; the last edge is in


def test_a_histogram_binned_where_the_tensor_is_reads_as_tensorboards() -> None:
    """The device path's Summary.Value parses to torch.utils.tensorboard's: the same limits,
    counts, min, max and count; the sums equal but for the order torch adds in."""
    from torch.utils.tensorboard import summary as reference

    bins = np.array(events.default_bins())
    rng = np.random.default_rng(0)
    for array in (rng.normal(size=300), np.zeros(4), np.array([2.0]), rng.normal(size=(8, 8))):
        stats = events.histogram_stats(torch.from_numpy(array), torch.from_numpy(bins)).numpy()
        ours = value(events.histogram_from_stats("param/w", stats[:5], stats[5:], bins)).histo
        theirs = reference.histogram("param/w", array, bins.tolist()).value[0].histo
        assert list(ours.bucket_limit) == list(theirs.bucket_limit)
        assert list(ours.bucket) == list(theirs.bucket)
        assert (ours.min, ours.max, ours.num) == (theirs.min, theirs.max, theirs.num)
        assert ours.sum == pytest.approx(theirs.sum, rel=1e-12, abs=1e-300)
        assert ours.sum_squares == pytest.approx(theirs.sum_squares, rel=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_histogram_is_the_cpu_ones(tmp_path: Path) -> None:
    values = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0))
    values[0, :3] = torch.tensor([math.nan, 1e-12, 0.0])
    for device in ("cpu", "cuda"):
        logger = TensorBoard(tmp_path / device)
        logger.histogram(3, "param/w", values.to(device))
        logger.close()
    cpu, cuda = (event_accumulator(tmp_path / d).Histograms("param/w")[0] for d in ("cpu", "cuda"))
    assert cuda.step == 3
    assert cuda.histogram_value.bucket == cpu.histogram_value.bucket
    assert cuda.histogram_value.bucket_limit == cpu.histogram_value.bucket_limit
    assert cuda.histogram_value.num == cpu.histogram_value.num == 100_000


def test_crc32c_matches_tensorboards_on_both_sides_of_the_numpy_path() -> None:
    """A wrong CRC makes TensorBoard drop the record: check lengths around every boundary."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as reference

    rng = np.random.default_rng(1)
    for n in (0, 1, 5, 1023, 1024, 1025, 1040, 1041, 4099, 70_001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert events.crc32c(data) == reference(data), n
        assert events.crc32c_python(data) == reference(data), n


def test_hparams_session_summaries_match_tensorboards_protos() -> None:
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    hparams = {"optimizer.lr": 0.1, "seed": 42, "choice.model": "mlp", "check": True, "s": ""}
    start = plugin_data_pb2.SessionStartInfo()
    for name, v in hparams.items():
        field = start.hparams[name]
        if isinstance(v, bool):
            field.bool_value = v
        elif isinstance(v, int | float):
            field.number_value = v
        else:
            field.string_value = v
    end = plugin_data_pb2.SessionEndInfo(status=2, end_time_secs=123.5)
    for ours, tag, data in (
        (
            events.session_start(hparams),
            metadata.SESSION_START_INFO_TAG,
            {"session_start_info": start},
        ),
        (events.session_end(2, 123.5), metadata.SESSION_END_INFO_TAG, {"session_end_info": end}),
    ):
        parsed = value(ours)
        assert parsed.tag == tag
        assert parsed.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
        content = plugin_data_pb2.HParamsPluginData()
        content.ParseFromString(parsed.metadata.plugin_data.content)
        assert content == plugin_data_pb2.HParamsPluginData(**data)


def test_the_event_file_reads_back_and_close_is_safe_twice(tmp_path: Path) -> None:
    """Written off the training thread, in order; TensorBoard's reader checks each CRC."""
    logger = TensorBoard(tmp_path)
    for step in range(300):
        logger.scalars(step, {"loss/train": 1.0 / (step + 1), "lr": 0.1})
    logger.histogram(5, "param/w", torch.arange(6.0))
    logger.text(0, "graph/tree", "MeanBackward0\n└── PowBackward0")
    logger.image(7, "figure/fit", np.full((4, 5, 3), 200, dtype=np.uint8))
    logger.hparams({"optimizer.lr": 0.1}, {"hparam/final_loss": 0.5})
    logger.close()
    logger.close()
    logger.scalars(400, {"loss/train": 9.0})  # after close: dropped, no error

    acc = event_accumulator(tmp_path)
    loss = acc.Scalars("loss/train")
    assert [e.step for e in loss] == list(range(300))
    assert loss[99].value == pytest.approx(1.0 / 100)
    assert acc.Scalars("hparam/final_loss")[0].value == 0.5
    histogram = acc.Histograms("param/w")[0].histogram_value
    assert (histogram.num, histogram.sum, histogram.max) == (6, 15.0, 5.0)
    assert acc.Tensors("graph/tree/text_summary")[0].step == 0
    image = acc.Images("figure/fit")[0]
    assert (image.step, image.width, image.height) == (7, 5, 4)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_writer_thread_runs_only_in_spare_time(tmp_path: Path) -> None:
    logger = TensorBoard(tmp_path)
    try:
        if not logger.spare_time:
            pytest.skip("this system refuses SCHED_IDLE")
        assert logger._thread is not None
        assert os.sched_getscheduler(logger._thread.native_id) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the training thread is untouched
    finally:
        logger.close()


def test_a_writer_with_no_spare_time_is_caught_up_by_the_logging_thread(
    tmp_path: Path, monkeypatch
) -> None:
    """Every core busy: the writer thread never runs. A call that finds the oldest item
    queued over flush_secs ago writes the queue itself, in order, so the file stays at most
    that far behind; close writes the rest."""

    def starved(self: TensorBoard) -> None:  # only ever takes the end, which close adds
        with self._ready:
            self._ready.wait_for(lambda: any(item is None for _, item in self._items))
        with self._write_lock:
            self._write_next(end_ok=True)

    monkeypatch.setattr(TensorBoard, "_write_all", starved)
    logger = TensorBoard(tmp_path, flush_secs=0.2)
    logger.scalars(0, {"loss/train": 1.0})
    assert len(logger._items) == 1  # queued: nobody has written it
    time.sleep(0.3)
    logger.scalars(1, {"loss/train": 0.5})  # the first waited over 0.2 s: both are written
    assert not logger._items
    # step 0 was flushed with it (flush_secs had passed); step 1 waits for the next flush,
    # unless this machine paused for flush_secs in between
    assert [e.step for e in event_accumulator(tmp_path).Scalars("loss/train")] in ([0], [0, 1])
    logger.scalars(2, {"loss/train": 0.25})
    logger.close()
    assert [e.step for e in event_accumulator(tmp_path).Scalars("loss/train")] == [0, 1, 2]


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("engine", ["direct", "public"])
def test_the_loops_backward_gives_loss_backwards_gradients_bit_for_bit(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runner.backward calls the autograd engine without torch.autograd.backward's checks;
    the gradients (accumulated over two calls) must be exactly the public path's."""
    from runner import backward as fast

    if engine == "public":
        monkeypatch.setattr(fast, "_engine", False)  # as on a torch whose engine fails the probe
    for dtype in (torch.float32, torch.float64):
        grads = []
        for call in (lambda loss: loss.backward(), fast.backward):
            model = _mlp(0).to(dtype)
            for seed in (1, 2):  # two calls: gradients accumulate
                torch.manual_seed(seed)
                x, y = torch.randn(20, 3, dtype=dtype), torch.randn(20, 1, dtype=dtype)
                call(((model(x) - y) ** 2).mean())
            grads.append([p.grad for p in model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert (fast._engine is False) == (engine == "public")


def test_the_loops_backward_on_a_leaf_or_a_loss_without_grad_behaves_as_torchs() -> None:
    from runner.backward import backward

    leaf = torch.tensor(3.0, requires_grad=True)  # an objective that is one parameter
    backward(leaf)
    assert leaf.grad is not None and leaf.grad.item() == 1.0
    with pytest.raises(RuntimeError, match="does not require grad"):
        backward(torch.tensor(1.0))
