"""One config composition per run, and one per job of a grid sweep, where Hydra 1.3 does
two each.

Before running, Hydra composes the whole config once only to read `hydra.mode` (run or
multirun), throws it away, and composes it again to run: ~0.15 s each, a tenth of a small
run's whole time. `compose_once` keeps that first composition and hands it to the second
call when nothing differs but what Hydra itself appended, `hydra.mode=RUN`: it checks the
overrides as Hydra's run mode does, and records that override as Hydra would. Anything
else (a config with a mandatory group left out, an error) composes as before.

A grid sweep (Hydra's basic sweeper) composes every job's config before launching any, to
check that all of them can be, and the launcher composes each again to run it: ~0.25 s a
job twice. `compose_once` keeps the checked compositions (the first `KEPT` of a batch) and
hands each to its job: to the basic launcher in this process, and to a joblib worker along
with its job (`execute_job`). As Hydra does for a job, the sweep's resolver cache (its
timestamps) is copied into the config when the job starts, not when it was checked.
Other sweepers and launchers compose as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.workers import JOBLIB

RUN_OVERRIDE = "hydra.mode=RUN"  # what Hydra appends to the overrides for a plain run
KEPT = 256  # checked job configs kept for their jobs, at most (~150 kB each for linear_fit)


def compose_once() -> None:
    _compose_run_once()
    _compose_jobs_once()


def _compose_run_once() -> None:
    load = ConfigLoaderImpl.load_configuration
    if getattr(load, "composes_once", False):
        return
    kept: dict[tuple[Any, ...], DictConfig] = {}  # the mode-reading composition, at most one

    def load_configuration(
        self: ConfigLoaderImpl,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        if run_mode == RunMode.MULTIRUN and not validate_sweep_overrides:  # reads hydra.mode
            cfg = load(self, config_name, overrides, run_mode, from_shell, False)
            kept.clear()
            kept[(config_name, tuple(overrides), from_shell)] = cfg
            return cfg
        earlier = kept.pop((config_name, tuple(overrides[:-1]), from_shell), None)
        if (
            earlier is None
            or run_mode != RunMode.RUN
            or overrides[-1:] != [RUN_OVERRIDE]
            or earlier.hydra.mode is not None
            or OmegaConf.missing_keys(earlier.hydra.runtime.choices)  # run mode refuses these
        ):
            return load(
                self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides
            )
        if validate_sweep_overrides:  # `a=1,2` without --multirun is refused, as Hydra does
            parsed = OverridesParser.create(config_loader=self).parse_overrides(overrides)
            self.validate_sweep_overrides_legal(parsed, run_mode=run_mode, from_shell=from_shell)
        with open_dict(earlier.hydra):
            earlier.hydra.mode = RunMode.RUN
            earlier.hydra.overrides.hydra.append(RUN_OVERRIDE)
        return earlier

    load_configuration.composes_once = True  # type: ignore[attr-defined]
    load_configuration.composes_twice = load  # type: ignore[attr-defined]  # Hydra's own
    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]


class Checked:
    """The job configs Hydra's check of a sweep batch composed, by overrides, for the sweep
    (its master config) that checked them, until each job takes its own."""

    def __init__(self) -> None:
        self.master: DictConfig | None = None
        self.configs: dict[tuple[str, ...], DictConfig] = {}
        self.checking = False

    def keep(self, master: DictConfig, overrides: Sequence[str], config: DictConfig) -> None:
        if master is not self.master:
            self.master, self.configs = master, {}
        if len(self.configs) < KEPT:
            self.configs[tuple(overrides)] = config

    def take(self, master: DictConfig, overrides: Sequence[str]) -> DictConfig | None:
        """The job's checked config, with the sweep's resolver cache as of now; None if it
        was not kept (then the job composes its own)."""
        if master is not self.master:
            return None
        config = self.configs.pop(tuple(overrides), None)
        if config is not None:
            OmegaConf.copy_cache(from_config=master, to_config=config)
        return config


CHECKED = Checked()


class Composed(list):  # type: ignore[type-arg]
    """A job's overrides, sent to a joblib worker with the config they compose to."""

    def __init__(self, overrides: Iterable[str], config: DictConfig | None) -> None:
        super().__init__(overrides)
        self.config = config


def _compose_jobs_once() -> None:
    load_sweep_config = ConfigLoaderImpl.load_sweep_config
    if getattr(load_sweep_config, "composes_once", False):
        return
    validate = Sweeper.validate_batch_is_legal

    def validate_batch_is_legal(self: Sweeper, batch: Sequence[Sequence[str]]) -> None:
        launcher = None if self.config is None else self.config.hydra.launcher.get("_target_")
        # only launchers that take them keep them (submitit's jobs compose their own)
        CHECKED.checking = launcher == JOBLIB or str(launcher).endswith(".BasicLauncher")
        try:
            validate(self, batch)
        finally:
            CHECKED.checking = False
        if launcher == JOBLIB:
            _send_configs_to_joblib()

    def load_job_config(
        self: ConfigLoaderImpl, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        if not CHECKED.checking:
            kept = CHECKED.take(master_config, sweep_overrides)
            if kept is not None:
                return kept
        config = load_sweep_config(self, master_config, sweep_overrides)
        if CHECKED.checking:
            CHECKED.keep(master_config, sweep_overrides, config)
        return config

    load_job_config.composes_once = True  # type: ignore[attr-defined]
    load_job_config.composes_twice = load_sweep_config  # type: ignore[attr-defined]  # Hydra's
    validate_batch_is_legal.keeps_nothing = validate  # type: ignore[attr-defined]  # Hydra's
    ConfigLoaderImpl.load_sweep_config = load_job_config  # type: ignore[method-assign]
    Sweeper.validate_batch_is_legal = validate_batch_is_legal  # type: ignore[method-assign]


def _send_configs_to_joblib() -> None:
    """Make Hydra's joblib launcher send each job its checked config (`Composed`), which
    `execute_job` runs instead of composing it again in the worker."""
    from hydra_plugins.hydra_joblib_launcher import _core

    if getattr(_core.launch, "composes_once", False):
        return
    launch = _core.launch

    def launch_composed(
        launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Any:
        jobs = [Composed(o, CHECKED.take(launcher.config, o)) for o in job_overrides]
        return launch(launcher=launcher, job_overrides=jobs, initial_job_idx=initial_job_idx)

    launch_composed.composes_once = True  # type: ignore[attr-defined]
    _core.launch = launch_composed
    _core.execute_job = execute_job


def execute_job(
    idx: int,
    overrides: Sequence[str],
    hydra_context: Any,
    config: DictConfig,
    task_function: Any,
    singleton_state: dict[Any, Any],
) -> Any:
    """Hydra's joblib `execute_job` (hydra-joblib-launcher 1.2), in a worker, with the job's
    config as the sweep checked it when it came with its overrides, else composed here."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = getattr(overrides, "config", None)
    if sweep_config is None:
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
