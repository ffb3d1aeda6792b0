"""Config tier: every experiment composes and builds; every option file names a real target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, compose_config
from omegaconf import OmegaConf

from runner.build import build
from runner.config.check import ConfigError, check_target, locate

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
TARGET_GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "logger")
OPTIONS = [
    (group, p.stem) for group in TARGET_GROUPS for p in sorted((CONFIGS / group).glob("*.yaml"))
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str, tmp_path: Path):
    cfg = compose_config(f"experiment={experiment}", "logger=none")
    built = build(cfg, tmp_path)
    assert built.params, experiment
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith(f"# python -m runner experiment={experiment}"), text[1]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_file_targets_something_importable(group: str, option: str):
    node = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
    plain = OmegaConf.to_container(node, resolve=False)
    assert isinstance(plain, dict) and "_target_" in plain
    plain = {k: v for k, v in plain.items() if not (isinstance(v, str) and "${" in v)}
    plain = {k: v for k, v in plain.items() if v != "???"}
    if group == "logger":
        plain = {k: v for k, v in plain.items() if not k.endswith("_every_n_steps")}
        plain = {k: v for k, v in plain.items() if not k.startswith("figure_every")}
    check_target(group, plain)


def test_the_root_config_defaults_are_the_post():
    cfg = compose_config()
    assert cfg.seed == 42
    assert cfg.dataset.formula == "2*x + 1" and cfg.dataset.n == 50
    assert cfg.model.formula == "w * x + b" and cfg.model.params == {}
    assert cfg.optimizer._target_ == "runner.build.optim.GD"


def test_an_unknown_option_key_is_named_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.lrr' \(did you mean 'lr'\?\)"):
        check_target("optimizer", {"_target_": "torch.optim.Adam", "lrr": 0.1})


def test_a_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"dataset.n='abc' is not an integer"):
        check_target(
            "dataset", {"_target_": "runner.build.data.synthetic", "formula": "x", "n": "abc"}
        )


def test_torchs_exit_lines_stay_off_the_terminal_before_its_logging_is_set_up(tmp_path):
    """A Ctrl-C while torch loads ended the command with torch's `FakeTensor cache stats:`
    lines: logged at exit, before torch's logging was set up, through the runner's handlers."""
    script = f"""
import logging.config, yaml
config = yaml.safe_load(open({str(CONFIGS / "hydra/job_logging/runner.yaml")!r}))
config["handlers"]["file"]["filename"] = {str(tmp_path / "runner.log")!r}
logging.config.dictConfig(config)
logging.getLogger("torch._subclasses.fake_tensor").info("FakeTensor cache stats:")
logging.getLogger("runner.run").info("Learned: ...")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Learned: ...\n", done.stdout


def test_a_misspelt_target_name_is_told_with_the_name_its_module_has():
    with pytest.raises(ConfigError, match=r"cannot be imported \(did you mean 'mse_loss'\?\)"):
        locate("loss", "torch.nn.functional.mse_los")
    with pytest.raises(ConfigError, match=r"cannot be imported; check the module path"):
        locate("loss", "torch.nn.functional.nothing_like_it")
