"""Nothing lost: divergence, signals, early stopping, and run directories never reused.

(The SIGTERM and SIGKILL runs in a real process are in test_checkpoint.py, next to the
resume they end in.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest
from conftest import CONFIGS, compose_config, scalars
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

import runner.run
from runner.cli import run_job
from runner.config.check import ConfigError
from runner.run import objective, run
from runner.train.loop import stop_on_signals


def strict_json(text: str) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("log_every", [1, 5])
def test_divergence_stops_at_the_first_bad_step_and_exits_1(tmp_path, caplog, log_every):
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "experiment=linear_fit", "optimizer.lr=100", f"trainer.log_every_n_steps={log_every}"
    )
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        run_job(cfg, run_dir, RunMode.RUN, {})
    assert stopped.value.code == 1
    metrics = strict_json((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["final_loss"] is None
    bad = metrics["diverged_step"]
    assert bad < metrics["steps"] <= bad + log_every  # acted on at the next log step
    assert objective(metrics, "final_loss") == math.inf  # what a sweep gets
    curve = dict(scalars(run_dir, "loss/train"))  # the logs were flushed up to the end
    last = max(curve)
    assert last >= bad and not math.isfinite(curve[last])
    assert all(math.isfinite(v) for s, v in curve.items() if s < bad)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Diverged: the")]
    assert said == [
        f"Diverged: the loss became NaN or infinite at step {bad}; "
        "try a lower optimizer.lr (or set trainer.grad_clip)"
    ]


def test_a_loss_bad_before_any_update_is_not_blamed_on_the_learning_rate(tmp_path, caplog):
    """NaN beyond the points the build checks (x > 0.5): the first step's loss, no update yet."""
    cfg = compose_config("experiment=linear_fit", 'model.formula="w*x + b + log(0.5 - x)"')
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        run_job(cfg, tmp_path / "run", RunMode.RUN, {})
    assert stopped.value.code == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Diverged: the")]
    assert said == [
        "Diverged: the loss became NaN or infinite at step 0; before any update: look at the "
        "data, the formulas and the starting values"
    ]
    # sqrt(w) at w = 0: a finite loss, an infinite gradient, then NaN; no lr would help
    cfg = compose_config("experiment=linear_fit", 'model.formula="sqrt(w) * x + b"')
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        run_job(cfg, tmp_path / "sqrt", RunMode.RUN, {})
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Diverged: the")]
    assert said == [
        "Diverged: the loss became NaN or infinite at step 1; after the first update: a "
        "gradient at the starting values was NaN or infinite (sqrt or log at 0, say; "
        "trainer.check_grads=true names it), or optimizer.lr is far too large"
    ]


def test_a_signal_asks_to_stop_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stop.signal is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert stop.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_a_second_ctrl_c_stopped_at_once_says_so_without_an_empty_message(
    monkeypatch, tmp_path
):
    def second_ctrl_c(*args: Any) -> None:
        raise KeyboardInterrupt  # as `stop_on_signals` raises it: no message

    monkeypatch.setattr(runner.run, "train", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config("experiment=linear_fit", "logger=none"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["status"], metrics["error"]) == ("interrupted", "KeyboardInterrupt")


@pytest.mark.parametrize(
    "status, sig, code",
    [("interrupted", "SIGINT", 130), ("interrupted", "SIGTERM", 143), ("diverged", None, 1)],
)
def test_exit_status_says_how_the_run_ended(monkeypatch, tmp_path, status, sig, code):
    ended = {"status": status, "signal": sig, "objective": math.inf}
    monkeypatch.setattr(runner.run, "run", lambda *args: ended)
    with pytest.raises(SystemExit) as stopped:
        run_job(compose_config(), tmp_path, RunMode.RUN, {})
    assert stopped.value.code == code


def _expected_stop(curve: list[float], patience: int, min_delta: float) -> int | None:
    best, waited = math.inf, 0
    for epoch, value in enumerate(curve, start=1):
        best, waited = (value, 0) if value < best - min_delta else (best, waited + 1)
        if waited >= patience:
            return epoch
    return None


@pytest.mark.parametrize("watched", ["loss/train", "loss/val"])
def test_early_stop_ends_a_completed_run_when_the_loss_stalls(run_experiment, watched):
    split = ["dataset.val_fraction=0.2"] if watched == "loss/val" else []
    metrics, run_dir = run_experiment(
        "experiment=linear_fit", "trainer.early_stop={patience:3,min_delta:0.001}", *split
    )
    assert metrics["status"] == "completed"
    stopped = metrics["early_stopped_epoch"]
    assert stopped == metrics["epochs"] == metrics["steps"] < 200  # full batch: a step an epoch
    curve = [v for _, v in scalars(run_dir, watched)]  # one value an epoch (full batch)
    assert len(curve) == stopped
    assert _expected_stop(curve, 3, 0.001) == stopped
    assert min(curve[-3:]) >= min(curve[:-3]) - 0.001  # no real progress in the last 3


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(run_experiment):
    """The run reached trainer.epochs: it did not stop early, whatever the patience says."""
    stalls = "trainer.early_stop={patience:3,min_delta:0.001}"
    full, _ = run_experiment("experiment=linear_fit", stalls, "logger=none")
    at_the_end = full["early_stopped_epoch"]  # where patience runs out
    metrics, _ = run_experiment(
        "experiment=linear_fit", stalls, "logger=none", f"trainer.epochs={at_the_end}"
    )
    assert metrics["epochs"] == at_the_end and "early_stopped_epoch" not in metrics


def test_a_loss_gone_nan_is_a_divergence_not_an_early_stop(run_experiment):
    """Early stop looks at every epoch's end, divergence at log steps: NaN epochs are no
    plateau to stop on (the run ended `completed`, exit 0, with a NaN loss)."""
    metrics, _ = run_experiment(
        "experiment=linear_fit",
        "optimizer.lr=1e30",
        "trainer.log_every_n_steps=50",
        "trainer.early_stop={patience:2}",
        "logger=none",
    )
    assert metrics["status"] == "diverged" and "early_stopped_epoch" not in metrics
    assert metrics["diverged_step"] == 1


def test_without_early_stop_the_run_goes_to_the_end(run_experiment):
    metrics, _ = run_experiment("experiment=linear_fit", "trainer.epochs=20", "logger=none")
    assert metrics["epochs"] == 20 and "early_stopped_epoch" not in metrics


def test_a_directory_that_holds_a_run_is_never_written_over(tmp_path):
    run_dir = tmp_path / "run"
    args = ("experiment=linear_fit", "trainer.epochs=2", "logger=none")
    run(compose_config(*args), run_dir)
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(ConfigError, match=r"hydra.run.dir=.* already holds a run \(metrics.json\)"):
        run(compose_config(*args), run_dir)
    assert (run_dir / "metrics.json").read_text() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_run_completed_is_no_interruption(tmp_path, sig):
    """The results are written when the summary ends; a signal while Python then shuts down
    (most of a second, with torch) left exit 130 or 143 beside a completed metrics.json."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = ["experiment=linear_fit", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Run directory:"):  # the summary's last line
            time.sleep(0.1)
            process.send_signal(sig)
            break
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_run_directories_started_in_the_same_second_differ():
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    for key in ("run", "sweep"):
        pattern = OmegaConf.to_container(cfg.hydra[key], resolve=False)["dir"]
        stamp = re.fullmatch(r".*\$\{now:(.*)\}.*", pattern).group(1)
        assert "%f" in stamp  # microseconds
        assert datetime.now().strftime(stamp) != datetime.now().strftime(stamp)


def test_an_epoch_ended_after_a_stop_keeps_that_stop_and_a_diverged_run_counts_it(
    run_experiment,
):
    """A run stopped at an epoch's last step ends that epoch: an early stop due there leaves
    the run as the stop made it, and a one-step-an-epoch run counts its epochs as its steps."""
    import torch

    from runner.build import build
    from runner.config.check import EarlyStop
    from runner.log.tensorboard import Null
    from runner.observe.validation import Validation
    from runner.train.state import State

    b = build(compose_config("experiment=linear_fit", "logger=none"), None)
    validation = Validation(b, Null(), EarlyStop(patience=1, min_delta=10))
    for status in ("running", "interrupted", "pruned"):
        state = State(epoch=1, epoch_loss=torch.tensor(1.0), status=status)
        state.early_stop = (1.0, 0)  # patience runs out at this epoch's end
        validation.epoch(state)
        assert state.status == ("completed" if status == "running" else status)
    metrics, _ = run_experiment("experiment=linear_fit", "optimizer.lr=2", "logger=none")
    assert metrics["status"] == "diverged" and metrics["epochs"] == metrics["steps"] == 31
