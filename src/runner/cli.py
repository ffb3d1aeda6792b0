"""How a run ends for the user: one clear line for a bad config, an exit status that says
whether the run worked, and an objective for sweepers."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.config.check import ConfigError, refused_override
from runner.sweep.summary import STOP
from runner.workers import in_worker, settle

log = logging.getLogger("runner")


def run_job(
    cfg: DictConfig, run_dir: Path, mode: RunMode | None, choices: Mapping[str, Any]
) -> float:
    if in_worker():  # a joblib worker, forked with torch loaded
        settle(HydraConfig.get().launcher.get("n_jobs", -1))
    # first: matplotlib loads on another core while torch is imported (in a joblib worker:
    # the sweep's shared plotter, when it has one)
    start_plotter(cfg)
    from runner.run import run  # torch is imported here, not for `--help` or `--cfg job`

    # What is alive now (torch, Hydra: ~200k objects) lives as long as the process: frozen,
    # the garbage collector stops walking it, in the loop and at exit, where the walk took
    # ~0.7 s of a small run's ~3 s. Once a process: a sweep's later jobs are collected as usual.
    if gc.get_freeze_count() == 0:
        gc.freeze()

    if mode == RunMode.MULTIRUN:
        return sweep_job(cfg, run_dir, choices)
    try:
        metrics = run(cfg, run_dir, choices)
    except ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Config error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, metrics.json says so
        print("Interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if metrics["status"] == "interrupted":  # the shell's convention: 130 for SIGINT, 143 SIGTERM
        sys.exit(128 + signal.Signals[metrics.get("signal") or "SIGINT"])
    if metrics["status"] != "completed":
        sys.exit(1)
    value = metrics["objective"]
    return value if math.isfinite(value) else math.inf


def start_plotter(cfg: DictConfig) -> None:
    """With TensorBoard on, start the process that draws the figures (`runner.plotter`) now,
    so that its matplotlib import and warm-up overlap this process's torch import and
    training; it costs this process a few milliseconds, and every job of a sweep shares it."""
    if str(cfg.logger.get("_target_", "")).endswith("loggers.TensorBoard"):
        from runner.observe.plotter import PLOTTER

        PLOTTER.start()


def sweep_job(cfg: DictConfig, run_dir: Path, choices: Mapping[str, Any]) -> float:
    """One job of a sweep: it never raises, so the other jobs still run and are summarised.

    Hydra's sweepers stop at a failed job (the basic one re-raises the first failure after
    its batch, before the end-of-sweep callback), so a failure goes into the job's
    metrics.json instead, its objective is +inf, and `runner.sweep.summary.Summary` turns it into
    the sweep's exit status.
    """
    from runner.run import run, write_json

    if (Path(HydraConfig.get().sweep.dir).absolute() / STOP).exists():
        # Ctrl-C reached the sweep (joblib's; `runner.sweep.summary.Summary`): no job starts after it
        error = "not started: the sweep was interrupted"
        write_json(run_dir / "metrics.json", {"status": "interrupted", "error": error})
        return math.inf
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
    if metrics["status"] == "interrupted":
        if in_sweep_process():  # Ctrl-C or SIGTERM to the sweep: stop it, not only this job
            log.error("Interrupted: the sweep stops here")
            sys.exit(130)
        return math.inf  # a worker or a cluster job was stopped (a time limit): the others go on
    return metrics["objective"]


def in_sweep_process() -> bool:
    """Whether this job runs in the process that started the sweep (Hydra's basic launcher),
    not in a joblib worker or a submitit job of its own, whose exit would fail the sweep."""
    return str(HydraConfig.get().launcher._target_).endswith(".BasicLauncher")


def explain_refused_overrides() -> None:
    """Let `trainer.epoch=5` end like every other config error: key, value, a did-you-mean.

    Hydra refuses an override of a key the composed config lacks while composing, before
    any runner code runs, with its own message and no hint. Its error reporter (internal to
    Hydra 1.3, and the one place such errors pass) is wrapped once, so that this refusal
    prints one `Config error:` line and exits 2; every other error passes unchanged, and
    HYDRA_FULL_ERROR=1 still shows Hydra's traceback.
    """
    from hydra._internal import utils as hydra_utils
    from hydra.errors import ConfigCompositionException

    report = hydra_utils.run_and_report
    if getattr(report, "explains_overrides", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def explained() -> Any:
            try:
                return func()
            except ConfigCompositionException as e:
                message = refused_override(e)
                if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"Config error: {message}", file=sys.stderr)
                sys.exit(2)

        return report(explained)

    run_and_report.explains_overrides = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report
