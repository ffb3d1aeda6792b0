"""One run over several processes (DDP on 2 gloo processes), mixed precision, and the faults:
one run directory, the one-process result, resume, divergence and a dying rank."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config, event_accumulator, read_metrics
from test_sweep import JOBLIB, sweep

from runner.build import build
from runner.config.check import ConfigError
from runner.observe import Observer
from runner.train import distributed
from runner.train.loop import train
from runner.train.state import State
from runner.train.world import World

# sine_mlp's 800 points in batches of 47: shards of 24 and 23 points (uneven on purpose), and
# each epoch's last batch is one point, which leaves rank 1 none
SINE = ["experiment=sine_mlp", "trainer.epochs=12", "trainer.batch_size=47"]
EVERY = ["trainer.checkpoint_every=20", "logger=none"]
FAULTY = '''
import os
calls = 0


def mse(input, target, at=0, fault="nan"):
    """The post's loss; on rank 1, its `at`-th call is NaN (or the process dies)."""
    global calls
    calls += 1
    loss = ((input - target) ** 2).mean()
    if os.environ.get("RANK") == "1" and calls == at:
        if fault == "exit":
            os._exit(3)
        if fault == "raise":
            raise RuntimeError(f"a fault at call {calls}")
        return loss * float("nan")
    return loss
'''


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WORLD_SIZE")}
    return out | {"OMP_NUM_THREADS": "1"}


def start(*args: str, cwd: Path, torchrun: bool = False) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [sys.executable, *(launcher if torchrun else []), "-m", "runner", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a test can kill the launcher and its ranks at once
    )


def runner(*args: str, cwd: Path, torchrun: bool = False, timeout: float = 120):
    proc = start(*args, cwd=cwd, torchrun=torchrun)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def only_run(cwd: Path) -> Path:
    runs = list((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs  # every rank in one run directory
    return runs[0]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """sine_mlp over 2 processes started by the runner, in Hydra's default run directory."""
    cwd = tmp_path_factory.mktemp("two")
    code, out, err = runner(*SINE, *EVERY, "trainer.devices=2", cwd=cwd)
    assert code == 0, out + err
    assert "Warning" not in out + err  # from neither process (hydra-core 1.4 would warn)
    return only_run(cwd)


@pytest.mark.slow
def test_compiled_over_two_processes_the_model_is_one_compiled_node(tmp_path):
    """Compiled around DDP, the model ran eagerly past DDP's graph break, and every rank warned
    that the saved-bytes hook hit torch.compile's recompile limit (aot_eager: no code made)."""
    run_dir = tmp_path / "run"
    args = ("experiment=sine_mlp", "trainer.epochs=1", "logger=none", "trainer.devices=2")
    code, out, err = runner(
        *args, "trainer.compile=aot_eager", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert code == 0 and "recompile" not in out + err, err
    assert "CompiledFunctionBackward" in (run_dir / "graph.txt").read_text()


@pytest.mark.slow
def test_two_processes_end_where_one_does_and_only_rank_0_writes(two, run_experiment):
    one, _ = run_experiment(*SINE, *EVERY)
    ddp = read_metrics(two)
    assert ddp["world_size"] == 2 and one["world_size"] == 1 and ddp["steps"] == one["steps"]
    for key in ("final_loss", "best_loss", "val_loss"):
        assert ddp[key] == pytest.approx(one[key], rel=1e-4), key
    names = sorted(p.name for p in two.iterdir())
    assert names == [
        ".hydra",
        ".lock",  # rank 0's, held while the run went on
        "checkpoints",
        "graph.dot",
        "graph.txt",
        "metrics.json",
        "runner.log",
    ]
    assert torch.load(two / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_torchrun_makes_one_run_directory_with_rank_0s_config(tmp_path):
    code, out, err = runner(
        "experiment=sine_mlp",
        "trainer.epochs=2",
        "trainer.amp=bfloat16",
        cwd=tmp_path,
        torchrun=True,
    )
    assert code == 0, out + err
    run_dir = only_run(tmp_path)
    assert (
        read_metrics(run_dir)["world_size"] == 2 and read_metrics(run_dir)["status"] == "completed"
    )
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # rank 0's alone
    assert [p.name for p in run_dir.rglob("config.yaml")] == ["config.yaml"]


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_end(two, tmp_path):
    killed = tmp_path / "killed"
    proc = start(*SINE, *EVERY, "trainer.devices=2", f"hydra.run.dir={killed}", cwd=tmp_path)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, no handler runs
    proc.wait()
    assert last.exists() and not (killed / "metrics.json").exists()
    resumed = tmp_path / "resumed"
    args = (f"hydra.run.dir={resumed}", f"trainer.resume={killed}", "trainer.devices=2")
    code, out, err = runner(*SINE, *EVERY, *args, cwd=tmp_path)
    assert code == 0, out + err
    end = read_metrics(resumed)
    assert 0 < end["resumed_from"]["step"] < end["steps"]
    assert f"Resumed from {last} at step {end['resumed_from']['step']}" in out + err
    for key in ("final_loss", "best_loss", "val_loss", "steps"):
        assert end[key] == read_metrics(two)[key], key


def test_a_look_at_one_pass_over_two_processes_prints_the_posts_lines(tmp_path):
    """`trainer.epochs=0` under trainer.devices=2: the launching process prints what rank 0's
    pass found, as one process does."""
    args = ["experiment=sine_mlp", "trainer.epochs=0", "logger=none", "trainer.devices=2"]
    code, out, err = runner(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 0, out + err
    lines = read_metrics(tmp_path / "run")["first_step"]
    assert lines[-1].startswith("dloss/d4.bias = ") and "loss.grad_fn = MeanBackward0" in lines
    for line in lines:
        assert line in out + err


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    (tmp_path / "faulty.py").write_text(FAULTY)
    run_dir = tmp_path / "run"
    args = ["loss._target_=faulty.mse", "+loss.at=13", "trainer.devices=2", "logger=none"]
    code, out, err = runner(
        "experiment=sine_mlp", "trainer.epochs=3", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert code == 1, out + err
    # the 13th call: the shape check and the look for unused layers at build, then steps
    # 0..10; seen at log step 25
    assert (
        read_metrics(run_dir)["status"] == "diverged"
        and read_metrics(run_dir)["diverged_step"] == 10
    )
    assert read_metrics(run_dir)["steps"] == 26


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_with_an_error(tmp_path):
    (tmp_path / "faulty.py").write_text(FAULTY)
    run_dir = tmp_path / "run"
    args = ["loss._target_=faulty.mse", "+loss.at=13", "+loss.fault=exit", "trainer.devices=2"]
    started = time.monotonic()
    code, out, err = runner(
        "experiment=sine_mlp", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=90
    )
    assert code == 1 and time.monotonic() - started < 60, out + err
    assert "Failed: trainer.devices=2: rank 1 failed (exit status 3); every rank stopped" in err
    # the launcher's own log of it (exit codes, ProcessExitedException) is left out
    assert "torch/distributed/elastic" not in err and "Terminating process" not in err, err
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "failed" and metrics["world_size"] == 2
    assert "rank 1 failed" in metrics["error"]  # not rank 0's dropped connection


@pytest.mark.slow
def test_a_rank_that_raises_shows_its_traceback_and_is_the_one_blamed(tmp_path):
    """As one process shows it: the launcher's own log of it is quieted."""
    (tmp_path / "faulty.py").write_text(FAULTY)
    args = ["loss._target_=faulty.mse", "+loss.at=13", "+loss.fault=raise", "trainer.devices=2"]
    code, out, err = runner("experiment=sine_mlp", *args, cwd=tmp_path, timeout=90)
    assert code == 1, out + err
    assert "\nRuntimeError: a fault at call 13\n" in err and "in mse" in err
    # the launcher may stop at rank 0's exit, before rank 1's: then no rank is named as failed
    blamed = "rank 1 failed (exit status 1); every rank stopped"
    unnamed = "a rank failed (its error is above), and rank 0 lost the connection to it"
    assert f"Failed: trainer.devices=2: {blamed}" in err or unnamed in err, err
    assert "exit status 4" not in err


@pytest.mark.slow
def test_a_config_error_on_one_rank_stops_every_rank_at_once(tmp_path):
    """Rank 1's loss fails its first call, the check while the run is built; rank 0's build
    works. Rank 0 is told and says rank 1's error, rather than wait in DDP's first collective
    for the rank that returned, until the timeout."""
    (tmp_path / "faulty.py").write_text(FAULTY)
    args = ["loss._target_=faulty.mse", "+loss.at=1", "+loss.fault=raise", "trainer.devices=2"]
    started = time.monotonic()
    code, out, err = runner("experiment=sine_mlp", *args, "logger=none", cwd=tmp_path, timeout=90)
    assert code == 2 and time.monotonic() - started < 60, out + err
    assert "Config error: rank 1: loss (loss.at=1, loss.fault='raise'): " in err
    assert err.rstrip().endswith("failed: a fault at call 1"), err


WHICH = "which failed or was killed, at step 10 (its own error, if it printed one, says why)"


@pytest.mark.slow
def test_under_torchrun_the_rank_left_behind_says_it_lost_a_peer_not_a_traceback(tmp_path):
    (tmp_path / "faulty.py").write_text(FAULTY)
    run_dir = tmp_path / "run"
    args = ["loss._target_=faulty.mse", "+loss.at=13", "+loss.fault=exit"]
    code, out, err = runner(
        "experiment=sine_mlp", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, torchrun=True
    )
    assert code != 0
    assert "Error executing job" not in err  # Hydra's traceback of rank 0's gloo error
    metrics = read_metrics(run_dir)
    assert metrics["world_size"] == 2 and metrics["status"] in ("failed", "interrupted")
    # torchrun's SIGTERM to rank 0 may come before its line, or before its collective fails
    failed = [line for line in err.splitlines() if line.startswith("Failed:")]
    assert failed in ([], [f"Failed: rank 0 lost the connection to another rank, {WHICH}"])


@pytest.mark.slow
def test_objective_only_over_two_processes_is_one_config_error(tmp_path):
    args = ("experiment=rosenbrock", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}")
    code, out, err = runner(*args, cwd=tmp_path)
    assert code == 2, out + err
    assert [line for line in err.splitlines() if "Config error" in line] == [
        "Config error: dataset=none has no data to split over processes, so each would "
        "compute the same; set trainer.devices=1 and trainer.num_nodes=1"
    ]
    assert not (tmp_path / "run" / "metrics.json").exists()  # refused before any writing
    short = ("trainer.epochs=5", "logger=none")  # the advice is taken: a short run shows it
    code, out, err = runner(*args[:-2], "trainer.devices=1", *short, args[-1], cwd=tmp_path)
    assert code == 0, out + err  # so the advice works in the same directory


@pytest.mark.slow
@JOBLIB
def test_joblib_runs_jobs_of_two_processes_each(tmp_path):
    """A joblib worker's start method is loky's, which the ranks it started were told to
    take: every rank failed with `cannot find context for 'loky'`."""
    args = ("experiment=linear_fit", "trainer.epochs=5", "logger=none", "trainer.devices=2")
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    status, out, sweep_dir, rows = sweep(tmp_path, "s", *args, "optimizer.lr=0.1,0.2", *joblib)
    assert status == 0, out[-3000:]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {read_metrics(Path(r["run_dir"]))["world_size"] for r in rows} == {2}


@pytest.mark.slow
def test_submitit_local_runs_one_job_over_two_tasks(tmp_path):
    sweep = tmp_path / "sweep"
    launcher = ("hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2")
    args = ("experiment=sine_mlp", "trainer.epochs=2", "trainer.devices=2", "logger=none")
    code, out, err = runner("-m", *args, *launcher, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, out + err
    (job,) = [p for p in sweep.iterdir() if p.name.startswith("0_")]
    assert read_metrics(job)["world_size"] == 2 and read_metrics(job)["status"] == "completed"


def test_bfloat16_autocast_trains_and_keeps_the_graph_and_figures(run_experiment):
    args = ("experiment=sine_mlp", "trainer.epochs=3")
    full, _ = run_experiment(*args, "logger=none")
    half, run_dir = run_experiment(*args, "trainer.amp=bfloat16")
    assert half["status"] == "completed"
    assert half["final_loss"] == pytest.approx(full["final_loss"], rel=0.1)
    assert "AddmmBackward0" in (run_dir / "graph.txt").read_text()
    assert (run_dir / "graph.txt").read_text().count("ToCopyBackward0") > 0  # the casts
    assert "figure/fit" in event_accumulator(run_dir).Tags()["images"]


@pytest.mark.parametrize(
    "override, words",
    [
        (["trainer.amp=float16", "trainer.device=cpu"], "trainer.amp=float16 needs CUDA"),
        (["trainer.amp=bfloat16", "trainer.dtype=float64"], "set trainer.dtype=float32"),
        (["trainer.amp=half"], "trainer.amp='half' is not allowed; use null, bfloat16"),
        (["trainer.devices=0"], "trainer.devices=0 must be at least 1"),
        (["trainer.devices=2", "trainer.num_nodes=2"], "torchrun (--nnodes=2"),
    ],
)
def test_scale_settings_that_cannot_work_are_config_errors(run_experiment, override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        run_experiment("experiment=sine_mlp", "trainer.epochs=1", *override)


def test_more_devices_than_gpus_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="trainer.devices=2 but this machine has 1 GPU"):
        distributed.pin(World(local_size=2), "cuda")
    with pytest.raises(ConfigError, match="names one GPU for every process"):
        distributed.pin(World(), "cuda:0")


def test_what_ddp_cannot_split_is_refused_before_any_collective(tmp_path):
    b = build(compose_config("experiment=rosenbrock"), tmp_path)
    with pytest.raises(ConfigError, match="dataset=none has no data to split"):
        distributed.check(b, World(rank=0, size=2))
    formula = 'loss.formula="mean((pred - y)**2) + 0.01 * s**2"'
    b = build(compose_config("experiment=linear_fit", "loss=expression", formula), tmp_path)
    with pytest.raises(ConfigError, match=r"the loss's own parameters \(s\) are outside"):
        distributed.check(b, World(rank=0, size=2))


def test_a_run_its_processes_refuse_leaves_no_directory(tmp_path):
    """As one process leaves none: no `.hydra/` and lock that would pass for a run's."""
    run_dir = tmp_path / "run"
    args = ("experiment=rosenbrock", "trainer.devices=2", f"hydra.run.dir={run_dir}")
    code, _, err = runner(*args, cwd=tmp_path, timeout=90)
    assert code == 2 and "Config error: dataset=none has no data to split" in err, err
    assert not run_dir.exists()


def test_a_sweep_job_its_processes_refuse_is_a_failed_row_in_its_directory(tmp_path):
    """Unlike a single run's, its directory stays: `.hydra/` says it started, metrics.json why
    it failed (the sweep crashed writing into the directory the refusal had removed)."""
    args = ("experiment=rosenbrock", "trainer.devices=2", "logger=none", "optimizer.lr=0.1,0.2")
    status, out, _, rows = sweep(tmp_path, "s", *args)
    assert status == 1 and "Traceback" not in out, out[-3000:]  # 1: no job completed
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for row in rows:
        assert "dataset=none has no data to split" in row["error"]
        assert (Path(row["run_dir"]) / ".hydra" / "overrides.yaml").is_file()


def test_under_torchrun_a_config_its_processes_disagree_with_leaves_no_directory(tmp_path):
    run_dir = tmp_path / "run"
    args = ("experiment=sine_mlp", "trainer.devices=3", "logger=none", f"hydra.run.dir={run_dir}")
    code, _, err = runner(*args, cwd=tmp_path, torchrun=True, timeout=90)
    assert code != 0 and "Config error: trainer.devices=3 x trainer.num_nodes=1 asks for" in err
    assert not run_dir.exists()


def test_one_process_pays_nothing_for_the_parts_it_does_not_use(tmp_path):
    b = build(compose_config("experiment=linear_fit"), tmp_path)
    part = distributed.part(b, World())
    assert part.loss_on == b.loss_on and part.step == b.optimizer.step
    loss = torch.tensor(1.0)
    assert part.mean(loss) is loss and part.scale(loss) is loss


def test_a_trial_pruned_at_an_epoch_end_is_agreed_on_there(tmp_path, monkeypatch):
    """Rank 0's pruner judges a validation loss at an epoch's end: the ranks must agree on
    stopping there too, not only at log steps, or the others would train on alone."""
    b = build(compose_config("experiment=sine_mlp", "logger=none", "trainer.epochs=3"), None)
    asked: list[tuple[int, bool]] = []
    own = distributed.part

    def recording(b: Any) -> distributed.Part:
        part = own(b)
        agree = part.agree

        def agreeing(stop: Any, state: State, log_now: bool) -> None:
            asked.append((state.step, log_now))
            agree(stop, state, log_now)

        part.agree = agreeing
        return part

    class PrunesAtTheFirstEpochEnd(Observer):
        def epoch(self, state: State) -> None:
            state.status = "pruned"

    monkeypatch.setattr(distributed, "part", recording)
    state = train(b, State(), [PrunesAtTheFirstEpochEnd()], None)
    per_epoch = math.ceil(800 / 64)  # sine_mlp's training points in batches of 64
    assert state.status == "pruned" and state.step == per_epoch and state.epoch == 1
    assert asked[-1] == (per_epoch, True)  # agreed on at the epoch's end, before any step


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_with_a_gradient_scaler_on_cuda(run_experiment):
    args = ("experiment=sine_mlp", "trainer.epochs=3", "trainer.device=cuda")
    full, _ = run_experiment(*args, "logger=none")
    half, run_dir = run_experiment(*args, "trainer.amp=float16", "trainer.checkpoint_every=10")
    assert half["status"] == "completed"
    assert half["final_loss"] == pytest.approx(full["final_loss"], rel=0.1)
    scaler = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bfloat16_and_compile_on_cuda(run_experiment):
    args = ("experiment=sine_mlp", "trainer.epochs=3", "trainer.device=cuda", "logger=none")
    full, _ = run_experiment(*args)
    fast, _ = run_experiment(*args, "trainer.amp=bfloat16", "trainer.compile=true")
    assert fast["final_loss"] == pytest.approx(full["final_loss"], rel=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_more_devices_than_gpus_is_one_line_on_cuda(tmp_path):
    n = torch.cuda.device_count() + 1
    args = ("experiment=sine_mlp", "trainer.device=cuda", f"trainer.devices={n}")
    code, out, err = runner(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        f"Config error: trainer.devices={n} but this machine has {n - 1} GPU(s); set "
        f"trainer.devices (or torchrun's --nproc-per-node) to at most {n - 1}, or "
        "trainer.device=cpu for gloo processes"
    ], err


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_with_nccl_end_where_one_does(tmp_path, run_experiment):
    args = (*SINE, "logger=none", "trainer.device=cuda")
    one, _ = run_experiment(*args)
    code, out, err = runner(
        *args, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert code == 0, out + err
    assert read_metrics(tmp_path / "r")["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)


LEAVE = """
import gc
import os
import weakref
import torch
import torch.distributed as dist
from runner.train import distributed
from runner.train.world import World

gc.disable()  # the collector runs when `leave` runs it, not at some allocation by chance
models = []
destroy = dist.destroy_process_group


def destroyed():  # which of the DDP models are still there as their process group goes
    print("alive:", [model() is not None for model in models])
    destroy()


dist.destroy_process_group = destroyed


def train(fail):  # as a run does; port 0: the store takes a free port
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
    models.append(weakref.ref(model))
    model(torch.ones(3, 2)).sum().backward()
    if fail:
        raise RuntimeError("the run failed")


for fail in (False, True):
    distributed.join(World(address="tcp://127.0.0.1:0"), None)
    try:
        with distributed.leaving():
            train(fail)
    except RuntimeError:
        pass
tasks = f"/proc/{os.getpid()}/task"
print(sorted(open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_leaving_frees_the_ddp_model_then_ends_gloos_threads_whether_the_run_ends_or_fails():
    """gloo's threads left running into the interpreter's exit, one cut off mid-call can abort a
    rank ("terminate called without an active exception") after its run ended. A DDP model is
    a reference cycle: freed after its group was destroyed, it hung its process now and then
    (about 1 in 100 under load), as a run or a test ended."""
    done = subprocess.run(
        [sys.executable, "-c", LEAVE], env=env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["alive: [False]", "alive: [False, False]"], done.stdout
    threads = done.stdout.strip().splitlines()[-1]
    assert "gloo" not in threads and "tcpstore" not in threads, threads


@pytest.mark.parametrize("text", ["10m", "0", "-5", "inf"])
def test_a_bad_collective_timeout_is_a_config_error_naming_it(monkeypatch, text):
    """RUNNER_DIST_TIMEOUT_S is read when processes join (a single process never reads it)."""
    monkeypatch.setenv(distributed.TIMEOUT, text)
    with pytest.raises(ConfigError, match=f"RUNNER_DIST_TIMEOUT_S='{text}' must be a positive"):
        distributed.timeout()
    monkeypatch.setenv(distributed.TIMEOUT, "2.5")
    assert distributed.timeout().total_seconds() == 2.5


def test_under_torchrun_a_rank_that_lost_another_says_so_in_one_line(monkeypatch, capsys):
    """As a rank of `trainer.devices=N` does: its line and exit status 4, not a traceback."""
    import runner.run
    from runner import launch

    lost = launch.RankFailed("rank 1 lost the connection to another rank, which failed")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "argv", ["runner", "experiment=linear_fit"])
    monkeypatch.setattr(launch, "join", lambda *args: (None, None, []))
    monkeypatch.setattr(launch.logging, "basicConfig", lambda **kwargs: None)  # the session's
    monkeypatch.setattr(runner.run, "run", lambda *args: (_ for _ in ()).throw(lost))
    with pytest.raises(SystemExit) as stopped:
        launch.follow()
    assert stopped.value.code == launch.LOST
    assert capsys.readouterr().err == f"{lost}\n"


def test_a_rank_whose_config_disagrees_leaves_the_process_group(monkeypatch):
    """Under torchrun, a config error once the group started: its threads end before the
    interpreter (one cut off there aborted a rank after its Config error line)."""
    from runner import launch

    left = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "join", lambda w, sent: ({"trainer": {"devices": 3}}, "/", []))
    monkeypatch.setattr(distributed, "leave", lambda: left.append("left"))
    with pytest.raises(ConfigError, match="asks for 3 processes, and 2 were started"):
        launch.join(None, None, ())
    assert left == ["left"]


def test_under_torchrun_devices_is_the_processes_of_each_node_not_of_the_whole_run(monkeypatch):
    """torchrun --nproc-per-node=4 on one node with devices=2 x num_nodes=2: the count agrees,
    but the run would record two nodes it did not have."""
    from runner import launch

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    sent = {"trainer": {"devices": 2, "num_nodes": 2}}
    monkeypatch.setattr(distributed, "join", lambda w, _: (sent, "/", []))
    monkeypatch.setattr(distributed, "leave", lambda: None)
    with pytest.raises(ConfigError, match="on each node, and 4 were started on this one; set "):
        launch.join(None, None, ())
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two nodes of two: as asked
    monkeypatch.setattr(distributed, "pin", lambda *args: None)
    assert launch.join(None, None, ())[0].trainer.num_nodes == 2


def test_a_ctrl_c_before_the_ranks_start_stops_them_as_they_start(tmp_path, monkeypatch):
    """The terminal's Ctrl-C reaches the launcher alone while its processes are not there
    yet: they are told, and stop before they run anything (the run went on to its end)."""
    import torch.distributed.launcher.api as api

    import runner.run
    from runner import launch

    told = []

    def elastic_launch(config: Any, entry: Any) -> Any:
        def start(*args: Any) -> Any:
            os.kill(os.getpid(), signal.SIGINT)  # before any rank is there
            told.append(Path(args[-1]))
            with pytest.raises(SystemExit) as stopped:
                entry(*args)  # a rank starting now
            assert stopped.value.code == 128 + signal.SIGINT
            return {0: {"config_error": "no rank ran"}}

        return start

    monkeypatch.setattr(api, "elastic_launch", elastic_launch)
    monkeypatch.setattr(runner.run, "run", lambda *args: pytest.fail("a rank ran the run"))
    cfg = compose_config("experiment=linear_fit", "trainer.devices=2", "logger=none")
    with pytest.raises(ConfigError, match="no rank ran"):
        launch.spawn(cfg, tmp_path / "run", [])
    assert told and not told[0].exists()  # and gone with the launcher's call


def test_one_process_keeps_an_errors_variables_for_a_debugger():
    def fail() -> None:
        kept = 42  # noqa: F841 (what a post-mortem debugger would look at)
        raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError) as raised, distributed.leaving():
        fail()
    assert raised.traceback[-1].frame.f_locals["kept"] == 42


def test_a_rank_that_lost_another_records_that_not_gloos_text(monkeypatch, tmp_path):
    """Under torchrun, `kill -9` of rank 1: rank 0's metrics.json blamed rank 0 in gloo's words."""
    import runner.run
    from runner import launch

    def reset(*args: Any) -> None:
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")

    monkeypatch.setattr(distributed, "lost_a_rank", lambda e: "gloo" in str(e))  # as for 2 ranks
    monkeypatch.setattr(runner.run, "train", reset)
    with pytest.raises(launch.RankFailed):
        runner.run.run(compose_config("experiment=linear_fit", "logger=none"), tmp_path)
    assert read_metrics(tmp_path)["error"] == (
        "RankFailed: rank 0 lost the connection to another rank, which failed or was killed, at "
        "step 0 (its own error, if it printed one, says why)"
    )


def test_a_ctrl_c_while_a_rank_starts_exits_130_not_0_without_a_result(monkeypatch):
    """torch's process wrapper ends a process whose function raised KeyboardInterrupt with
    status 0 and no result, which the launcher then waited for forever: the run hung."""
    from runner import launch

    def ctrl_c(**kwargs: Any) -> None:
        raise KeyboardInterrupt  # as the rank starts, before its run

    monkeypatch.setattr(launch.logging, "basicConfig", ctrl_c)
    previous, code = signal.getsignal(signal.SIGINT), None
    try:
        launch.rank_main({}, "/nowhere", [])
    except KeyboardInterrupt:  # not raised on: pytest would stop the whole session
        code = "KeyboardInterrupt left rank_main"
    except SystemExit as stopped:
        code = stopped.code
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 128 + signal.SIGINT


class Writes(list):
    """A stream that keeps each write apart, as an unbuffered stderr sends them."""

    def write(self, text: str) -> int:
        self.append(text)
        return len(text)


def test_a_ranks_last_line_is_one_write_so_torchruns_log_cannot_split_it(monkeypatch):
    """Under PYTHONUNBUFFERED a print is two writes, and torchrun's log line fell in between."""
    from runner import cli, launch

    lost = launch.RankFailed("rank 0 lost the connection to another rank")
    writes = Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    assert cli.report(lost) == 1
    assert writes == [f"Failed: {lost}\n"]


class SkipsALayer(torch.nn.Module):
    """A layer its forward never uses: DDP has to be told, or its second step stops."""

    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        super().__init__()
        self.used, self.skipped = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_model_with_a_layer_it_never_uses_trains_under_ddp(tmp_path: Path):
    """In a gloo group of one process, in this one: DDP's reducer is the same for any size."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1
    )
    try:
        for model, skips in (("test_distributed.SkipsALayer", True), (None, False)):
            chosen = [f"model._target_={model}"] if model else []
            b = build(compose_config("experiment=sine_mlp", "logger=none", *chosen), tmp_path)
            loss_on = distributed.sharded(b, World(rank=0, size=1))
            for _ in range(3):
                b.optimizer.zero_grad()
                loss_on(None).backward()
                b.optimizer.step()
            assert distributed.skips_parameters(b) is skips  # only then asks DDP to look
    finally:
        dist.destroy_process_group()
