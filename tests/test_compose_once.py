"""The run's config is composed once: the composition Hydra makes to read `hydra.mode` is
reused, and it must be exactly what Hydra's second composition would have given."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

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
