"""`python -m runner experiment=linear_fit` (also the `runner` script)."""

import os
import sys
from pathlib import Path

from runner.workers import start_if_asked

sys.path.insert(0, os.getcwd())  # experiments/ is importable from the repo root, as with -m
start_if_asked(sys.argv[1:])  # a joblib sweep's workers: their imports start before Hydra's

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner.cli import explain_refused_overrides  # noqa: E402
from runner.compose_once import compose_once  # noqa: E402

CONFIGS = Path(__file__).parent / "configs"  # a link to the top-level configs/; copied into a wheel
explain_refused_overrides()  # `trainer.epoch=5` gets a did-you-mean, like other config errors
compose_once()  # Hydra composes the config twice per run; the first one is kept for the run


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def main(cfg: DictConfig) -> float:
    from runner.cli import run_job

    hc = HydraConfig.get()
    return run_job(cfg, Path(hc.runtime.output_dir), hc.mode, dict(hc.runtime.choices))


if __name__ == "__main__":
    main()
