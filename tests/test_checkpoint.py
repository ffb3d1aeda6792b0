"""Checkpoints: a run stopped any way and resumed ends bit for bit where an uninterrupted one does.

The experiment is linear_fit on shuffled minibatches (5 a epoch), so most checkpoints fall
mid-epoch and the resumed run must carry the epoch's order, its running loss and every
generator's state to get the same numbers.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli, compose_config, event_accumulator, read_metrics, scalars, session_hparams

from runner.config.check import ConfigError
from runner.log.tensorboard import TensorBoard
from runner.observe.scalars import Scalars
from runner.run import run
from runner.train import checkpoint
from runner.train.checkpoint import LAST
from runner.train.state import State

ARGS = (
    "experiment=linear_fit",
    "trainer.batch_size=10",  # 5 shuffled minibatches an epoch
    "trainer.epochs=80",  # 400 steps
    "trainer.log_every_n_steps=20",
    "optimizer.lr=0.05",
)
EVERY = "trainer.checkpoint_every=7"  # not a multiple of 5: checkpoints land mid-epoch


def run_in(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run(compose_config(*ARGS, *overrides), run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, Any], Path]:
    """The uninterrupted run, without checkpoints: what every resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return run_in(run_dir), run_dir


def start_cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "runner", *ARGS, EVERY, *overrides, f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, step: int) -> None:
    """Until the run has checkpointed at `step` or later (the file is replaced atomically, so
    reading it while the run goes on is safe)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it was stopped: {proc.stderr.read()}"
        if path.is_file() and torch.load(path, weights_only=True)["state"]["step"] >= step:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def assert_curves_continue(first: Path, resumed: Path, reference: Path, at: int) -> None:
    """The stopped run's curve up to the checkpoint and the resumed run's from there are the
    uninterrupted curve: every step once, the same values; a run stopped by a signal also
    shows the step it stopped after (`at - 1`), which need be no log step."""
    ref = dict(scalars(reference, "loss/train"))
    before = [(s, v) for s, v in scalars(first, "loss/train") if s < at]
    after = scalars(resumed, "loss/train")
    steps = [s for s, _ in before + after]
    assert steps == sorted(set(steps)) and set(steps) - set(ref) <= {at - 1}
    assert all(s >= at for s, _ in after)
    assert {s: v for s, v in before + after if s in ref} == ref


def test_a_checkpoint_writes_the_validation_losses_that_wait_for_a_log_step(tmp_path, monkeypatch):
    """Validation losses wait on the device for the next log step; a checkpoint writes them
    first, so a run killed right after one and resumed shows every epoch's loss/val once."""
    split = ("dataset.val_fraction=0.2", EVERY)  # 4 batches an epoch: epochs end between logs
    reference = tmp_path / "reference"
    run_in(reference, *split)
    real = checkpoint.save

    def save_then_die(path: Path, b: Any, state: State) -> None:
        real(path, b, state)
        if state.step >= 65:  # 70: after the log step 60 and the epoch ends at 64 and 68
            raise SystemExit("killed")  # nothing more reaches the disk, as after a SIGKILL

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(SystemExit):
        run_in(tmp_path / "killed", *split)
    monkeypatch.setattr(checkpoint, "save", real)
    at = torch.load(tmp_path / "killed" / LAST, weights_only=True)["state"]["step"]
    assert (tmp_path / "killed" / "graph.txt").is_file()  # from the first step on
    assert (tmp_path / "killed" / "graph.dot").is_file()
    run_in(tmp_path / "resumed", *split, f"trainer.resume={tmp_path / 'killed'}")
    ref = scalars(reference, "loss/val")
    shown = scalars(tmp_path / "killed", "loss/val") + scalars(tmp_path / "resumed", "loss/val")
    assert len(ref) == 80 and at == 70  # every epoch's loss/val
    assert [s for s, _ in shown] == [s for s, _ in ref]  # each step once
    assert shown == ref


def test_checkpoint_is_weights_only_and_written_atomically(tmp_path):
    run_dir = tmp_path / "run"
    run_in(run_dir, "trainer.epochs=3", "trainer.checkpoint_every=2", "logger=none")
    state = torch.load(run_dir / LAST, weights_only=True)
    assert state["state"]["step"] == 15 and state["state"]["epoch"] == 3  # the end of the run
    assert set(state["state"]["rng"]) >= {"torch", "python", "numpy"}
    assert set(state["modules"]["model"]) == {"w", "b"}
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt"]  # no temp


def test_an_epochs_unsummed_losses_are_kept_and_go_to_the_runs_device(tmp_path):
    """Mid-epoch, a checkpoint keeps the updates' losses not yet summed, read back onto the
    CPU and then moved to the run's device (the meta device stands in for a GPU here)."""
    state = State(step=2, position=2)
    for loss in (0.5, 0.25):
        state.add(torch.tensor(loss), 0.2)
    torch.save(state.to_dict(), tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    on_cpu = State.from_dict(saved, torch.device("cpu"))
    assert torch.equal(on_cpu.so_far(), state.so_far())  # the same sum, bit for bit
    moved = State.from_dict(saved, torch.device("meta"))
    assert [(loss.device.type, share) for loss, share in moved.unsummed] == [("meta", 0.2)] * 2


def test_resume_auto_continues_its_own_run_directory(tmp_path, reference):
    run_dir = tmp_path / "run"
    first = run_in(run_dir, "trainer.epochs=40", EVERY, "logger=none")
    assert first["steps"] == 200
    metrics = run_in(run_dir, "trainer.resume=auto", EVERY, "logger=none")
    assert metrics["resumed_from"]["step"] == 200 and metrics["steps"] == 400
    assert metrics["params"] == reference[0]["params"]  # bit for bit
    assert metrics["final_loss"] == reference[0]["final_loss"]


def test_resuming_names_what_changes_the_learning_and_says_when_nothing_is_left(tmp_path, caplog):
    """A changed batch size or learning rate changes what the resumed run learns: named. A
    changed epoch count or log cadence only says how it goes on: not named."""
    first = tmp_path / "first"
    run_in(first, "trainer.epochs=2", "trainer.checkpoint_every=5", "logger=none")
    changed = ("trainer.batch_size=25", "optimizer.lr=0.01", "trainer.log_every_n_steps=3")
    with caplog.at_level("WARNING", logger="runner"):
        run_in(tmp_path / "second", f"trainer.resume={first}", "logger=none", *changed)
    (warning,) = [r.message for r in caplog.records if "not written with" in r.message]
    assert "trainer.batch_size" in warning and "optimizer.lr" in warning
    assert warning.endswith("are the checkpoint's; optimizer.lr=0.05, not 0.01)")  # ARGS's
    assert "log_every_n_steps" not in warning and "epochs" not in warning
    caplog.clear()
    with caplog.at_level("INFO", logger="runner"):
        metrics = run_in(
            tmp_path / "third", f"trainer.resume={first}", "trainer.epochs=1", "logger=none"
        )
    assert metrics["epochs"] == 2 and metrics["steps"] == 10  # nothing trained
    assert any("nothing is left to train" in r.message for r in caplog.records)
    assert any(r.message.endswith("at step 10 (after epoch 2)") for r in caplog.records)


def test_a_resumed_runs_hparams_row_shows_the_learning_rate_it_trained_with(tmp_path):
    """The optimizer's settings come from the checkpoint, a changed optimizer.lr with them: the
    HParams row says the rate the run trained at, as the `lr` scalar does."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_in(first, "trainer.epochs=2", "trainer.checkpoint_every=5")
    overrides = ["optimizer.lr=0.01", "trainer.epochs=4", f"trainer.resume={first}"]
    run(compose_config(*ARGS, *overrides), second, overrides)
    assert scalars(second, "lr")[-1][1] == pytest.approx(0.05)  # ARGS's rate, not 0.01
    assert session_hparams(second) == pytest.approx(
        {"optimizer.lr": 0.05, "trainer.epochs": 4.0, "trainer.resume": str(first)}
    )


def test_a_resume_with_nothing_left_and_one_with_added_settings_show_what_ran(tmp_path):
    """Resumed with nothing left to train, the run logs no step again; resumed with a setting
    the checkpoint lacked (+optimizer.amsgrad=true), its HParams row shows what the restored
    optimizer holds (False), not the command line."""
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["experiment=mlp_classify", "trainer.epochs=2", "trainer.log_every_n_steps=3"]
    run(compose_config(*args, "trainer.checkpoint_every=4"), first)
    again = [*args, "trainer.resume=auto"]
    run(compose_config(*again), first, again)
    steps = [step for step, _ in scalars(first, "acc/train")]
    assert steps == sorted(set(steps)) and steps[-1] == 7  # 8 steps, each logged once
    added = ["+optimizer.amsgrad=true", "trainer.epochs=3", f"trainer.resume={first}"]
    run(compose_config(*args[:1], *added), second, added)
    assert session_hparams(second)["optimizer.amsgrad"] == "false"
    # a schedule moved the rate before the checkpoint: the row keeps the rate as set
    stepped, resumed = tmp_path / "stepped", tmp_path / "resumed"
    schedule = ["scheduler=step", "scheduler.step_size=1", "optimizer.lr=0.02"]
    run(compose_config(*args, *schedule, "trainer.checkpoint_every=4"), stepped)
    more = ["optimizer.lr=0.02", "trainer.epochs=3", f"trainer.resume={stepped}"]
    run(compose_config(*args[:1], "scheduler=step", "scheduler.step_size=1", *more), resumed, more)
    assert scalars(resumed, "lr")[-1][1] == pytest.approx(0.02 * 0.1**2)  # moved by then
    assert session_hparams(resumed)["optimizer.lr"] == pytest.approx(0.02)


def test_a_resumed_run_checkpoints_as_the_run_it_resumed(tmp_path, reference):
    """Resumed in place three times without trainer.checkpoint_every, a run keeps the checkpoint's
    cadence, so the second resume starts where the first resumed run ended, not before it."""
    run_dir = tmp_path / "run"
    run_in(run_dir, "trainer.epochs=30", EVERY, "logger=none")
    run_in(run_dir, "trainer.epochs=50", "trainer.resume=auto", "logger=none")
    assert torch.load(run_dir / LAST, weights_only=True)["state"]["step"] == 250
    run_in(run_dir, "trainer.epochs=60", "trainer.resume=auto", "logger=none")  # and again
    assert torch.load(run_dir / LAST, weights_only=True)["state"]["step"] == 300
    metrics = run_in(run_dir, "trainer.resume=auto", "logger=none")
    assert metrics["resumed_from"]["step"] == 300
    assert metrics["final_loss"] == reference[0]["final_loss"]


class Crashing(TensorBoard):
    """TensorBoard logging that fails at step 285, after step 280 (checkpointed at 280) is
    on disk: what a run that dies between a checkpoint and the next one leaves behind."""

    def scalars(self, step: int, values: Any) -> None:
        if step >= 283:
            raise RuntimeError("the machine went down")
        super().scalars(step, values)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    every_5 = (EVERY, "trainer.log_every_n_steps=5")
    with pytest.raises(RuntimeError, match="went down"):
        run_in(run_dir, *every_5, f"logger._target_={__name__}.Crashing")
    at = torch.load(run_dir / LAST, weights_only=True)["state"]["step"]
    assert at == 280 and 280 in dict(scalars(run_dir, "graph/nodes"))  # logged after it
    metrics = run_in(run_dir, *every_5, "trainer.resume=auto")
    assert metrics["resumed_from"]["step"] == at and metrics["steps"] == 400
    every_log_step = [*range(0, 400, 5), 399]  # and the last
    assert [s for s, _ in scalars(run_dir, "graph/nodes")] == every_log_step
    assert [s for s, _ in scalars(run_dir, "loss/train")] == every_log_step


def test_a_completed_run_resumed_in_place_adds_nothing_to_its_logs(tmp_path):
    run_dir = tmp_path / "run"
    run_in(run_dir, "trainer.checkpoint_every=100")
    before = event_accumulator(run_dir)
    metrics = run_in(run_dir, "trainer.resume=auto")
    assert metrics["status"] == "completed" and metrics["steps"] == 400
    after = event_accumulator(run_dir)
    assert [e.step for e in after.Scalars("hparam/final_loss")] == [399]  # one row, not two
    assert after.Tags() == before.Tags()


def test_a_checkpoint_at_an_epochs_last_batch_resumes_at_the_end_of_that_epoch(tmp_path, caplog):
    """A periodic save at the epoch's last batch comes before the epoch ends: its batches are
    all done, which the resume says, and the epoch's loss is still counted once."""
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="went down"):  # a crash after the step-300 save
        run_in(run_dir, "trainer.checkpoint_every=10", f"logger._target_={__name__}.Crashing")
    loop = torch.load(run_dir / LAST, weights_only=True)["state"]
    assert (loop["step"], loop["epoch"], loop["position"]) == (300, 59, 5)
    with caplog.at_level("INFO", logger="runner"):
        metrics = run_in(run_dir, "trainer.resume=auto", "logger=none")
    assert any(r.message.endswith("at step 300 (at the end of epoch 60)") for r in caplog.records)
    assert metrics["epochs"] == 80 and metrics["steps"] == 400


def press_ctrl_c_at_a_log_step(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Ctrl-C from inside the loop, once, at the first log step after `after`."""
    log = Scalars.log
    sent: list[int] = []

    def log_then_interrupt(self, look):  # noqa: ANN001, ANN202
        log(self, look)
        if look.step > after and not sent:
            sent.append(look.step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Scalars, "log", log_then_interrupt)


def test_a_run_directory_in_use_by_a_run_still_going_is_refused_until_it_ends(tmp_path):
    """A resume started twice (or a requeued job beside the old one) would write into one
    directory; the second is one line and exit 2, and the same command runs once it ends."""
    run_dir = tmp_path / "run"
    command = ("experiment=linear_fit", "trainer.epochs=3", f"hydra.run.dir={run_dir}")
    with checkpoint.held(run_dir, leader=True):  # as a run going on in another process holds it
        refused = cli(*command, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip() == (
            f"Config error: hydra.run.dir='{run_dir}' is in use by a run still going there "
            f"(pid {os.getpid()} on {socket.gethostname()}); wait for it to end, or pick a new "
            "directory"
        )
        assert not (run_dir / "metrics.json").exists()
    done = cli(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_refused_run_leaves_the_record_of_the_run_it_found_as_it_was(tmp_path):
    """`.hydra/` says what made the run in the directory: a command refused there (it holds
    a run's results, or a run is still going there) writes none of its own over it."""
    run_dir = tmp_path / "run"
    command = ("experiment=linear_fit", "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}")
    assert cli(*command, "trainer.epochs=3", cwd=tmp_path).returncode == 0
    record = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    assert b"trainer.epochs=3" in record["overrides.yaml"]
    refused = cli(*command, "trainer.epochs=4", "optimizer.lr=0.2", cwd=tmp_path)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    with checkpoint.held(run_dir, leader=True):  # as a run going on in another process holds it
        refused = cli(*command, "trainer.epochs=5", "trainer.resume=auto", cwd=tmp_path)
        assert refused.returncode == 2 and "is in use by a run" in refused.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == record
    resumed = cli(*command, "trainer.epochs=5", "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert b"trainer.epochs=5" in (run_dir / ".hydra" / "overrides.yaml").read_bytes()


def test_a_command_refused_by_a_check_leaves_no_run_directory(tmp_path):
    """Hydra makes the run's directory before any check: a refused command's is removed, so
    `outputs/runs/` holds runs, not a directory of an empty log and a lock per typo."""
    refused = cli("experiment=linear_fit", "trainer.epochs=abc", cwd=tmp_path)
    assert refused.returncode == 2 and "trainer.epochs='abc' is not an integer" in refused.stderr
    assert list((tmp_path / "outputs" / "runs").iterdir()) == []
    done = cli("experiment=linear_fit", "trainer.epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert {".hydra", ".lock", "runner.log", "metrics.json"} <= {p.name for p in run_dir.iterdir()}


def test_a_file_system_without_locks_runs_unguarded(tmp_path, monkeypatch):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")  # as some network file systems

    monkeypatch.setattr(checkpoint.fcntl, "flock", no_locks)
    metrics = run_in(tmp_path / "run", "logger=none", "trainer.epochs=2")
    assert metrics["status"] == "completed"


def test_a_save_that_a_kill_cut_short_leaves_no_file_behind_once_the_run_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    run_in(run_dir, EVERY, "logger=none")
    torn = run_dir / LAST.parent / f".{LAST.name}.4242.tmp"  # killed mid-write, big as a model
    torn.write_bytes(b"\0" * 1000)
    run_in(run_dir, "trainer.resume=auto", "trainer.epochs=81", "logger=none")
    assert sorted(p.name for p in (run_dir / LAST.parent).iterdir()) == [LAST.name]


NAN_ONCE = """
calls = 0


def mse(input, target, at=0):
    global calls
    calls += 1
    loss = ((input - target) ** 2).mean()
    return loss * float("nan") if calls == at else loss
"""


def test_a_diverged_run_keeps_its_last_sound_checkpoint_which_goes_on_exactly(
    tmp_path, monkeypatch
):
    """A NaN loss (a bad batch, say) found at a log step that is also a checkpoint step: the
    checkpoint stays the one before the NaN step, and the run goes on from it bit for bit."""
    (tmp_path / "nan_once.py").write_text(NAN_ONCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ("experiment=linear_fit", "loss._target_=nan_once.mse", "trainer.checkpoint_every=1")
    metrics = run(compose_config(*args, "+loss.at=12"), tmp_path / "diverged")
    assert metrics["status"] == "diverged"
    saved = torch.load(tmp_path / "diverged" / LAST, weights_only=True)
    assert (saved["state"]["step"], saved["state"]["status"]) == (
        metrics["diverged_step"],
        "running",
    )
    resumed = run(
        compose_config(*args, f"trainer.resume={tmp_path / 'diverged'}"), tmp_path / "resumed"
    )
    reference = run(compose_config(*args), tmp_path / "reference")
    assert resumed["status"] == "completed" and resumed["params"] == reference["params"]


def test_an_interrupted_run_resumed_in_place_shows_its_end_once(tmp_path, monkeypatch):
    """The interrupted session's HParams metrics and last picture are at the step the resume
    goes on from, which it purges; the tree of the first step stays the first session's."""
    run_dir = tmp_path / "run"
    press_ctrl_c_at_a_log_step(monkeypatch, after=233)  # step 240
    metrics = run_in(run_dir, EVERY)
    monkeypatch.undo()
    assert metrics["status"] == "interrupted" and metrics["steps"] == 241
    events = event_accumulator(run_dir)
    assert [e.step for e in events.Scalars("hparam/final_loss")] == [241]
    assert [e.step for e in events.Images("figure/fit")] == [0, 241]
    run_in(run_dir, "trainer.resume=auto")
    events = event_accumulator(run_dir)
    assert [e.step for e in events.Scalars("hparam/final_loss")] == [399]
    assert [e.step for e in events.Images("figure/fit")] == [0, 249, 399]  # start, epoch 50, end
    assert [e.step for e in events.Tensors("graph/tree/text_summary")] == [0]


def test_ctrl_c_mid_epoch_writes_a_checkpoint_that_resumes_exactly(
    tmp_path, reference, monkeypatch, caplog
):
    stopped = tmp_path / "stopped"
    press_ctrl_c_at_a_log_step(monkeypatch, after=233)  # step 240: mid-epoch
    metrics = run_in(stopped, EVERY, "logger=none")
    monkeypatch.undo()
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGINT"
    loop = torch.load(stopped / LAST, weights_only=True)["state"]
    assert loop["step"] == metrics["steps"] < 400 and loop["position"] % 5 != 0  # mid-epoch
    with caplog.at_level("INFO", logger="runner"):
        resumed = run_in(tmp_path / "resumed", f"trainer.resume={stopped}", "logger=none")
    epoch = loop["step"] // 5 + 1  # the epoch under way, counted from 1
    assert any(r.message.endswith(f"(in epoch {epoch})") for r in caplog.records)
    assert resumed["status"] == "completed" and resumed["steps"] == 400
    assert "signal" not in resumed  # the Ctrl-C stopped the first run, not this one
    assert resumed["params"] == reference[0]["params"]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference):
    killed = tmp_path / "killed"
    proc = start_cli(killed)
    wait_for_checkpoint(proc, killed / LAST, step=60)
    proc.kill()  # SIGKILL: no handler, no finally; only what is on disk survives
    proc.wait()
    assert not (killed / "metrics.json").exists()
    at = torch.load(killed / LAST, weights_only=True)["state"]["step"]
    assert 60 <= at < 400

    metrics = run_in(tmp_path / "resumed", EVERY, f"trainer.resume={killed}")
    assert metrics["resumed_from"]["step"] == at
    assert metrics["status"] == "completed" and metrics["steps"] == 400
    assert metrics["params"] == reference[0]["params"]  # bit for bit
    assert_curves_continue(killed, tmp_path / "resumed", reference[1], at)


@pytest.mark.slow
def test_sigterm_stops_after_the_step_checkpoints_and_exits_143(tmp_path, reference):
    stopped = tmp_path / "stopped"
    proc = start_cli(stopped)
    wait_for_checkpoint(proc, stopped / LAST, step=60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    metrics = read_metrics(stopped)
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    assert "Traceback" not in err
    assert f"Interrupted by SIGTERM at step {metrics['steps']}" in out
    at = torch.load(stopped / LAST, weights_only=True)["state"]["step"]
    assert at == metrics["steps"]  # the checkpoint is the stopping point itself

    resumed = run_in(tmp_path / "resumed", f"trainer.resume={stopped}")
    assert resumed["params"] == reference[0]["params"]
    assert_curves_continue(stopped, tmp_path / "resumed", reference[1], at)


class RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_corrupt_truncated_or_foreign_checkpoints_are_config_errors(tmp_path):
    good = tmp_path / "good"
    run_in(good, "trainer.epochs=2", "trainer.checkpoint_every=1", "logger=none")
    data = (good / LAST).read_bytes()
    cases = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint at all"}
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=r"trainer.resume: .* cannot be read"):
            run_in(tmp_path / f"resume_{name}", f"trainer.resume={path}", "logger=none")
    with pytest.raises(
        ConfigError, match="this run has model._target_=runner.build.models.linear;"
    ):
        run_in(tmp_path / "foreign", "model=linear", f"trainer.resume={good}", "logger=none")
    with pytest.raises(ConfigError, match="does not fit this experiment"):  # the same class
        args = ("model.formula='w * x + b + c'", f"trainer.resume={good}", "logger=none")
        run_in(tmp_path / "other_formula", *args)
    # another width: torch's whole line, which names the shape now (it was cut at 160 letters)
    mlp = ("experiment=sine_mlp", "trainer.epochs=1", "logger=none", "model.hidden=[4]")
    run(compose_config(*mlp, "trainer.checkpoint_every=5"), tmp_path / "narrow")
    wider = (*mlp[:3], "model.hidden=[8]", f"trainer.resume={tmp_path / 'narrow'}")
    with pytest.raises(ConfigError, match=r"the shape in current model is torch.Size\(\[8, 1\]\)"):
        run(compose_config(*wider), tmp_path / "wider")
    # a pickle that would run a command: refused unrun, the message naming what was refused
    sentinel = tmp_path / "ran"
    torch.save({"format": 2, "x": RunsACommand(f"touch {sentinel}")}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match=r"unsupported GLOBAL \w+\.system"):
        run_in(tmp_path / "resume_evil", f"trainer.resume={tmp_path / 'evil.pt'}")
    assert not sentinel.exists()
    # loadable with weights_only, wrong inside: one line each, and no 40 GB gradient copied
    edits = {
        "hparams": lambda c: c.update(hparams=["a"]),
        "state": lambda c: c.update(state="foo"),
        "rng": lambda c: c["state"].update(rng={}),
        "epoch": lambda c: c["state"].update(epoch="2"),
        "grad": lambda c: c["grads"].update(w=torch.tensor(1.0).expand(100_000, 100_000)),
    }
    for name, edit in edits.items():
        crafted = torch.load(good / LAST, weights_only=True)
        edit(crafted)
        torch.save(crafted, tmp_path / f"{name}.pt")
        with pytest.raises(ConfigError, match="does not fit this experiment"):
            run_in(tmp_path / f"crafted_{name}", f"trainer.resume={tmp_path / name}.pt")


def test_a_resume_refuses_another_optimizer_and_mid_epoch_another_batch_size(tmp_path, monkeypatch):
    """The optimizer's state is its own kind's, and an epoch's place counts batches: neither
    can change under a checkpoint (a batch size may, at an epoch's end)."""
    stopped = tmp_path / "stopped"
    press_ctrl_c_at_a_log_step(monkeypatch, after=0)  # step 20: the 1st batch of epoch 5
    run_in(stopped, EVERY, "logger=none")
    monkeypatch.undo()
    resume = (f"trainer.resume={stopped}", "logger=none")
    with pytest.raises(ConfigError, match=r"written with trainer.batch_size=10 in the middle"):
        run_in(tmp_path / "a", *resume, "trainer.batch_size=25")
    with pytest.raises(
        ConfigError,
        match=r"optimizer._target_=runner.build.optim.GD and this.*; resume with optimizer=gd$",
    ):
        run_in(tmp_path / "b", *resume, "optimizer=adam")
    with pytest.raises(  # the schedule's state is its own kind's too
        ConfigError,
        match=r"scheduler._target_=runner.build.optim.Constant and .*; resume with scheduler=none$",
    ):
        run_in(tmp_path / "d", *resume, "scheduler=cosine")
    with pytest.raises(ConfigError, match=r"this run has model._target_=runner.build.models.MLP"):
        run_in(tmp_path / "f", *resume, "experiment=sine_mlp")  # not 'resume with optimizer=gd'
    # the epoch's order indexes the points it was drawn for
    with pytest.raises(
        ConfigError, match=r"middle of an epoch over 50 training points, and this run has 40;"
    ):
        run_in(tmp_path / "e", *resume, "dataset.val_fraction=0.2")
    assert run_in(tmp_path / "c", *resume)["status"] == "completed"
    # at an epoch's last batch the order is used up: other points may come
    at_end = tmp_path / "at_end"
    press_ctrl_c_at_a_log_step(monkeypatch, after=10)  # step 14: the last batch of epoch 3
    run_in(at_end, EVERY, "logger=none", "trainer.log_every_n_steps=7")
    monkeypatch.undo()
    state = torch.load(at_end / LAST, weights_only=True)["state"]
    assert (state["epoch"], state["position"]) == (3, 0)  # the epoch ended before it stopped
    resumed = run_in(tmp_path / "g", f"trainer.resume={at_end}", "dataset.val_fraction=0.2")
    assert resumed["status"] == "completed"


def test_a_resumed_early_stopped_run_that_trains_on_is_no_early_stop(tmp_path):
    first = tmp_path / "first"
    stop_at_once = "trainer.early_stop={patience: 1, min_delta: 10}"  # no gain is that large
    metrics = run_in(first, stop_at_once, "trainer.checkpoint_every=5", "logger=none")
    assert metrics["early_stopped_epoch"] == 2
    resumed = run_in(tmp_path / "second", f"trainer.resume={first}", "logger=none")
    assert resumed["epochs"] == 80 and "early_stopped_epoch" not in resumed


def test_a_resumed_early_stopped_run_still_asked_to_stop_early_trains_no_further(tmp_path, caplog):
    """A requeue that resumes every job (`trainer.resume=auto`) leaves a finished one as it is."""
    first = tmp_path / "first"
    stop_at_once = "trainer.early_stop={patience: 1, min_delta: 10}"  # no gain is that large
    metrics = run_in(first, stop_at_once, "trainer.checkpoint_every=5", "logger=none")
    again = run_in(first, stop_at_once, "trainer.resume=auto", "logger=none")
    assert (again["steps"], again["early_stopped_epoch"]) == (metrics["steps"], 2)
    assert again["final_loss"] == metrics["final_loss"] and again["params"] == metrics["params"]
    assert "stopped early after epoch 2 (trainer.early_stop): nothing is left" in caplog.text


def test_a_signal_after_the_last_step_lets_the_results_be_written(tmp_path, monkeypatch):
    """SIGTERM while the figures are drawn (a job's time limit, say): the run completed, and
    metrics.json says so; it is not lost to the default handler."""
    from runner.observe.figures import Figures

    def default_handler_ran(signum, frame):  # noqa: ANN001, ANN202
        raise AssertionError("SIGTERM reached the handler the run should have replaced")

    end = Figures.end

    def terminate_then_end(self, state):  # noqa: ANN001, ANN202
        os.kill(os.getpid(), signal.SIGTERM)
        end(self, state)

    previous = signal.signal(signal.SIGTERM, default_handler_ran)
    monkeypatch.setattr(Figures, "end", terminate_then_end)
    try:
        metrics = run_in(tmp_path / "run", "trainer.epochs=3")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert metrics["status"] == "completed"
    assert read_metrics(tmp_path / "run")["status"] == "completed"
