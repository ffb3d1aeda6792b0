"""`python -m runner experiment=linear_fit` (also the `runner` script)."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .cli import explain_refused_overrides
from .compose_once import compose_once
from .workers import start_if_asked

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
sys.path.insert(0, os.getcwd())  # experiments/ is importable from the repo root, as with -m
explain_refused_overrides()  # `trainer.epoch=5` gets a did-you-mean, like other config errors
compose_once()  # Hydra composes the config twice per run; the first one is kept for the run
start_if_asked(sys.argv[1:])  # a joblib sweep's workers: their imports start at once


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def main(cfg: DictConfig) -> float:
    from .cli import run_job

    hc = HydraConfig.get()
    return run_job(cfg, Path(hc.runtime.output_dir), hc.mode, dict(hc.runtime.choices))


if __name__ == "__main__":
    main()
