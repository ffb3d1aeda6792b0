"""run(cfg): seed and build, train, write results, close; returns what a sweeper optimises."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.train import checkpoint
from runner.build import Built, build
from runner.observe.gradcheck import check_grads
from runner.train.loop import Result, train
from runner.observe.walkthrough import lines as first_step_lines

log = logging.getLogger(__name__)
MAX_PARAM_ELEMENTS = 1000  # metrics.json lists parameter values for models up to this size


def run(cfg: DictConfig, run_dir: Path, choices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """1. build (checks the config first)  2. train  3. write metrics.json  4. close."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    source = checkpoint.locate(OmegaConf.select(cfg, "trainer.resume"), run_dir)
    checkpoint.claim(run_dir, source)  # never write over another run's results
    built = build(cfg, run_dir, choices)
    start = checkpoint.load(source, built) if source is not None else None
    if start is not None:
        built.logger.resumed(start["step"])  # TensorBoard shows each step once
    save = None
    if built.checked.trainer.checkpoint_every is not None:
        save = functools.partial(checkpoint.save, run_dir / checkpoint.LAST, built)
    result: Result | None = None
    metrics: dict[str, Any] = {"status": "failed"}
    first_step: list[str] = []
    try:
        checked = check_grads(built) if built.checked.trainer.check_grads else None
        result = train(built, save, start)
        metrics = summarise(result, built, time.perf_counter() - started)
        if start is not None:
            metrics["resumed_from"] = {"checkpoint": str(source), "step": start["step"]}
        if checked is not None:
            metrics["gradcheck"] = checked
        write_graph(result, run_dir)
        if built.checked.trainer.epochs == 0:  # the post's prints, kept in TensorBoard too
            first_step = first_step_lines(
                metrics["final_loss"],
                built.loss_fn,
                built.params,
                result.grad_fns,
                result.graph.get("tree"),
            )
            built.logger.text(0, "autograd/first_step", "\n".join(first_step))
    except BaseException as e:
        metrics["error"] = f"{type(e).__name__}: {e}"
        metrics["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        raise
    finally:
        write_json(run_dir / "metrics.json", metrics)
        built.logger.hparams(built.hparams, hparam_metrics(metrics), metrics["status"])
        built.logger.close()
    report(metrics, built, run_dir, first_step)
    return metrics


def summarise(result: Result, built: Built, duration: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "status": result.status,
        "final_loss": result.final_loss,
        "best_loss": result.best_loss,
        "val_loss": result.val_loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "device": str(built.device),
        "threads": torch.get_num_threads(),  # CPU threads: a sweep's workers share the cores
        "duration_s": round(duration, 4),
    }
    if result.diverged_step is not None:
        metrics["diverged_step"] = result.diverged_step
    if result.early_stopped_epoch is not None:
        metrics["early_stopped_epoch"] = result.early_stopped_epoch
    if result.signal is not None:
        metrics["signal"] = result.signal
    if result.grad_fns:
        metrics["grad_fn"] = result.grad_fns
    if sum(p.numel() for p in built.params.values()) <= MAX_PARAM_ELEMENTS:
        metrics["params"] = {n: p.detach().cpu().tolist() for n, p in built.params.items()}
        metrics["grads"] = result.grads
    metrics["learned"] = built.describe()
    metrics["objective"] = objective(metrics, built.checked.trainer.objective)
    return metrics


def objective(metrics: Mapping[str, Any], key: str) -> float:
    """The number a sweeper minimises: +inf for a run that diverged or has no such value."""
    value = metrics.get(key)
    if metrics.get("status") == "diverged" or value is None or not math.isfinite(value):
        return math.inf
    return float(value)


def hparam_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The HParams dashboard's metric columns; NaN marks a loss the run never reached."""
    out = {}
    for key in ("final_loss", "best_loss", "val_loss"):
        value = metrics.get(key)
        if key == "val_loss" and value is None and metrics.get("status") == "completed":
            continue  # no validation split: no column, rather than NaN in every row
        out[f"hparam/{key}"] = float(value) if isinstance(value, int | float) else math.nan
    return out


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON (no NaN/Infinity), written whole or not at all."""
    clean = _strict(data)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def write_graph(result: Result, run_dir: Path) -> None:
    if result.graph:
        text = result.graph["chain"] + "\n\n" + result.graph["tree"] + "\n"
        (run_dir / "graph.txt").write_text(text)
        (run_dir / "graph.dot").write_text(result.graph["dot"])


def report(
    metrics: Mapping[str, Any], built: Built, run_dir: Path, first_step: list[str] | None = None
) -> None:
    """The end-of-run summary, led by the post's line: `Learned: y = 1.924x + 1.050`;
    for trainer.epochs=0, the pass itself: `y = 16.0`, `a.grad_fn = None`, `dy/dx = 8.0`."""
    if first_step:
        for line in first_step:
            log.info(line)
    else:
        log.info(f"Learned: {metrics['learned']}")
    if metrics["status"] == "diverged":
        log.info(
            f"Diverged: the loss became NaN or infinite at step {metrics['diverged_step']}; "
            "try a lower optimizer.lr (or set trainer.grad_clip)"
        )
    elif not first_step:
        loss = metrics["final_loss"]
        shown = "n/a" if loss is None else f"{loss:.6g}"
        best = metrics["best_loss"]
        line = f"Final loss: {shown} (best {'n/a' if best is None else f'{best:.6g}'})"
        if metrics.get("val_loss") is not None:
            line += f", validation {metrics['val_loss']:.6g}"
        log.info(line)
    done = f"{metrics['steps']} steps, {metrics['epochs']} epochs"
    if first_step:
        done = "one forward and backward pass, no update (trainer.epochs=0),"
    log.info(
        f"{metrics['status'].capitalize()}: {done} on {metrics['device']} "
        f"in {metrics['duration_s']:.2f}s"
    )
    if metrics.get("early_stopped_epoch") is not None:
        log.info(
            f"Stopped early after epoch {metrics['early_stopped_epoch']}: the watched loss "
            "stopped improving (trainer.early_stop)"
        )
    if metrics["status"] == "interrupted":
        resume = (
            f"continue with trainer.resume={run_dir}"
            if (run_dir / checkpoint.LAST).is_file()
            else "set trainer.checkpoint_every to be able to resume"
        )
        by = metrics.get("signal", "a signal")
        log.info(f"Interrupted by {by} at step {metrics['steps']}; {resume}")
    log.info(f"Run directory: {run_dir}")
