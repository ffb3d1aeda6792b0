"""Finishing a grid sweep: the same multirun again, in the same sweep dir, skips what
completed, continues what was interrupted and runs again what failed or diverged; a
different sweep there stops before any job runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_metrics
from omegaconf import DictConfig, OmegaConf
from test_sweep import JOBLIB, sweep

from runner.config.check import ConfigError
from runner.sweep.resume import RECORD, check, planned_jobs

QUICK = ("experiment=linear_fit", "trainer.epochs=20", "logger=none")


def job_dir(sweep_dir: Path, num: int) -> Path:
    (found,) = sweep_dir.glob(f"{num}_*")
    return found


def stamp(run_dir: Path) -> tuple[int, str]:
    """metrics.json as it is on disk: a job not run again leaves it as it was."""
    path = run_dir / "metrics.json"
    return path.stat().st_mtime_ns, path.read_text()


def set_status(run_dir: Path, status: str) -> None:
    path = run_dir / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"status": status}))


def test_a_rerun_skips_completed_jobs_and_runs_a_diverged_one_again_afresh(tmp_path: Path):
    args = (*QUICK, "optimizer.lr=0.1,100")
    status, out, sweep_dir, _ = sweep(tmp_path, "grid", *args)
    assert status == 1, out[-2000:]
    done, diverged = job_dir(sweep_dir, 0), job_dir(sweep_dir, 1)
    before = stamp(done)
    stale = diverged / "events.out.tfevents.0.earlier"  # an earlier run's TensorBoard file
    stale.write_text("")

    status, out, _, rows = sweep(tmp_path, "grid", *args)
    assert status == 1, out[-2000:]  # it diverges again
    assert stamp(done) == before  # not run again
    assert not stale.exists()  # started afresh: no step logged twice
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "diverged")]
    assert rows[0]["objective"] == repr(read_metrics(done)["objective"])
    assert "1 completed earlier, not run again" in out
    assert not (sweep_dir / RECORD).exists()


def test_a_rerun_with_a_value_quoted_otherwise_is_told_to_type_it_as_before(tmp_path, capsys):
    """`"w*x+b"` and `w*x+b` are one value, but Hydra names the job directories as typed: the
    command that finishes the sweep types it as the one that started it."""
    args = (*QUICK, "optimizer.lr=0.1,0.2")
    status, out, sweep_dir, _ = sweep(tmp_path, "grid", *args, 'model.formula="w*x+b"')
    assert status == 0, out[-2000:]
    before = sorted(p.name for p in sweep_dir.iterdir())
    capsys.readouterr()
    status, out, _, _ = sweep(tmp_path, "grid", *args, "model.formula=w*x+b")
    err = capsys.readouterr().err.strip()
    assert status == 2 and (
        'its job 0 had model.formula="w*x+b" where this sweep\'s job 0 has '
        "model.formula=w*x+b, the same value quoted otherwise, which names other job "
        "directories; run the command that started it to finish it" in err
    ), err
    assert sorted(p.name for p in sweep_dir.iterdir()) == before  # no job ran
    status, out, _, rows = sweep(tmp_path, "grid", *args, 'model.formula="w*x+b"')
    assert status == 0 and "2 completed earlier, not run again" in out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A sweep that completed, shared: a different sweep leaves it as it was."""
    args = (*QUICK, "optimizer.lr=0.1,0.2")
    status, out, sweep_dir, _ = sweep(tmp_path_factory.mktemp("finished"), "grid", *args)
    assert status == 0, out[-2000:]
    return sweep_dir


@pytest.mark.parametrize(
    ("second", "told"),
    [
        (
            ("optimizer.lr=0.1,0.3",),
            "its job 1 had optimizer.lr=0.2 where this sweep's job 1 has optimizer.lr=0.3",
        ),
        # the directories have the same names (what every job shares is left out of them)
        (
            ("optimizer.lr=0.1,0.2", "seed=7"),
            "its job 0 lacked seed=7, which this sweep's job 0 has",
        ),
        (("optimizer.lr=0.2,0.1",), "its job 0 had optimizer.lr=0.1 where"),
        (("optimizer.lr=0.1",), "it has a job 1 (experiment=linear_fit"),
    ],
)
def test_a_different_sweep_in_the_same_dir_stops_before_any_job(finished, capsys, second, told):
    sweep_dir = finished
    before = sorted(sweep_dir.iterdir()), stamp(job_dir(sweep_dir, 0))
    status, out, _, _ = sweep(sweep_dir.parent, sweep_dir.name, *QUICK, *second)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith(f"Config error: hydra.sweep.dir='{sweep_dir}' holds a different sweep")
    assert told in err and "\n" not in err
    assert "Launching" not in out  # no job ran, none was named
    assert "Sweep summary" not in out  # nor the old sweep summarised (hydra-core 1.4 ends it)
    assert (sorted(sweep_dir.iterdir()), stamp(job_dir(sweep_dir, 0))) == before


@pytest.mark.parametrize(
    "cut, left",
    [(".hydra/hydra.yaml", b""), (".hydra/overrides.yaml", b""), (".hydra/hydra.yaml", b"h\xc3")],
    ids=["empty hydra.yaml", "empty overrides.yaml", "cut inside a character"],
)
def test_a_job_killed_while_hydra_wrote_its_config_runs_anew(tmp_path: Path, cut: str, left):
    """A SIGKILL while a job starts can leave its `.hydra/` empty or half there: that job never
    started, so the same command runs it and still skips the one that completed."""
    args = (*QUICK, "optimizer.lr=0.1,0.2")
    status, out, sweep_dir, _ = sweep(tmp_path, "grid", *args)
    assert status == 0, out[-2000:]
    done, killed = job_dir(sweep_dir, 0), job_dir(sweep_dir, 1)
    before = stamp(done)
    (killed / "metrics.json").unlink()
    (killed / cut).write_bytes(left)

    status, out, _, rows = sweep(tmp_path, "grid", *args)
    assert status == 0, out[-2000:]
    assert stamp(done) == before  # not run again
    assert sorted((r["job"], r["status"], r["run_dir"]) for r in rows) == [
        ("0", "completed", str(done)),
        ("1", "completed", str(killed)),
    ]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [done.name, killed.name]


def test_a_job_never_writes_over_results_it_finds_in_its_directory(tmp_path: Path, capsys):
    """No run ever overwrites another run's outputs: a job refused there stops the sweep, as
    jobs named alike (hydra.sweep.subdir) would, and leaves them be."""
    found = tmp_path / "grid" / "0_optimizer.lr=0.1" / "metrics.json"
    found.parent.mkdir(parents=True)
    theirs = '{"status": "completed", "objective": 0.5, "overrides": ["optimizer.lr=0.3"]}'
    found.write_text(theirs)
    record = found.parent / ".hydra" / "overrides.yaml"  # what made their run
    record.parent.mkdir()
    record.write_text("- optimizer.lr=0.3\n")
    for _ in range(2):  # again: the run found there is still not the job's
        status, _, _, _ = sweep(tmp_path, "grid", *QUICK, "optimizer.lr=0.1,0.2")
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 2 and line.startswith(
            "Config error: the sweep's job '0_optimizer.lr=0.1' found a run it did not start"
        )
        assert found.read_text() == theirs and record.read_text() == "- optimizer.lr=0.3\n"
        assert not record.with_name("hydra.yaml").exists()
        assert not (tmp_path / "grid" / "1_optimizer.lr=0.2").exists()  # the sweep stopped


def grid_config(sweep_dir: Path, *overrides: str, params: dict | None = None) -> DictConfig:
    """The part of a multirun's config the sweep's start reads."""
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    sweeper["params"] = params
    hydra = {"sweep": {"dir": str(sweep_dir)}, "sweeper": sweeper}
    return OmegaConf.create({"hydra": hydra | {"overrides": {"task": list(overrides)}}})


def test_the_planned_jobs_are_the_grid_sweepers(tmp_path: Path):
    """The cartesian product, in Hydra's order: the sweeper's params first, a key given twice
    in its first place with its last value."""
    config = grid_config(tmp_path, "a=x", "b=range(1,3)", "a=y", params={"seed": "1,2"})
    assert planned_jobs(config, tmp_path) == [
        ["seed=1", "a=y", "b=1"],
        ["seed=1", "a=y", "b=2"],
        ["seed=2", "a=y", "b=1"],
        ["seed=2", "a=y", "b=2"],
    ]


def test_a_sweep_whose_jobs_cannot_be_listed_stops_where_one_ran_before(tmp_path: Path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 0\n")
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- optimizer=gd\n")
    with pytest.raises(ConfigError, match="cannot be listed before they run"):
        check(grid_config(tmp_path, "optimizer=glob(*)"))
    check(grid_config(tmp_path / "new", "optimizer=glob(*)"))  # nothing to match: it runs


@pytest.mark.slow
def test_a_sweep_killed_mid_job_finishes_with_the_numbers_of_an_uninterrupted_run(
    tmp_path: Path, run_experiment
):
    """SIGKILL (nothing is written) once job 1 saved a checkpoint, after job 0 completed."""
    args = ("experiment=linear_fit", "logger=none", "trainer.checkpoint_every=500")
    grid = "trainer.epochs=100,6000"  # job 0 completes at once; job 1 is killed part-way
    sweep_dir = tmp_path / "grid"
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", *args, grid, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole
    )
    checkpoint = sweep_dir / "1_trainer.epochs=6000" / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed = checkpoint.parent.parent
    assert not (killed / "metrics.json").exists(), "job 1 finished before it was killed"
    done = stamp(job_dir(sweep_dir, 0))

    status, out, _, rows = sweep(tmp_path, "grid", *args, grid)
    assert status == 0, out[-2000:]
    assert stamp(job_dir(sweep_dir, 0)) == done
    assert sorted(r["job"] for r in rows) == ["0", "1"]
    assert {r["status"] for r in rows} == {"completed"}
    assert "1 completed earlier, not run again" in out
    metrics = read_metrics(killed)
    assert metrics["resumed_from"]["step"] >= 500
    reference, _ = run_experiment(*args, "trainer.epochs=6000")
    assert (metrics["params"], metrics["final_loss"]) == (
        reference["params"],
        reference["final_loss"],
    )


@pytest.mark.slow
@JOBLIB
def test_joblib_finishes_a_sweep_it_left_interrupted_and_failed(tmp_path: Path):
    args = (*QUICK, "optimizer.lr=0.1,0.05,0.02", "trainer.checkpoint_every=10")
    status, out, sweep_dir, _ = sweep(tmp_path, "grid", *args)
    assert status == 0, out[-2000:]
    done, stopped, failed = (job_dir(sweep_dir, n) for n in range(3))
    before = stamp(done)
    first = {d: read_metrics(d) for d in (stopped, failed)}
    set_status(stopped, "interrupted")  # its checkpoint is at its last step: nothing left
    set_status(failed, "failed")

    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    status, out, _, rows = sweep(tmp_path, "grid", *args, *joblib)
    assert status == 0, out[-2000:]
    assert stamp(done) == before
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"]
    assert {r["status"] for r in rows} == {"completed"}
    assert "1 completed earlier, not run again" in out
    continued, again = read_metrics(stopped), read_metrics(failed)
    assert continued["resumed_from"]["step"] == 20 and "resumed_from" not in again
    for run_dir, metrics in ((stopped, continued), (failed, again)):
        assert metrics["final_loss"] == first[run_dir]["final_loss"]


def test_a_job_whose_resume_fails_keeps_nothing_of_the_run_it_resumed(tmp_path: Path):
    """Its metrics.json says it failed, with no `signal` or steps of the interrupted run."""
    status, _, _, rows = sweep(tmp_path, "grid", *QUICK, "seed=1")
    run_dir = Path(rows[0]["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    interrupted = metrics | {"status": "interrupted", "signal": "SIGINT", "steps": 3}
    (run_dir / "metrics.json").write_text(json.dumps(interrupted))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"cut short")  # the resume fails on it
    status, _, _, rows = sweep(tmp_path, "grid", *QUICK, "seed=1")
    after = json.loads((run_dir / "metrics.json").read_text())
    assert status == 1 and after["status"] == "failed" and "checkpoint" in after["error"]
    assert "signal" not in after and "steps" not in after
