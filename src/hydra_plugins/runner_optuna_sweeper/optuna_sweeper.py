"""`hydra/sweeper=optuna`: the runner's Optuna sweeper and its config; Hydra imports this
module at each start, so Optuna is imported only when a search is set up. The config is
registered, not shipped as YAML, which hydra-optuna-sweeper's structured config of the same
name would validate: the last registration wins, and Hydra imports plugins alphabetically."""

from __future__ import annotations

from functools import partial
from inspect import signature
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, read_write

CONFIG = {  # the keys are hydra-optuna-sweeper's, plus storage and pruner
    "_target_": "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "_recursive_": False,  # the sweeper builds the sampler: its seed moves on as a study grows
    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": None},  # seed: same trials
    "direction": "minimize",  # or maximize; one objective
    "study_name": "search",  # the study's name in its storage
    "storage": None,  # None: optuna.journal in the sweep dir; or a URL (sqlite:///optuna.db)
    "n_trials": 20,  # the study's total: the same command and sweep dir run only the missing
    "n_jobs": 1,  # trials per launcher batch; the sampler learns from each batch before the next
    "params": {},  # key: interval(a, b), tag(log, interval(a, b)), choice(...), range(...), a value
    "pruner": None,  # an optuna.pruners `_target_`; None: trials report, and run to their end
}
# a joblib or submitit worker registers it again, and so may hydra-optuna-sweeper: hydra-core
# 1.4 warns at a replacement not asked for (`replace`, which 1.3 lacks, asks)
REPLACE = {"replace": True} if "replace" in signature(ConfigStore.store).parameters else {}
ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=CONFIG, provider="runner", **REPLACE
)


class OptunaSweeper(Sweeper):
    """The keys are those of `CONFIG`, checked by `runner.sweep.search.Search`."""

    def __init__(self, **keys: Any) -> None:
        self.keys = keys

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from runner.config.check import check_keys
        from runner.sweep.search import Search  # no optuna: runner.cli names the pip install

        known = [k for k in CONFIG if not k.startswith("_")]
        check_keys("hydra.sweeper", self.keys, known)  # `+hydra.sweeper.n_trial=3`

        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        # the study opens before any job: a bad key or storage stops the sweep with its own
        # message, not with the end-of-sweep summary of no jobs
        self.search = Search(
            **{k: self.keys.get(k, CONFIG[k]) for k in known},  # `~hydra.sweeper.params`
            sweep_dir=Path(config.hydra.sweep.dir).absolute(),
            arguments=list(config.hydra.overrides.task),
            compose=partial(hydra_context.config_loader.load_sweep_config, config),
        )
        with read_write(config.hydra.overrides):  # each job's config is composed from these
            config.hydra.overrides.hydra.extend(self.search.shared())

    def sweep(self, arguments: list[str]) -> None:
        self.search.run(self.launcher)  # `arguments` is config.hydra.overrides.task, read above
