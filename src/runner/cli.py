"""How a run ends for the user: one clear line for a bad config, an exit status that says
whether the run worked, and an objective for sweepers."""

from __future__ import annotations

import json
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
from .run import run, write_json

log = logging.getLogger("runner")


def run_job(
    cfg: DictConfig, run_dir: Path, mode: RunMode | None, choices: Mapping[str, Any]
) -> float:
    if mode == RunMode.MULTIRUN:
        return sweep_job(cfg, run_dir, choices)
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


def sweep_job(cfg: DictConfig, run_dir: Path, choices: Mapping[str, Any]) -> float:
    """One job of a sweep: it never raises, so the other jobs still run and are summarised.

    Hydra's sweepers stop at a failed job (the basic one re-raises the first failure after
    its batch, before the end-of-sweep callback), so a failure goes into the job's
    metrics.json instead, its objective is +inf, and `runner.sweep.Summary` turns it into
    the sweep's exit status.
    """
    try:
        metrics = run(cfg, run_dir, choices)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            log.exception(f"Failed: {error}")
        else:
            log.error(f"Failed: {error}")
        path = run_dir / "metrics.json"
        written = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, written | {"status": "failed", "error": error, "objective": None})
        return math.inf
    if metrics["status"] == "interrupted":  # Ctrl-C or SIGTERM: stop the sweep, not one job
        log.error("Interrupted: the sweep stops here")
        sys.exit(130)
    return metrics["objective"]
