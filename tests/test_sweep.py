"""Sweeps: one directory per job, an HParams row in each, summary.csv best first, failures
that do not lose the other jobs, Optuna searches, and the parallel and SLURM launchers."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli, event_accumulator, read_metrics

from runner.sweep import COLUMNS

TINY = "trainer.epochs=5"  # a sweep here checks the plumbing, not the fit
GRID = ("-m", "experiment=linear_fit", "optimizer.lr=0.01,0.1,1.0", "seed=1,2,3", TINY)


def sweep(tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None):
    """`python -m runner -m ...` into tmp_path/name; returns (process, sweep dir, rows)."""
    sweep_dir = tmp_path / name
    proc = cli(*args, f"hydra.sweep.dir={sweep_dir}", cwd=ROOT, env=env, timeout=300)
    summary = sweep_dir / "summary.csv"
    rows = list(csv.DictReader(summary.open())) if summary.exists() else []
    return proc, sweep_dir, rows


def results(sweep_dir: Path) -> dict[str, tuple[Any, float]]:
    """overrides -> (learned parameters, final loss) for every job of a sweep (the launcher
    is a hydra/ override, not one of the job's)."""
    rows = csv.DictReader((sweep_dir / "summary.csv").open())
    out = {}
    for row in rows:
        metrics = read_metrics(Path(row["run_dir"]))
        out[row["overrides"]] = (metrics["params"], metrics["final_loss"])
    return out


def session_hparams(run_dir: Path) -> dict[str, Any]:
    """The run's HParams row as the dashboard reads it: the hparams plugin's session data."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = event_accumulator(run_dir).PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    data = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    values = data.session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Any, Path, list[dict[str, str]]]:
    """The 3 x 3 grid of the README, run once for the tests below."""
    return sweep(tmp_path_factory.mktemp("grid"), "grid", *GRID)


@pytest.mark.slow
def test_grid_sweep_writes_one_directory_hparams_row_and_csv_row_per_job(grid):
    proc, sweep_dir, rows = grid
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 9 and {r["status"] for r in rows} == {"completed"}
    assert sorted(int(r["job"]) for r in rows) == list(range(9))
    # nothing but the jobs and the sweep's own two files: no stray HParams folders
    assert sorted(p.name for p in sweep_dir.iterdir()) == sorted(
        [*map(str, range(9)), "multirun.yaml", "summary.csv"]
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
        assert hparams["trainer.epochs"] == 5 and hparams["choice.optimizer"] == "gd"
        final = event_accumulator(run_dir).Scalars("hparam/final_loss")
        assert [e.value for e in final] == [pytest.approx(metrics["final_loss"], rel=1e-6)]
    assert "Sweep summary (9 jobs, best first)" in proc.stdout
    assert "all jobs: experiment=linear_fit trainer.epochs=5" in proc.stdout


@pytest.mark.slow
def test_a_diverged_and_a_failed_job_do_not_lose_the_healthy_one(tmp_path: Path):
    proc, _, rows = sweep(
        tmp_path, "bad", "-m", "experiment=linear_fit", "optimizer.lr=0.1,100,-1", TINY,
        "trainer.epochs=20",
    )  # fmt: skip
    assert proc.returncode == 1
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "diverged"),
        ("2", "failed"),
    ]
    assert float(rows[0]["final_loss"]) < 0.1
    assert rows[1]["final_loss"] == "" and rows[1]["objective"] == "inf"
    assert "optimizer.lr=-1" in rows[2]["error"] and "positive" in rows[2]["error"]
    assert read_metrics(Path(rows[2]["run_dir"]))["status"] == "failed"
    assert "1 completed, 1 diverged, 1 failed" in proc.stdout


def optuna_search(tmp_path: Path, name: str):
    proc, sweep_dir, rows = sweep(
        tmp_path, name, "-m", "experiment=linear_fit", "hparams_search=linear_fit_optuna",
        TINY, "logger=none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = (sweep_dir / "optimization_results.yaml").read_text()
    return best, rows


@pytest.mark.slow
def test_optuna_search_is_reproducible_and_beats_the_default_lr(tmp_path: Path, run_experiment):
    best, rows = optuna_search(tmp_path, "a")
    again, rows_again = optuna_search(tmp_path, "b")
    assert len(rows) == 10 and best == again
    assert [r["overrides"] for r in rows] == [r["overrides"] for r in rows_again]
    default, _ = run_experiment("experiment=linear_fit", TINY, "logger=none")
    assert float(rows[0]["final_loss"]) < default["final_loss"]
    assert f"{float(rows[0]['objective'])!r}" in best  # the best row is Optuna's best trial


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_give_the_basic_launchers_results(tmp_path: Path, grid, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    args = ("-m", "experiment=linear_fit", "optimizer.lr=0.01,0.1", "seed=1,2", TINY)
    proc, sweep_dir, rows = sweep(tmp_path, launcher, *args, f"hydra/launcher={launcher}", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(rows) == 4
    basic = results(grid[1])
    for overrides, outcome in results(sweep_dir).items():
        assert basic[overrides] == outcome  # the same numbers, to the last bit


def test_summary_ranks_failures_last_and_writes_full_precision(tmp_path: Path):
    from runner.sweep import rank, write_csv

    rows = [
        {"job": 0, "status": "failed", "objective": math.inf},
        {"job": 1, "status": "completed", "objective": 0.30000000000000004},
        {"job": 2, "status": "diverged", "objective": math.inf},
        {"job": 3, "status": "completed", "objective": 0.1},
    ]
    assert [r["job"] for r in sorted(rows, key=rank)] == [3, 1, 2, 0]
    full = [{k: None for k in COLUMNS} | r for r in rows]
    write_csv(tmp_path / "s.csv", full)
    assert "0.30000000000000004" in (tmp_path / "s.csv").read_text()


@pytest.mark.slow
def test_slurm_launcher_writes_a_job_array_for_our_sweep(tmp_path: Path):
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
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = ("-m", "experiment=linear_fit", "optimizer.lr=0.01,0.1", "hydra/launcher=submitit_slurm")
    proc, sweep_dir, _ = sweep(
        tmp_path, "slurm", *args, "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
        env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "no cluster" in proc.stderr
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
