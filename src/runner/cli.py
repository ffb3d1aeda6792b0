"""How a run ends for the user: one clear line for a bad config, an exit status that says
whether the run worked, and an objective for sweepers."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

from .config import ConfigError
from .run import run

log = logging.getLogger("runner")


def run_job(
    cfg: DictConfig, run_dir: Path, mode: RunMode | None, choices: Mapping[str, Any]
) -> float:
    try:
        metrics = run(cfg, run_dir, choices)
    except ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or mode == RunMode.MULTIRUN:
            raise
        print(f"Config error: {e}", file=sys.stderr)
        sys.exit(2)
    if mode != RunMode.MULTIRUN and metrics["status"] != "completed":
        sys.exit(1)
    value = metrics["objective"]
    return value if math.isfinite(value) else math.inf
