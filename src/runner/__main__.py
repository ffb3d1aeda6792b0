"""`python -m runner experiment=linear_fit` (also the `runner` script)."""

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import cli, launch

# The top-level configs/ through a link, copied into the wheel. Absolute: for the `runner`
# script a relative path is `pkg://runner.configs`, which Hydra reads only with an __init__.py
CONFIGS = Path(__file__).parent / "configs"
sys.path.insert(0, os.getcwd())  # experiments/ imports from the repo root, for `runner` too
# Hydra 1.3 takes 1.1's defaults without version_base; 1.4 has 1.3's and deprecates it
BASE = {"version_base": "1.3"} if hydra.__version__.startswith("1.3.") else {}


@hydra.main(config_path=str(CONFIGS), config_name="config", **BASE)
def app(cfg: DictConfig) -> float:
    hc = HydraConfig.get()  # what Hydra knows of this job
    overrides = OmegaConf.to_container(hc.overrides.task)  # as typed: `${...}` unresolved
    return cli.run_job(cfg, Path(hc.runtime.output_dir), hc.mode, overrides)


def main() -> None:
    launch.follow()  # a torchrun rank other than 0 runs rank 0's config, not Hydra
    cli.main(app)  # Hydra's errors, told the runner's way
    # done, results written: a signal while Python shuts down is no interruption (exit 0)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    main()
