"""Optuna searches through the runner's own sweeper (hydra_plugins.runner_optuna_sweeper): the
keys, the study in a journal file in the sweep dir, a search that continues, trials that are
retried, reproduced, pruned, run in parallel, and stopped with Ctrl-C."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import read_metrics
from test_sweep import JOBLIB, SUBMITIT, ctrl_c_once, in_own_group, sweep

from runner.observe import Look
from runner.sweep.study import (
    JOURNAL,
    PRUNER,
    STORAGE,
    STUDY,
    SWEEP_DIR,
    TRIAL,
    location,
    open_storage,
)
from runner.sweep.trial import TrialReport, reporting
from runner.train.state import State

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="needs the sweep extra (optuna)"
)
TINY = "trainer.epochs=5"  # a search here checks the plumbing, not the fit
LINEAR = ("experiment=linear_fit", "hparams_search=linear_fit_optuna", TINY, "logger=none")


def search(tmp_path: Path, name: str, *args: str) -> tuple[str, Path, list[dict[str, str]]]:
    status, out, sweep_dir, rows = sweep(tmp_path, name, *args)
    assert status == 0, out[-3000:]
    return out, sweep_dir, rows


def trials(sweep_dir: Path, name: str) -> list[Any]:
    """The study as `optuna.load_study` opens it from the journal file in the sweep dir."""
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / JOURNAL))
    )
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_hparams_search_configs():
    from hydra import compose, initialize_config_dir

    from runner.__main__ import CONFIGS

    for experiment, searched, objective, pruner in (
        ("linear_fit", {"optimizer", "optimizer.lr"}, "final_loss", None),
        ("sine_mlp", {"optimizer.lr", "trainer.batch_size", "model.activation"}, "val_loss", 1),
    ):
        with initialize_config_dir(str(CONFIGS), version_base="1.3"):
            overrides = [f"experiment={experiment}", f"hparams_search={experiment}_optuna"]
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert (
            sweeper._target_ == "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"
        )
        assert sweeper.direction == "minimize" and sweeper.storage is None
        assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed == 42
        assert sweeper.n_trials == 10 and set(sweeper.params) == searched
        assert sweeper.params["optimizer.lr"].startswith("tag(log,")
        assert (sweeper.pruner is None) == (pruner is None)
        if pruner:
            assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
        assert cfg.trainer.objective == objective and cfg.hydra.callbacks.summary.fail_on == "all"


def test_ours_is_the_optuna_sweeper_where_hydra_optuna_sweeper_is_installed_too(tmp_path):
    """hydra-optuna-sweeper registers `hydra/sweeper/optuna` as a structured config with a
    defaults list; a stand-in that does the same is scanned first, as from site-packages."""
    plugin = tmp_path / "hydra_plugins" / "hydra_optuna_sweeper"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    (plugin / "config.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass, field
            from typing import Any, List
            from hydra.core.config_store import ConfigStore

            @dataclass
            class OptunaSweeperConf:
                _target_: str = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
                defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
                n_trials: int = 20

            ConfigStore.instance().store(
                group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="theirs"
            )
            """
        )
    )
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from runner.__main__ import CONFIGS\n"
        "with initialize_config_dir(str(CONFIGS), version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['hparams_search=sine_mlp_optuna'],\n"
        "                  return_hydra_config=True)\n"
        "print(cfg.hydra.sweeper._target_, cfg.hydra.sweeper.pruner._target_)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "optuna.pruners.MedianPruner",
    ]


def test_search_space_from_the_override_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from runner.sweep.space import search_space

    params = {
        "optimizer.lr": "tag(log, interval(0.001, 0.1))",
        "trainer.grad_clip": "interval(0.5, 2)",
        "model.activation": "choice(tanh, relu)",
        "trainer.batch_size": "range(32, 129, 32)",
        "seed": "7",
        "loss.delta": "range(0.5, 2.0, 0.5)",
    }
    space = search_space(params, ["experiment=sine_mlp", "seed=choice(1, 2)", "~scheduler"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(0.001, 0.1, log=True)
    assert d["trainer.grad_clip"] == FloatDistribution(0.5, 2.0)
    assert d["model.activation"] == CategoricalDistribution(["tanh", "relu"])
    assert d["trainer.batch_size"] == IntDistribution(32, 128, step=32)  # 129 is not reached
    assert d["loss.delta"] == FloatDistribution(0.5, 1.5, step=0.5)
    assert d["seed"] == CategoricalDistribution([1, 2])  # the command line wins over params
    assert space.fixed == ["experiment=sine_mlp", "~scheduler"]
    chosen = {"optimizer.lr": 0.01, "model.activation": "relu", "seed": 2}
    assert space.overrides(chosen) == [
        "optimizer.lr=0.01",
        "model.activation=relu",
        "seed=2",
        "experiment=sine_mlp",
        "~scheduler",
    ]
    quoted = search_space({"dataset.path": "choice('a b.csv', c.csv)"}, [])
    assert quoted.overrides({"dataset.path": "a b.csv"}) == ["dataset.path=a\\ b.csv"]


def trial_report(tmp_path: Path, objective: str) -> tuple[Any, int, TrialReport]:
    """A study whose pruner stops a trial above 1.0, its first trial, and that trial's reporter."""
    import optuna

    where = location(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(where))
    study.set_user_attr(PRUNER, {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0})
    number = study.ask().number
    [report] = reporting(objective, {TRIAL: str(number), STUDY: "s", STORAGE: where})
    return study, number, report


def test_a_trial_reports_each_log_step_and_stops_when_its_pruner_says_so(tmp_path: Path):
    assert reporting("final_loss", {}) == []  # no Optuna search, no reporting
    study, number, report = trial_report(tmp_path, "final_loss")
    state = State()
    for loss in (0.5, 0.25, 2.0, 0.1):  # the pruner stops it above 1.0
        state.step += 1
        report.log(Look(state, torch.tensor(loss), torch.tensor([loss]), [], None, 0))
        if state.status != "running":
            break
    assert state.status == "pruned" and state.step == 3
    assert study.trials[number].intermediate_values == {0: 0.5, 1: 0.25, 2: 2.0}


def test_a_trial_pruned_at_an_epochs_last_step_ends_that_epoch_with_the_loss_it_reported(
    tmp_path: Path,
):
    """linear_fit's one step an epoch: the run's final loss is the value the study has, and
    the epoch counts (it ended a log step behind, with the loss before it)."""
    from conftest import compose_config

    from runner.build import build
    from runner.train.loop import train

    study, number, report = trial_report(tmp_path, "final_loss")  # stops it above 1.0
    b = build(compose_config("experiment=linear_fit", "logger=none"), None)
    state = train(b, State(), [report], None)
    (reported,) = study.trials[number].intermediate_values.items()  # step 0: 4.39, pruned
    assert (state.status, state.step, state.epoch) == ("pruned", 1, 1)
    assert reported == (0, pytest.approx(state.epoch_loss.item(), rel=1e-7))


def test_a_validation_objective_is_reported_at_the_epoch_end_that_computed_it(tmp_path: Path):
    study, number, report = trial_report(tmp_path, "val_loss")
    state = State()
    for val in (0.5, 2.0):  # two epochs of two steps; the first logs, the second ends it
        for _ in range(2):
            state.step += 1
            report.log(Look(state, torch.tensor(9.0), torch.tensor([9.0]), [], None, 0))
        state.val_loss = torch.tensor(val)
        report.epoch(state)
        assert state.status == ("running" if val < 1 else "pruned")  # at the epoch's end
    assert study.trials[number].intermediate_values == {1: 0.5, 3: 2.0}  # no training loss


def test_an_early_stop_at_the_epoch_end_the_pruner_would_stop_stays_completed(tmp_path: Path):
    study, number, report = trial_report(tmp_path, "val_loss")
    state = State(step=4, val_loss=torch.tensor(2.0), status="completed")  # early-stopped
    report.epoch(state)
    assert state.status == "completed"
    assert study.trials[number].intermediate_values == {3: 2.0}  # reported all the same


@pytest.mark.slow
def test_a_search_keeps_its_study_in_the_sweep_dir_and_continues_it(tmp_path: Path):
    out, sweep_dir, rows = search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=2")
    first = trials(sweep_dir, "linear_fit")  # optuna.load_study opens the journal file
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]
    assert all(len(t.intermediate_values) == 5 for t in first)  # every log step
    assert sorted(int(r["job"]) for r in rows) == [0, 1]  # a job's number is its trial's
    assert "Best value" in out and (sweep_dir / "optimization_results.yaml").is_file()

    # a search killed mid-trial leaves the trial running
    import optuna

    storage = open_storage(str(sweep_dir / JOURNAL))
    study = optuna.load_study(study_name="linear_fit", storage=storage)
    left = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(0.01, 1, log=True)})
    left.set_user_attr(SWEEP_DIR, str(sweep_dir))

    out, _, rows = search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=4")
    assert "Trial 2 was left running" in out and "2 trials done, 2 to run" in out
    after = trials(sweep_dir, "linear_fit")
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [(t.params, t.value) for t in after[:2]] == [(t.params, t.value) for t in first]
    assert after[3].params["optimizer.lr"] == left.params["optimizer.lr"]  # run again
    assert sorted(int(r["job"]) for r in rows) == [0, 1, 3, 4]  # nothing ran twice
    assert [float(r["objective"]) for r in rows] == sorted(
        t.value for t in after if t.value is not None
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("hydra.sweeper.n_trials=0",), "hydra.sweeper.n_trials=0 is not allowed"),
        (("optimizer.lr=interval(1.0, 0.01)",), "interval(1.0, 0.01): `low <= high` must hold"),
        (("optimizer.lr=tag(log, interval(0, 1))",), "`low > 0` must hold for `log=True`"),
        (("hydra.sweeper.storage=nosuchdb://x",), "storage='nosuchdb://x' cannot be opened"),
        (("hydra.sweeper.storage=/dev/null/x.journal",), "x.journal' cannot be opened"),
        (  # its password is not shown
            ("hydra.sweeper.storage='nosuchdb://bob:s3cr@t@db/x'",),
            "storage='nosuchdb://bob:***@db/x' cannot be opened",
        ),
        (("~hydra.sweeper.params",), "hydra/sweeper=optuna has nothing to search"),
        (("optimizer=choice(gd,adamm)",), "optimizer=adamm is no option of optimizer"),
        (
            ("optimizer.lrr=tag(log, interval(0.01, 1.0))",),
            "optimizer.lrr=0.01: the chosen optimizer (runner.build.optim.GD) has no key 'lrr'",
        ),
        (("+hydra.sweeper.n_trial=3",), "unknown key 'hydra.sweeper.n_trial' (did you mean"),
        (
            ("hydra.sweeper.sampler._target_=optuna.samplers.RandomSamplr",),
            "hydra.sweeper.sampler: Error locating target 'optuna.samplers.RandomSamplr'",
        ),
        (
            ("+hydra.sweeper.pruner._target_=optuna.pruners.MedianPrunr",),
            "hydra.sweeper.pruner: Error locating target 'optuna.pruners.MedianPrunr'",
        ),
    ],
    ids=[
        "no trials",
        "empty interval",
        "log from 0",
        "storage",
        "a journal below a file",
        "a storage URL's password",
        "no search space",
        "an option that is not there",
        "a key the config lacks",
        "typo",
        "sampler",
        "pruner",
    ],
)
def test_a_search_it_cannot_run_is_one_config_error(tmp_path: Path, capsys, args, message):
    status, _, sweep_dir, _ = sweep(tmp_path, "bad", *LINEAR, *args)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("Config error: ")]
    assert message in line
    assert not sweep_dir.exists()  # stopped before any trial


def test_a_continued_study_refuses_other_settings(tmp_path: Path, capsys):
    """As a grid sweep dir does: trials of other settings would not be comparable."""
    _, sweep_dir, _ = search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=1")
    capsys.readouterr()
    summary = (sweep_dir / "summary.csv").stat().st_mtime_ns
    other = ("trainer.epochs=6", "optimizer.lr=tag(log, interval(0.5, 2.0))")
    status, out, _, _ = sweep(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=2", *other)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("Config error")]
    # the refusal alone: not the study's table (hydra-core 1.4 ends a sweep in a `finally`)
    assert status == 2 and "completed" not in out, out
    assert (sweep_dir / "summary.csv").stat().st_mtime_ns == summary
    assert (
        "searched with other settings (the study: trainer.epochs=5; this command: "
        "trainer.epochs=6; searched otherwise: optimizer.lr)"
    ) in line
    assert [t.state.name for t in trials(sweep_dir, "linear_fit")] == ["COMPLETE"]  # no trial
    search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=2")  # more trials: the same search
    assert len(trials(sweep_dir, "linear_fit")) == 2


def test_a_study_refuses_a_sweep_dir_that_holds_another_sweeps_jobs(tmp_path: Path, capsys):
    """Its trials would be numbered 0, 1, ... as those jobs are: their directories would meet."""
    _, sweep_dir, _ = search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=1")
    (job,) = [p for p in sweep_dir.iterdir() if p.is_dir()]
    before = (job / "metrics.json").read_text()
    capsys.readouterr()
    status, _, _, _ = sweep(
        tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=other"
    )
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [  # no Optuna line before it
        f"Config error: hydra.sweep.dir='{sweep_dir}' holds another sweep's jobs ({job.name}), "
        f"which are no trials of the study 'other' in {sweep_dir / JOURNAL}; pick a new "
        "hydra.sweep.dir"
    ]
    assert (job / "metrics.json").read_text() == before


def test_a_search_refused_for_a_grids_sweep_dir_leaves_no_study_there(tmp_path: Path, capsys):
    status, _, sweep_dir, _ = sweep(tmp_path, "g", "experiment=linear_fit", TINY, "seed=1,2")
    assert status == 0
    capsys.readouterr()
    status, _, _, _ = sweep(tmp_path, "g", *LINEAR, "hydra.sweeper.n_trials=1")
    err = capsys.readouterr().err.strip()
    assert status == 2 and "holds another sweep's jobs (0_seed=1, 1_seed=2)" in err, err
    assert not (sweep_dir / JOURNAL).exists()


def test_a_search_continues_in_its_sweep_dir_moved_elsewhere(tmp_path: Path):
    """...and runs again the trial a kill left running there, which names the old path."""
    import optuna

    _, first, _ = search(tmp_path, "s", *LINEAR, "hydra.sweeper.n_trials=1")
    storage = open_storage(str(first / JOURNAL))
    study = optuna.load_study(study_name="linear_fit", storage=storage)
    left = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(0.01, 1, log=True)})
    left.set_user_attr(SWEEP_DIR, str(first))
    first.rename(tmp_path / "moved")
    out, moved, rows = search(tmp_path, "moved", *LINEAR, "hydra.sweeper.n_trials=2")
    assert "Trial 1 was left running" in out and "1 trials done, 1 to run" in out
    after = trials(moved, "linear_fit")
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after[2].params["optimizer.lr"] == left.params["optimizer.lr"] and len(rows) == 2


def test_a_search_sharing_a_study_that_others_filled_runs_nothing_and_succeeds(tmp_path: Path):
    """Two sweep dirs, one database: the second finds all n_trials done, which is no failure."""
    shared = ("hydra.sweeper.n_trials=1", f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db")
    search(tmp_path, "first", *LINEAR, *shared)
    out, second, rows = search(tmp_path, "second", *LINEAR, *shared)
    assert "1 trials done, 0 to run" in out and "no job ran under" in out
    assert rows == [] and not [p for p in second.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_the_same_seed_runs_the_same_trials_and_beats_the_default_lr(tmp_path, run_experiment):
    _, a, rows_a = search(tmp_path, "a", *LINEAR, "hydra.sweeper.n_trials=4")
    _, b, rows_b = search(tmp_path, "b", *LINEAR, "hydra.sweeper.n_trials=4")
    assert len(rows_a) == 4
    assert [(t.params, t.value) for t in trials(a, "linear_fit")] == [
        (t.params, t.value) for t in trials(b, "linear_fit")
    ]
    assert [r["overrides"] for r in rows_a] == [r["overrides"] for r in rows_b]
    for row in rows_a:  # a trial's directory: its number and what Optuna chose
        chosen = sorted(o for o in row["overrides"].split() if o.startswith("optimizer"))
        assert Path(row["run_dir"]).name == f"{row['job']}_{','.join(chosen)}"
    best = (a / "optimization_results.yaml").read_text()
    assert best == (b / "optimization_results.yaml").read_text()
    assert best.startswith("name: optuna\nbest_params:\n") and rows_a[0]["objective"] in best
    default, _ = run_experiment("experiment=linear_fit", TINY, "logger=none")
    assert float(rows_a[0]["final_loss"]) < default["final_loss"]


def test_a_search_whose_every_trial_diverged_names_no_best(tmp_path: Path):
    lr = ("optimizer=gd", "optimizer.lr=interval(1e5,1e6)")  # diverges in the first few steps
    status, out, sweep_dir, rows = sweep(tmp_path, "d", *LINEAR, "hydra.sweeper.n_trials=2", *lr)
    assert status == 1 and [r["status"] for r in rows] == ["diverged", "diverged"]
    assert [t.value for t in trials(sweep_dir, "linear_fit")] == [math.inf, math.inf]
    assert "Every trial diverged: no best parameters" in out and "Best value" not in out
    assert not (sweep_dir / "optimization_results.yaml").exists()


@pytest.mark.slow
def test_keys_direction_and_a_wrong_key(tmp_path: Path, capsys):
    _, sweep_dir, rows = search(
        tmp_path, "max", *LINEAR, "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize"
    )
    best = max(t.value for t in trials(sweep_dir, "linear_fit"))
    assert f"best_value: {best}" in (sweep_dir / "optimization_results.yaml").read_text()
    assert float(rows[0]["objective"]) == best  # the table's best first is the study's best
    capsys.readouterr()  # what the search printed (Optuna's first "A new study created")
    status, _, sweep_dir, _ = sweep(tmp_path, "bad", *LINEAR, "hydra.sweeper.n_jobs=0")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == [
        "Config error: hydra.sweeper.n_jobs=0 is not allowed; use an integer >= 1"
    ]
    assert not (sweep_dir / JOURNAL).exists()


@pytest.mark.slow
def test_sine_mlp_search_prunes_a_trial_and_still_succeeds(tmp_path: Path):
    args = ("experiment=sine_mlp", "hparams_search=sine_mlp_optuna", "trainer.epochs=6")
    out, sweep_dir, rows = search(tmp_path, "s", *args, "logger=none", "hydra.sweeper.n_trials=5")
    states = {t.number: t.state.name for t in trials(sweep_dir, "sine_mlp")}
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned and all(states[int(r["job"])] == "PRUNED" for r in pruned)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"completed", "pruned"}
    assert rows[-len(pruned) :] == pruned  # best first: completed, then pruned
    for row in pruned:  # a clean end, with the objective it had reached
        metrics = read_metrics(Path(row["run_dir"]))
        assert metrics["status"] == "pruned" and metrics["epochs"] < 6
        assert math.isfinite(float(row["objective"])) and metrics["objective"] > 0
    assert "Pruned: trial" in out and "pruned" in out.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "n_trials"),
    [pytest.param("joblib", 4, marks=JOBLIB), pytest.param("submitit_local", 2, marks=SUBMITIT)],
)
def test_parallel_trials_share_one_study(tmp_path: Path, launcher: str, n_trials: int):
    parallel = [f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2"]
    if launcher == "joblib":
        parallel.append("hydra.launcher.n_jobs=2")  # this machine's cores
    _, sweep_dir, rows = search(
        tmp_path, launcher, *LINEAR, f"hydra.sweeper.n_trials={n_trials}", *parallel
    )
    study = trials(sweep_dir, "linear_fit")
    assert [t.number for t in study] == list(range(n_trials))
    assert {t.state.name for t in study} == {"COMPLETE"}
    assert all(len(t.intermediate_values) == 5 for t in study)  # reported from the workers
    assert sorted(int(r["job"]) for r in rows) == list(range(n_trials))


@pytest.mark.slow
@JOBLIB
def test_ctrl_c_stops_a_parallel_search_which_the_same_command_continues(tmp_path: Path):
    sweep_dir = tmp_path / "s"
    # long enough to be stopped, short enough to be finished: a continued study runs the
    # same settings (reports every 100 steps: at every step, the journal is the bottleneck)
    long = ("trainer.epochs=10000", "trainer.checkpoint_every=100", "logger=none")
    long += ("trainer.log_every_n_steps=100",)
    parallel = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2")
    command = [sys.executable, "-m", "runner", "-m", *LINEAR[:2], *long]
    command += [*parallel, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep_dir}"]
    process = in_own_group(command, tmp_path)
    out = ctrl_c_once(process, lambda: len(list(sweep_dir.glob("*/checkpoints/last.pt"))) >= 2)
    assert process.returncode == 130, out[-3000:]
    assert "Interrupted: no more trials" in out and "Traceback" not in out
    stopped = trials(sweep_dir, "linear_fit")
    # under load a worker may start late enough for the other's trial to end first
    ran = [t.state.name for t in stopped[:2]]
    failed = [t for t in stopped[:2] if t.state.name == "FAIL"]
    assert failed and set(ran) <= {"FAIL", "COMPLETE"}, ran
    assert [t.state.name for t in stopped[2:]] == ["WAITING"] * len(failed)  # queued again

    search(tmp_path, "s", *LINEAR[:2], *long, *parallel, "hydra.sweeper.n_trials=4")
    after = trials(sweep_dir, "linear_fit")
    assert [t.state.name for t in after[2:]] == ["COMPLETE"] * (4 - ran.count("COMPLETE"))
    assert [t.params for t in after[2 : 2 + len(failed)]] == [t.params for t in failed]  # again
