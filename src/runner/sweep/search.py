"""An Optuna search through Hydra's launcher: ask, launch in batches of `n_jobs`, tell. The
study is the search's only state, so the same command and sweep directory continue it."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import Trial, TrialState

from runner.config.check import ConfigError
from runner.sweep.resume import job_dirs, read_metrics
from runner.sweep.space import Space, search_space
from runner.sweep.study import (
    PRUNER,
    STORAGE,
    STUDY,
    SWEEP_DIR,
    TRIAL,
    location,
    open_storage,
    shown,
)
from runner.sweep.summary import STOP, quote

log = logging.getLogger(__name__)
# what n_trials counts: a failed trial does not, so the next search tries again
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
SEARCHED = "runner:search"  # the study's user attribute: the search that began it
ANOTHER = (  # how to start another search than the study's
    "start another in a new hydra.sweep.dir (with a new hydra.sweeper.study_name where "
    "hydra.sweeper.storage is shared)"
)


class Search:
    """Set up before any job (a mistake stops the sweep with one line); `run` is the loop."""

    def __init__(
        self,
        *,
        sampler: DictConfig | None,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        params: Mapping[str, Any],
        pruner: DictConfig | None,
        sweep_dir: Path,
        arguments: Sequence[str],
        compose: Callable[[list[str]], object],
    ) -> None:
        """`compose`: a job's config from its overrides, as the launcher composes it."""
        if direction not in ("minimize", "maximize"):
            raise ConfigError(
                f"hydra.sweeper.direction={direction!r} is not allowed; use minimize or "
                "maximize (one objective: multi-objective searches are not supported)"
            )
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"hydra.sweeper.{key}={value!r} is not allowed; use an integer >= 1"
                )
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.sweep_dir = sweep_dir
        self.space = search_space(params, arguments)
        if not self.space.distributions:  # every trial would run the same config
            raise ConfigError(
                "hydra/sweeper=optuna has nothing to search; give a search such as "
                "'optimizer.lr=tag(log, interval(0.001, 1.0))' or pick hparams_search=..."
            )
        for params in probes(self.space.distributions):  # a key the config lacks stops here,
            compose(self.space.overrides(params))  # before the study is made
        for key, built in (("sampler", sampler), ("pruner", pruner)):
            try:  # before the study is made (the jobs build the pruner): a misspelled
                if built is not None:  # _target_, a key it does not take
                    instantiate(built)
            except Exception as e:
                lines = (
                    x.partition(", set env var HYDRA_FULL_ERROR")[0] for x in f"{e}".split("\n")
                )
                reason = " ".join(x.strip() for x in lines if x.strip() and "full_key:" not in x)
                raise ConfigError(f"hydra.sweeper.{key}: {reason}") from e
        name, where = study_name or "search", location(storage, sweep_dir)
        self.env = {STUDY: name, STORAGE: where}
        if "://" not in where and not Path(where).exists():  # no job here is a trial of it
            own_trials(sweep_dir, None, where, name)  # refused before the journal is made
        opened = open_storage(where)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # `run` says it, once checked
        try:
            self.study = study = optuna.create_study(
                storage=opened, study_name=name, direction=direction, load_if_exists=True
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        if study.direction.name.lower() != direction:
            raise ConfigError(
                f"hydra.sweeper.direction={direction} but the study {name!r} in {shown(where)} "
                f"was made to {study.direction.name.lower()}; {ANOTHER}"
            )
        same_search(study, self.space, f"the study {name!r} in {shown(where)}")
        ours = own_trials(sweep_dir, study, where, name)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in ours:  # this search's, killed
                log.warning(f"Trial {trial.number} was left running: failed, and queued again")
                retry(study, trial.number, trial.params)
        pruner_cfg = OmegaConf.to_container(pruner, resolve=True) if pruner else None
        study.set_user_attr(PRUNER, pruner_cfg)  # the jobs build it (runner.sweep.trial)
        if sampler is not None:  # None: Optuna's default, an unseeded TPE
            # a seed moves on by the trials the study holds: a continued study does not repeat
            # its first trials, and the same command still runs the same trials
            seed = sampler.get("seed")
            seeded = {} if seed is None else {"seed": seed + len(study.get_trials(deepcopy=False))}
            study.sampler = instantiate(sampler, **seeded)

    def run(self, launcher: Launcher) -> None:
        """Ask, launch and tell, batch by batch, until the study holds `n_trials`."""
        study, budget = self.study, max(self.missing(), 0)
        log.info(
            f"Study {self.env[STUDY]!r} in {self.env[STORAGE]}: "
            f"{len(study.get_trials(deepcopy=False, states=COUNTED))} trials done, {budget} to run"
        )
        while (size := min(self.n_jobs, budget, self.missing())) > 0:
            if (self.sweep_dir / STOP).exists():  # Ctrl-C reached a joblib sweep
                log.info("Interrupted: no more trials; the same command continues the study")
                break
            trials = [study.ask(self.space.distributions) for _ in range(size)]
            for trial in trials:
                trial.set_user_attr(SWEEP_DIR, str(self.sweep_dir))
            try:
                returns = self.launch(launcher, trials)
            except BaseException:  # Ctrl-C in this process: the next search runs them again
                for trial in trials:
                    retry(study, trial.number, trial.params)
                raise
            for trial, ret in zip(trials, returns):
                self.tell(trial, ret)
            budget -= size
        write_results(study, self.sweep_dir)

    def missing(self) -> int:
        return self.n_trials - len(self.study.get_trials(deepcopy=False, states=COUNTED))

    def launch(self, launcher: Launcher, trials: list[Trial]) -> list[JobReturn]:
        """Each job numbered by its trial: one launch per run of consecutive trial numbers
        (every batch, unless another search shares the study)."""
        returns: list[JobReturn] = []
        for _, group in itertools.groupby(enumerate(trials), lambda it: it[1].number - it[0]):
            run = [t for _, t in group]
            jobs = [[*self.space.overrides(t.params), env_set(TRIAL, str(t.number))] for t in run]
            returns += launcher.launch(jobs, initial_job_idx=run[0].number)
        return returns

    def shared(self) -> list[str]:
        """Every job's overrides: its study, and a place for its trial's number, so that the
        job's own override needs no `++` (which the launchers would print)."""
        return [f"++{env_set(key, value)}" for key, value in {**self.env, TRIAL: ""}.items()]

    def tell(self, trial: Trial, ret: JobReturn) -> None:
        """By the status in the job's metrics.json: a diverged run completes with the worst
        value, so the sampler learns to avoid it; an interrupted one is run again."""
        try:
            value = float(ret.return_value)
        except Exception:  # the job raised: Hydra keeps the exception as its return value
            status, value = "failed", math.nan
        else:
            assert ret.hydra_cfg is not None
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
            status = read_metrics(run_dir).get("status", "failed")
        worst = math.inf if self.direction == "minimize" else -math.inf
        if status in ("completed", "diverged"):
            finite = status == "completed" and math.isfinite(value)
            self.study.tell(trial, value if finite else worst, skip_if_finished=True)
        elif status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        elif status == "interrupted":
            retry(self.study, trial.number, trial.params)
        else:
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def same_search(study: optuna.Study, space: Space, where: str) -> None:
    """A continued study runs the search that began it: other settings would mix trials that
    are not comparable (a grid sweep dir refuses them alike)."""
    searched = {"fixed": sorted(space.fixed)} | {k: repr(d) for k, d in space.distributions.items()}
    before = study.user_attrs.get(SEARCHED)
    if before is None:  # a new study
        study.set_user_attr(SEARCHED, searched)
    elif before != searched:
        had, has = set(before.pop("fixed", [])), set(searched.pop("fixed"))
        keys = {k for k in before.keys() | searched.keys() if before.get(k) != searched.get(k)}
        told = {"the study": had - has, "this command": has - had, "searched otherwise": keys}
        which = "; ".join(f"{who}: {', '.join(sorted(v))}" for who, v in told.items() if v)
        raise ConfigError(
            f"{where} was searched with other settings ({which}); give the same ones to "
            f"continue it, or {ANOTHER}"
        )


def own_trials(sweep_dir: Path, study: optuna.Study | None, storage: str, name: str) -> set[int]:
    """The study's trials run in this sweep dir (all, where its journal is there); another
    sweep's jobs there are refused: they are numbered as its trials, in the same directories."""
    here = sweep_dir.resolve()
    own = "://" not in storage and Path(storage).resolve().parent == here
    ours = {
        t.number
        for t in (study.get_trials(deepcopy=False) if study is not None else [])
        if own or Path(t.user_attrs.get(SWEEP_DIR) or "/").resolve() == here
    }
    others = [run_dir.name for run_dir, num, _ in job_dirs(sweep_dir) if num not in ours]
    if others:
        listed = ", ".join(others[:2]) + (", ..." if len(others) > 2 else "")
        raise ConfigError(
            f"hydra.sweep.dir={str(sweep_dir)!r} holds another sweep's jobs ({listed}), which "
            f"are no trials of the study {name!r} in {shown(storage)}; pick a new hydra.sweep.dir"
        )
    return ours


def probes(distributions: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Values to compose a trial's config with before the study is made: each distribution's
    low end, and each choice once (an option of a config group that is not there)."""
    choices = {
        key: d.choices for key, d in distributions.items() if isinstance(d, CategoricalDistribution)
    }
    low = {key: choices[key][0] if key in choices else d.low for key, d in distributions.items()}
    return [low, *(low | {key: c} for key, values in choices.items() for c in values[1:])]


def retry(study: optuna.Study, number: int, params: dict[str, Any]) -> None:
    """A trial that did not end is failed, and its parameters are run again."""
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params)


def env_set(key: str, value: str) -> str:
    """A Hydra override that sets an environment variable for the job."""
    return f"hydra.job.env_set.{key}={quote(value)}"


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """`optimization_results.yaml` as Hydra's Optuna plugin writes it."""
    try:
        best = study.best_trial
    except ValueError:
        log.warning("No trial completed: no best parameters")
        return
    if not math.isfinite(best.value):  # the worst value Optuna was told for a diverged trial
        log.warning("Every trial diverged: no best parameters")
        return
    log.info(f"Best parameters: {best.params}")
    log.info(f"Best value: {best.value}")
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
