"""Performance contracts that can be checked exactly: no host syncs between log steps, and
the start-up path imports nothing heavy it does not use. Timings live in benchmarks/."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config

from runner.build import Built, build
from runner.run import observers
from runner.train.loop import total_steps, train
from runner.train.state import State

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
        if threading.current_thread() is not threading.main_thread():
            return False  # the TensorBoard writer: it holds CPU copies only
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
            result = train(built, State(), observers(built, State()), None)
    finally:
        built.logger.close()
    last = result.step - 1
    log_steps = {s for s in range(result.step) if s % 10 == 0 or s == last}
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
    last = total_steps(built) - 1
    try:
        result = train(built, State(), observers(built, State()), None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        built.logger.close()
    assert result.status == "completed" and result.step == n_steps[0] > 20


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


@pytest.mark.slow
def test_the_breakdown_benchmark_still_finds_every_phase_it_times(tmp_path):
    """benchmarks/breakdown.py wraps the runner's functions by name (run_job, build, train,
    ...): one renamed there stops the benchmark, which only runs by hand."""
    script = ROOT / "benchmarks" / "breakdown.py"
    args = ["experiment=linear_fit", "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(
        [sys.executable, str(script), "--child", "runner", "--", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    marks = [name for name, _ in json.loads(done.stderr.split("BREAKDOWN-MARKS ")[1])["marks"]]
    for phase in ("the summary lines", "build (check, data, model, optimizer, logger)"):
        assert phase in marks
    assert "landscape: draw" in marks and marks[-1] == "Hydra's end"
