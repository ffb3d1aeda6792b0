"""The run's config is composed once: the composition Hydra makes to read `hydra.mode` is
reused, and it must be exactly what Hydra's second composition would have given."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from runner.__main__ import CONFIGS
from runner.compose_once import RUN_OVERRIDE, compose_once


def loader(config_dir: Path = CONFIGS) -> ConfigLoaderImpl:
    compose_once()
    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir)))


def as_hydra_runs(overrides: list[str], config_dir: Path = CONFIGS) -> tuple[object, object]:
    """(what Hydra's mode check composed, what the run then got), as Hydra calls them."""
    configs = loader(config_dir)
    first = configs.load_configuration(
        "config", overrides, RunMode.MULTIRUN, validate_sweep_overrides=False
    )
    run = configs.load_configuration("config", [*overrides, RUN_OVERRIDE], RunMode.RUN)
    return first, run


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=linear_fit"], ["experiment=sine_mlp", "optimizer.lr=0.5", "seed=1"]],
)
def test_the_run_gets_the_mode_checks_config_and_it_equals_a_fresh_composition(
    overrides: list[str],
) -> None:
    first, run = as_hydra_runs(overrides)
    assert run is first  # composed once
    hydras = ConfigLoaderImpl.load_configuration.composes_twice  # type: ignore[attr-defined]
    fresh = hydras(loader(), "config", [*overrides, RUN_OVERRIDE], RunMode.RUN)
    assert OmegaConf.to_yaml(run) == OmegaConf.to_yaml(fresh)
    assert run.hydra.mode == RunMode.RUN
    assert list(run.hydra.overrides.hydra)[-1] == RUN_OVERRIDE


def test_a_sweep_value_without_multirun_is_still_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="--multirun"):
        as_hydra_runs(["optimizer.lr=0.1,0.2"])


def test_a_mandatory_group_left_out_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: ???\n  - _self_\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.yaml").write_text("x: 1\n")
    with pytest.raises(ConfigCompositionException, match="You must specify 'model'"):
        as_hydra_runs([], tmp_path)


@pytest.mark.parametrize(
    ("launcher", "kept"),
    [
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", 1),
        ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", 1),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", 0),
    ],
)
def test_a_sweeps_checked_job_configs_are_kept_for_launchers_that_take_them(
    launcher: str, kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from hydra.plugins.sweeper import Sweeper

    from runner import compose_once as module

    configs = loader()
    master = configs.load_configuration("config", ["experiment=linear_fit"], RunMode.MULTIRUN)
    with open_dict(master):
        master.hydra.launcher = {"_target_": launcher}
    monkeypatch.setattr(module, "CHECKED", module.Checked())
    monkeypatch.setattr(module, "_send_configs_to_joblib", lambda: None)  # no plugin needed
    sweeper = SimpleNamespace(config=master, hydra_context=SimpleNamespace(config_loader=configs))
    Sweeper.validate_batch_is_legal(sweeper, [["optimizer.lr=0.3"]])  # type: ignore[arg-type]
    assert len(module.CHECKED.configs) == kept
    taken = configs.load_sweep_config(master, ["optimizer.lr=0.3"])  # the job's own
    assert taken.optimizer.lr == 0.3
    assert module.CHECKED.configs == {}
