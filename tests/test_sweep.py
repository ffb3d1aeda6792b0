"""Sweeps: one directory per job, an HParams row in each, summary.csv best first, failures
that do not lose the other jobs, and the parallel and SLURM launchers (Optuna searches:
test_optuna.py)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import event_accumulator, read_metrics, session_hparams

from runner.__main__ import main
from runner.sweep.summary import COLUMNS, STOP


def plugin(name: str) -> pytest.MarkDecorator:
    """A sweeper or launcher of the `sweep` extra: its tests skip where it is not installed
    (`pip install -e ".[dev]"`), as the CUDA tests do without a GPU."""
    try:
        missing = importlib.util.find_spec(f"hydra_plugins.hydra_{name}") is None
    except ModuleNotFoundError:  # no plugin at all: not even the namespace
        missing = True
    return pytest.mark.skipif(missing, reason=f"needs the sweep extra (hydra_{name})")


JOBLIB = plugin("joblib_launcher")
SUBMITIT = plugin("submitit_launcher")
TINY = "trainer.epochs=5"  # a sweep here checks the plumbing, not the fit
GRID = ("experiment=linear_fit", "optimizer.lr=0.01,0.1,1.0", "seed=1,2,3", TINY)


def sweep(tmp_path: Path, name: str, *args: str) -> tuple[int, str, Path, list[dict[str, str]]]:
    """`python -m runner -m ...` into tmp_path/name, in this process (one torch import, not
    one per sweep): returns (exit status, terminal text, sweep dir, summary.csv rows)."""
    sweep_dir = tmp_path / name
    argv, root = sys.argv, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.argv = ["runner", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:  # Hydra configured logging for the jobs: give pytest its own back
        sys.argv = argv
        for handler in root.handlers[:]:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    summary = sweep_dir / "summary.csv"
    rows = list(csv.DictReader(summary.open())) if summary.exists() else []
    return status, out.getvalue(), sweep_dir, rows


def results(sweep_dir: Path) -> dict[str, tuple[Any, float]]:
    """overrides -> (learned parameters, final loss) for every job of a sweep. The launcher
    is a hydra/ override, not one of the job's; the logger does not change the numbers."""
    rows = csv.DictReader((sweep_dir / "summary.csv").open())
    out = {}
    for row in rows:
        metrics = read_metrics(Path(row["run_dir"]))
        overrides = row["overrides"].replace(" logger=none", "")
        out[overrides] = (metrics["params"], metrics["final_loss"])
    return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[int, str, Path, list[dict[str, str]]]:
    """The 3 x 3 grid of the README, run once for the tests below."""
    return sweep(tmp_path_factory.mktemp("grid"), "grid", *GRID)


@pytest.mark.slow
def test_grid_sweep_writes_one_directory_hparams_row_and_csv_row_per_job(grid):
    status, out, sweep_dir, rows = grid
    assert status == 0, out[-2000:]
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 9 and {r["status"] for r in rows} == {"completed"}
    assert sorted(int(r["job"]) for r in rows) == list(range(9))
    # nothing but the jobs, each named by its number and what varied, and the sweep's own
    # two files: no stray HParams folders
    grid = [f"optimizer.lr={lr},seed={seed}" for lr in ("0.01", "0.1", "1.0") for seed in "123"]
    assert sorted(p.name for p in sweep_dir.iterdir()) == sorted(
        [*(f"{job}_{varied}" for job, varied in enumerate(grid)), "multirun.yaml", "summary.csv"]
    )
    finals = [float(r["final_loss"]) for r in rows]
    assert finals == sorted(finals)  # best first; full precision, as metrics.json has it
    for row in rows:
        run_dir = Path(row["run_dir"])
        metrics = read_metrics(run_dir)
        assert float(row["final_loss"]) == metrics["final_loss"]
        assert [p.name for p in run_dir.iterdir() if p.is_dir()] == [".hydra"]
        hparams = session_hparams(run_dir)
        swept = dict(o.split("=") for o in row["overrides"].split())
        assert hparams["optimizer.lr"] == float(swept["optimizer.lr"])
        assert hparams["seed"] == int(swept["seed"])
        assert hparams["trainer.epochs"] == 5
        # the keys the command line set or the sweep varied, not every value of the config
        assert set(hparams) == {"experiment", "optimizer.lr", "seed", "trainer.epochs"}
        final = event_accumulator(run_dir).Scalars("hparam/final_loss")
        assert [e.value for e in final] == [pytest.approx(metrics["final_loss"], rel=1e-6)]
    assert "Sweep summary (9 jobs, best first)" in out
    assert "all jobs: experiment=linear_fit trainer.epochs=5" in out


@pytest.mark.slow
def test_a_diverged_and_a_failed_job_do_not_lose_the_healthy_one(tmp_path: Path):
    args = ("experiment=linear_fit", "optimizer.lr=0.1,100,-1", "trainer.epochs=20")
    status, out, _, rows = sweep(tmp_path, "bad", *args)
    assert status == 1
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "diverged"),
        ("2", "failed"),
    ]
    assert float(rows[0]["final_loss"]) < 0.1
    assert rows[1]["final_loss"] == "" and rows[1]["objective"] == "inf"
    assert "optimizer.lr=-1" in rows[2]["error"] and "positive" in rows[2]["error"]
    assert read_metrics(Path(rows[2]["run_dir"]))["status"] == "failed"
    assert "1 completed, 1 diverged, 1 failed" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [pytest.param("joblib", marks=JOBLIB), pytest.param("submitit_local", marks=SUBMITIT)],
)
def test_parallel_launchers_give_the_basic_launchers_results(tmp_path: Path, grid, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []  # this machine's cores
    args = ("experiment=linear_fit", "optimizer.lr=0.01,0.1", "seed=1,2", TINY, "logger=none")
    status, out, sweep_dir, rows = sweep(
        tmp_path, launcher, *args, f"hydra/launcher={launcher}", *extra
    )
    assert status == 0, out[-2000:]
    assert len(rows) == 4
    basic = results(grid[2])
    for overrides, outcome in results(sweep_dir).items():
        assert basic[overrides] == outcome  # the same numbers, to the last bit


def ctrl_c_once(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    settle: float = 0,
    sig: int = signal.SIGINT,
) -> str:
    """A terminal's Ctrl-C (to the whole group) `settle` seconds after `ready()`; the output."""
    try:
        deadline = time.monotonic() + 90
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        time.sleep(settle)
        os.killpg(process.pid, sig)
        return process.communicate(timeout=90)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def in_own_group(command: list[str], cwd: Path) -> subprocess.Popen:
    """The command in a process group of its own, as a terminal's foreground job: a Ctrl-C
    there reaches the sweep and its workers (`os.killpg`)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even from `cmd &`
    )


@pytest.mark.slow
@JOBLIB
@pytest.mark.parametrize(
    ("presses", "sig", "group"),
    [
        (1, signal.SIGINT, True),
        (2, signal.SIGINT, True),
        (1, signal.SIGTERM, False),
        (0, signal.SIGINT, True),
    ],
    ids=["ctrl-c", "ctrl-c twice", "sigterm to the sweep alone", "timeout -s INT's pair"],
)
def test_ctrl_c_stops_a_joblib_sweep_and_keeps_what_its_jobs_did(
    tmp_path: Path, presses, sig, group
):
    """Ctrl-C at a terminal reaches the sweep and its workers (one process group): running
    jobs stop after their step and write their metrics, queued ones do not start, the
    summary is written, and the exit status is 130, without a traceback. A second Ctrl-C
    stops it at once, with the same status. A SIGTERM that reaches the sweep's process alone
    (a scheduler's) stops the running jobs too, through the stop file, and exits 143. What
    `timeout -s INT` sends, to the sweep's process and then its group, is one Ctrl-C."""
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "runner", "-m", "experiment=linear_fit", "logger=none"]
    command += ["optimizer.lr=0.01,0.02,0.03,0.04", "trainer.epochs=1000000"]
    command += ["trainer.checkpoint_every=100", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    process = in_own_group([*command, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    try:
        deadline = time.monotonic() + 90
        jobs = ["0_optimizer.lr=0.01", "1_optimizer.lr=0.02"]  # named by what varies
        while not all((sweep_dir / j / "checkpoints" / "last.pt").exists() for j in jobs):
            assert process.poll() is None and time.monotonic() < deadline, "jobs never trained"
            time.sleep(0.1)
        if presses == 0:  # as GNU timeout sends it, the sweep's handler run in between
            process.send_signal(sig)
            time.sleep(0.005)
            os.killpg(process.pid, sig)
        for _ in range(presses):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
            time.sleep(0.05)
        out, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, out[-3000:]
    assert "Traceback" not in out and "Interrupted: running jobs stop" in out, out[-4000:]
    if presses == 2:
        assert "Interrupted again: stopped at once" in out
        return
    rows = {r["job"]: r for r in csv.DictReader((sweep_dir / "summary.csv").open())}
    assert sorted(rows) == ["0", "1", "2", "3"]
    assert {r["status"] for r in rows.values()} == {"interrupted"}
    for job in "01":  # stopped mid-run, with their metrics and a checkpoint to resume from
        assert 100 <= int(rows[job]["steps"]) < 1_000_000
    for job in "23":
        assert rows[job]["error"] == "not started: the sweep was interrupted"
    assert not (sweep_dir / STOP).exists()
    for job in jobs:
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["signal"] == sig.name


@pytest.mark.slow
@JOBLIB
@pytest.mark.parametrize(
    ("workers", "sig"),
    [(2, signal.SIGINT), (3, signal.SIGINT), (2, signal.SIGTERM)],
    ids=["one done", "one never used", "sigterm to the group, one done"],
)
def test_ctrl_c_with_a_joblib_worker_idle_still_ends_the_sweep_summarised(tmp_path, workers, sig):
    """A terminal's Ctrl-C reaches an idle worker too, whose KeyboardInterrupt broke joblib's
    pool: the sweep ended with BrokenProcessPool's traceback, exit 1 and no summary. That
    worker had finished its job, or (more workers than jobs) never had one. SIGTERM to the
    whole group (`kill -TERM -PGID`, `timeout`) killed it: TerminatedWorkerError."""
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "runner", "-m", "experiment=linear_fit", "logger=none"]
    command += ["trainer.epochs=5,1000000", "trainer.checkpoint_every=100"]
    command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]
    process = in_own_group([*command, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    short, long = sweep_dir / "0_trainer.epochs=5", sweep_dir / "1_trainer.epochs=1000000"

    def ready() -> bool:  # the short job done, so its worker waits for work
        return (short / "metrics.json").exists() and (long / "checkpoints").exists()

    out = ctrl_c_once(process, ready, settle=0.5, sig=sig)
    assert process.returncode == 128 + sig, out[-3000:]
    assert "Traceback" not in out, out[-4000:]
    rows = {r["job"]: r["status"] for r in csv.DictReader((sweep_dir / "summary.csv").open())}
    assert rows == {"0": "completed", "1": "interrupted"}
    assert not (sweep_dir / STOP).exists()


@JOBLIB
def test_joblib_with_no_jobs_is_a_config_error(tmp_path: Path, capsys):
    args = ("experiment=linear_fit", "optimizer.lr=0.1,0.2", "hydra/launcher=joblib")
    status, _, sweep_dir, _ = sweep(tmp_path, "none", *args, "hydra.launcher.n_jobs=0")
    assert status == 2 and not (sweep_dir / "0_optimizer.lr=0.1").exists()
    assert "Config error: hydra.launcher.n_jobs=0 runs no job" in capsys.readouterr().err


@pytest.mark.parametrize("subdir", ["null", "'meta'"])
def test_a_sweep_finishes_whatever_hydra_output_subdir_says(tmp_path: Path, subdir):
    """Each job's `.hydra/overrides.yaml`, which a sweep summarises and finishes its jobs by,
    is the runner's own, written as the job starts, beside Hydra's (if any)."""
    args = ("experiment=linear_fit", TINY, "optimizer.lr=0.1,0.2", f"hydra.output_subdir={subdir}")
    status, out, sweep_dir, rows = sweep(tmp_path, "bare", *args)
    assert status == 0 and [r["status"] for r in rows] == ["completed"] * 2, out
    status, out, _, _ = sweep(tmp_path, "bare", *args)
    assert status == 0 and "Completed earlier" in out and "Learned" not in out, out


def test_a_search_that_maximizes_lists_the_highest_objective_first(tmp_path: Path):
    """Best first, as the study ranks: a job that did not complete is its worst, -inf."""
    from runner.sweep.summary import collect

    jobs = [(0, "completed", 1.0), (1, "completed", 3.0), (2, "diverged", None), (3, "pruned", 2.0)]
    for num, status, objective in jobs:
        hydra = tmp_path / f"{num}_seed={num}" / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (hydra / "overrides.yaml").write_text(f"- seed={num}\n")
        metrics = {"status": status, "objective": objective}
        (hydra.parent / "metrics.json").write_text(json.dumps(metrics))
    ranked = [(r["job"], r["objective"]) for r in collect(tmp_path, maximize=True)]
    assert ranked == [(1, 3.0), (0, 1.0), (3, 2.0), (2, -math.inf)]
    ranked = [(r["job"], r["objective"]) for r in collect(tmp_path)]
    assert ranked == [(0, 1.0), (1, 3.0), (3, 2.0), (2, math.inf)]


def test_a_fault_at_the_sweeps_start_stops_it(tmp_path: Path, capsys, monkeypatch):
    """Hydra turns a callback's exception into a warning and runs the jobs on, unsummarised."""
    from runner.sweep import resume

    def broken(config: Any) -> None:
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(resume, "check", broken)
    status, out, sweep_dir, _ = sweep(tmp_path, "s", "experiment=linear_fit", "seed=1,2")
    assert status == 1 and not sweep_dir.exists(), out
    assert capsys.readouterr().err.strip().splitlines() == [
        "Failed: the sweep's start: TypeError: 'NoneType' object is not subscriptable"
    ]


def test_a_worker_whose_sweep_process_was_killed_stops_its_job(tmp_path: Path, monkeypatch):
    """A joblib worker outlives a SIGKILL of the sweep's process (it is made the child of
    another): its job stops at the next log step, not train on beside the next run's."""
    import multiprocessing
    import os
    from types import SimpleNamespace

    from runner.sweep.trial import Stopped
    from runner.train.state import State

    for sweep_pid, stops in ((None, False), (os.getppid(), False), (os.getppid() + 1, True)):
        sweep = None if sweep_pid is None else SimpleNamespace(pid=sweep_pid)
        monkeypatch.setattr(multiprocessing, "parent_process", lambda sweep=sweep: sweep)
        state = State()
        Stopped(tmp_path).log(SimpleNamespace(state=state))
        assert (state.status == "interrupted") is stops


def test_a_job_never_reads_the_stop_file_before_the_signal_is_in_it(tmp_path: Path, monkeypatch):
    """A job that looks while the sweep writes the stop file sees either no file or the whole
    signal name, so a SIGTERM is never recorded as the "SIGINT" an empty file defaults to."""
    from types import SimpleNamespace

    from runner.sweep.summary import Summary
    from runner.sweep.trial import Stopped
    from runner.train.state import State

    summary, job = Summary(), Stopped(tmp_path)
    summary.stop = tmp_path / STOP
    seen: list[str] = []
    write = Path.write_text

    def write_looked_at_midway(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        self.touch()  # the file exists, empty, as it does while a write is under way
        state = State()
        job.log(SimpleNamespace(state=state))
        seen.append(f"{state.status} {state.signal}")
        return write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_looked_at_midway)
    summary._interrupted(signal.SIGTERM, None)
    monkeypatch.undo()
    late = State()
    job.log(SimpleNamespace(state=late))
    assert seen == ["running None"]  # midway: nothing to read yet
    assert (late.status, late.signal) == ("interrupted", "SIGTERM")
    assert [p.name for p in tmp_path.iterdir()] == [STOP]


def fake_job(sweep_dir: Path, num: int, metrics: dict[str, Any] | None) -> None:
    """A job directory as Hydra and the runner leave it (metrics None: it died first)."""
    run_dir = sweep_dir / str(num)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={num}\n- seed=1\n")
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def end_of_sweep(sweep_dir: Path, fail_on: str) -> int:
    from omegaconf import OmegaConf

    from runner.sweep.summary import Summary

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "sweeper": {}}})
    summary = Summary(fail_on=fail_on)
    summary.started = True  # as its start, which these hand-made jobs skip, would leave it
    try:
        summary.on_multirun_end(config=config)
    except SystemExit as e:
        return int(e.code)
    return 0


@pytest.mark.parametrize(
    ("statuses", "fail_on", "exit_status"),
    [
        (["completed", "completed"], "any", 0),
        (["completed", "diverged"], "any", 1),  # a grid: any bad job fails the sweep
        (["completed", "diverged"], "all", 0),  # a search: a diverged trial is a +inf one
        (["diverged", None], "all", 1),  # ... but a search with no completed trial fails
    ],
)
def test_summary_exit_status(tmp_path: Path, capsys, statuses, fail_on, exit_status):
    objectives = {"completed": 0.30000000000000004, "diverged": None}
    for num, status in enumerate(statuses):
        metrics = None if status is None else {"status": status, "objective": objectives[status]}
        fake_job(tmp_path, num, metrics)
    assert end_of_sweep(tmp_path, fail_on) == exit_status
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert len(rows) == len(statuses)
    assert capsys.readouterr().out.count("optimizer.lr=") == len(statuses)
    if statuses[0] == "completed":
        assert rows[0]["objective"] == "0.30000000000000004"  # full precision
    if None in statuses:
        assert rows[-1]["status"] == "failed" and "no metrics.json" in rows[-1]["error"]


def test_summary_reads_the_overrides_hydra_saved(tmp_path: Path):
    """Hydra saves a job's overrides with OmegaConf; the summary reads them with libyaml."""
    from omegaconf import OmegaConf

    from runner.sweep.summary import collect

    overrides = [
        'model.formula="sin(x) * w"',
        "optimizer.lr=1e-3",
        "+trainer.note='a: b, c'",
        "dataset.path=data/ümlaut #1.csv",
        "seed=null",
    ]
    fake_job(tmp_path, 7, {"status": "completed", "objective": 0.5})
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / "7" / ".hydra" / "overrides.yaml")
    (row,) = collect(tmp_path)
    assert row["job"] == 7
    assert row["overrides"] == " ".join(overrides)


def test_a_single_runs_directory_in_the_sweep_dir_is_no_job(tmp_path):
    """`hydra.run.dir` inside a sweep dir: Hydra's `.hydra/` there has no job number."""
    from runner.sweep.resume import earlier_jobs
    from runner.sweep.summary import collect

    fake_job(tmp_path, 0, {"status": "completed", "objective": 0.5})
    (tmp_path / "single" / ".hydra").mkdir(parents=True)
    (tmp_path / "single" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: ???\n")
    (tmp_path / "single" / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    assert [row["job"] for row in collect(tmp_path)] == [0]
    assert [job.num for job in earlier_jobs(tmp_path)] == [0]


def test_summary_ranks_failures_last():
    from runner.sweep.summary import rank

    rows = [
        {"job": 0, "status": "failed", "objective": math.inf},
        {"job": 1, "status": "completed", "objective": 0.3},
        {"job": 2, "status": "diverged", "objective": math.inf},
        {"job": 3, "status": "completed", "objective": 0.1},
        {"job": 4, "status": "completed", "objective": math.inf},  # no such loss: worst, not bad
    ]
    assert [r["job"] for r in sorted(rows, key=rank)] == [3, 1, 4, 2, 0]


@pytest.mark.slow
@SUBMITIT
def test_slurm_launcher_writes_a_job_array_for_our_sweep(tmp_path: Path, monkeypatch, capsys):
    """No cluster here: a stand-in `sbatch` keeps the script submitit hands it, and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "sbatch": f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "no cluster" >&2\nexit 1\n',
        "srun": "#!/bin/sh\nexit 1\n",  # submitit looks for it before it submits
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = ("experiment=linear_fit", "optimizer.lr=0.01,0.1", "hydra/launcher=submitit_slurm")
    cluster = ("hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1")
    status, _, sweep_dir, _ = sweep(tmp_path, "slurm", *args, *cluster)
    assert status == 1 and "no cluster" in capsys.readouterr().err
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=60",
        "#SBATCH --job-name=runner",
        "#SBATCH --array=0-1%2",  # two jobs, both at once (array_parallelism: 256)
        f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert line in script
    assert "submitit.core._submit" in script


@pytest.mark.slow
def test_ctrl_c_in_a_basic_launcher_sweep_still_writes_the_summary(tmp_path: Path):
    """The basic launcher runs the jobs in the sweep's own process: Ctrl-C stops the job and
    the sweep (exit 130), and summary.csv holds the jobs that ran, as for joblib."""
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "runner", "-m", "experiment=linear_fit", "logger=none"]
    command += ["optimizer.lr=0.01,0.02", "trainer.epochs=1000000", "trainer.checkpoint_every=100"]
    process = subprocess.Popen(
        [*command, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even from `cmd &`
    )
    try:
        deadline = time.monotonic() + 90
        while not (sweep_dir / "0_optimizer.lr=0.01" / "checkpoints" / "last.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the job never trained"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out[-3000:]
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted")]
    assert 100 <= int(rows[0]["steps"]) < 1_000_000
    assert out.count("Sweep summary (1 job, best first)") == 1, out[-3000:]
    assert "all jobs:" not in out  # one job's overrides are its own, in its row
    # the way on is the sweep's own command, not a resume of the job alone
    assert f"the sweep's command with hydra.sweep.dir={sweep_dir} finishes the sweep" in out
    assert "trainer.resume=" not in out and "Interrupted: the sweep stops here\n" in out
    assert "the same command" not in out  # a sweep dir by default is new: it names this one


def test_a_sigterm_while_a_job_starts_ends_the_sweep_summarised_with_143(
    tmp_path: Path, monkeypatch, capsys
):
    """Outside a run's training there was no handler: SIGTERM (a time limit's) ended the sweep
    at once, with no line, no summary and no sign of the job it stopped."""
    import runner.run

    real, calls = runner.run.build, []

    def build_then_terminated(*args):  # the second job, while it starts
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(runner.run, "build", build_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    args = ("experiment=linear_fit", TINY, "logger=none", "seed=1,2,3")
    status, out, sweep_dir, rows = sweep(tmp_path, "s", *args)
    assert status == 128 + signal.SIGTERM, out[-2000:]
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("Interrupted by SIGTERM; the same command finishes the sweep")
    )
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "interrupted")]
    assert rows[1]["error"] == "not started: the sweep was interrupted"
    assert signal.getsignal(signal.SIGTERM) == before  # as the command found it


def test_an_error_every_job_shares_is_printed_once_below_the_table(tmp_path: Path):
    from runner.sweep.summary import table

    def row(job: int, error: str | None) -> dict:
        status = "completed" if error is None else "failed"
        return dict.fromkeys(COLUMNS) | {"job": job, "status": status, "error": error}

    shared = "ConfigError: optimizer.lr=-1 must be a positive number"
    rows = [row(0, shared), row(1, "ValueError: other"), row(2, shared), row(3, None)]
    for r, seed in zip(rows, range(4)):
        r["overrides"], r["run_dir"] = f"seed={seed}", str(tmp_path / str(seed))
    lines = table(rows, tmp_path).splitlines()
    assert lines[-3:] == [
        f"jobs 0, 2 failed: {shared}",
        "job 1 failed: ValueError: other",
        "3 failed, 1 completed",
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_a_job_ends_stops_the_sweep_after_it(tmp_path: Path, monkeypatch, sig):
    """Ctrl-C (or SIGTERM) while the first job draws its figures, after its last step: the job
    stands completed, and the sweep stops as between two jobs, before the next one runs."""
    from runner.observe.figures import Figures

    drawn = Figures.end

    def end_then_signal(self: Figures, state: Any) -> None:
        drawn(self, state)
        signal.raise_signal(sig)

    monkeypatch.setattr(Figures, "end", end_then_signal)
    status, out, _, rows = sweep(tmp_path, "grid", "experiment=linear_fit", TINY, "seed=1,2")
    assert status == 128 + sig
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "interrupted")]
    assert rows[1]["error"] == "not started: the sweep was interrupted"


def test_ctrl_c_between_two_jobs_still_summarises_the_finished_ones(tmp_path: Path, monkeypatch):
    """Before the next job's run sets its own handler, Ctrl-C reaches the sweep's process."""
    import runner.cli

    starts = []

    def second_start_interrupted() -> None:
        starts.append(1)
        if len(starts) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.cli, "not_shadowed", second_start_interrupted)
    status, out, _, rows = sweep(tmp_path, "grid", "experiment=linear_fit", TINY, "seed=1,2,3")
    assert status == 130
    assert [(r["job"], r["status"], r["error"]) for r in rows] == [
        ("0", "completed", ""),
        ("1", "interrupted", "not started: the sweep was interrupted"),
    ]
    assert "Sweep summary (2 jobs, best first)" in out
