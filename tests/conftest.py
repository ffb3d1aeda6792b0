"""Shared test helpers: compose a config in process, run it, read its TensorBoard events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner.__main__ import CONFIGS
from runner.run import run

ROOT = Path(__file__).resolve().parents[1]  # the repository


def compose_config(*overrides: str, config_dir: Path = CONFIGS) -> DictConfig:
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def run_experiment(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], Path]]:
    """Run an experiment in this process: returns (metrics, run_dir)."""
    counter = iter(range(1000))

    def _run(*overrides: str) -> tuple[dict[str, Any], Path]:
        run_dir = tmp_path / f"run{next(counter)}"
        metrics = run(compose_config(*overrides), run_dir)
        return metrics, run_dir

    return _run


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """`python -m runner ...` in a fresh process, as a user would type it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None) if env is None or "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def event_accumulator(run_dir: Path):
    """The run's TensorBoard events, loaded with everything kept (no sampling)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        str(run_dir),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.IMAGES: 0},
    )
    acc.Reload()
    return acc


def session_hparams(run_dir: Path) -> dict[str, Any]:
    """The run's HParams row as the dashboard reads it: the hparams plugin's session data."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = event_accumulator(run_dir).PluginTagToContent(metadata.PLUGIN_NAME)
    assert {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG} <= set(content)
    data = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    values = data.session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in event_accumulator(run_dir).Scalars(tag)]
