"""run(cfg): build, train, write the results, close; returns what a sweeper optimises."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import launch
from runner.build import Built, build
from runner.config.check import ConfigError, EarlyStop
from runner.observe import Look, Observer, dashboard
from runner.observe.divergence import Divergence
from runner.observe.figures import Figures
from runner.observe.gradcheck import check_grads
from runner.observe.graph import GraphStats, saved_bytes
from runner.observe.histograms import Histograms
from runner.observe.progress import Progress
from runner.observe.scalars import Scalars
from runner.observe.validation import Validation
from runner.observe.walkthrough import grad_fns
from runner.observe.walkthrough import lines as first_step_lines
from runner.sweep.trial import Stopped, reporting
from runner.train import checkpoint, distributed
from runner.train.loop import stop_on_signals, total_steps, train
from runner.train.state import State, number
from runner.train.world import world

log = logging.getLogger(__name__)
MAX_PARAM_ELEMENTS = 1000  # metrics.json lists parameter values for models up to this size
ACCURACIES = {"acc/train": "acc", "acc/val": "val_acc"}  # a classifier's tags: metrics.json keys


def run(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), sweep_dir: Path | None = None
) -> dict[str, Any]:
    """Start or join the run's processes, then `run_here`, holding the run directory; only
    rank 0 writes. `sweep_dir`: a sweep's job."""
    started_from(cfg)
    if launch.spawns(cfg):  # trainer.devices=N: N processes run it; rank 0's results come back
        with checkpoint.held(run_dir, leader=True):  # for them all: rank 0 takes it as held
            try:
                metrics = launch.spawn(cfg, run_dir, overrides)
            except (ConfigError, KeyboardInterrupt):  # refused, or a Ctrl-C as they started
                if sweep_dir is None:  # a sweep's job keeps the `.hydra/` that says it started
                    launch.forget(run_dir)
                raise
        if "learned" not in metrics:  # a second Ctrl-C stopped rank 0 at once: no results
            raise KeyboardInterrupt
        if resumed := metrics.get("resumed_from"):  # rank 0 logs warnings only: said here
            log.info(f"Resumed from {resumed['checkpoint']} at step {resumed['step']}")
        report(metrics, run_dir)
        return metrics
    try:
        cfg, run_dir, overrides = launch.join(cfg, run_dir, overrides)  # rank 0's, on every rank
    except ConfigError:  # torchrun's processes disagree with the config: no run, no directory
        if world().leader:
            with suppress(OSError):  # Hydra made it; one that holds anything stays
                run_dir.rmdir()
        raise
    # gloo's threads end before the interpreter, whatever stops the run; one run in the directory
    with distributed.leaving(), checkpoint.held(run_dir, world().leader):
        metrics = run_here(cfg, run_dir, overrides, sweep_dir)
    report(metrics, run_dir, sweep_dir)
    return metrics


def run_here(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str], sweep_dir: Path | None
) -> dict[str, Any]:
    """1. check and build  2. resume  3. train  4. write metrics.json  5. close the logs."""
    leader = world().leader
    started = time.perf_counter()
    resume = OmegaConf.select(cfg, "trainer.resume")
    source = checkpoint.locate(resume, run_dir)
    if leader:
        checkpoint.claim(run_dir, source, resume)  # never write over another run's results
    b = distributed.everywhere(lambda: build(cfg, run_dir if leader else None))
    distributed.check(b)  # what DDP cannot split: before anything is written
    if leader and sweep_dir is None:  # a sweep's job wrote it as it started (runner.cli)
        record(cfg, run_dir)  # what made the run, which the checks passed
    state, resumed = State(), {}
    if source is not None:
        state = checkpoint.load(source, b)
        b.logger.resumed(state.step)  # TensorBoard shows each step once
        resumed = {"resumed_from": {"checkpoint": str(source), "step": state.step}}
    t = b.checked.trainer
    in_place = checkpoint.in_place(run_dir, source)
    start = state.step  # a run resumed in place that trains no step adds nothing to its logs
    watching = observers(b, state, sweep_dir, run_dir if leader else None, in_place)
    _, scalars, graph, _, validation, figures, *_ = watching  # the list's fixed order

    def save(state: State) -> None:
        validation.flush()  # the validation losses since the last log step: after a SIGKILL too
        state.path = figures.kept()
        checkpoint.save(run_dir / checkpoint.LAST, b, state)

    metrics: dict[str, Any] = {"status": "failed"}
    # a signal after the last step lets the results be written; the loop stops on the first
    with stop_on_signals() as stop:
        try:
            checked = {"gradcheck": check_grads(b)} if t.check_grads else {}
            b.logger.layout(dashboard.layout(b))  # the Custom Scalars dashboard
            figures.start()
            if t.epochs == 0:  # one forward and backward pass to look at, no update
                state, post = look_once(b, watching, graph)
            else:
                saving = t.checkpoint_every is not None and leader
                state, post = train(b, state, watching, save if saving else None, stop), {}
            if not in_place or state.step > start:
                dashboard.add_model_graph(b, b.logger)  # the Graphs dashboard
            metrics = summarise(state, b, time.perf_counter() - started) | post | resumed | checked
            latest = scalars.latest  # at the last step
            metrics |= {key: latest[tag] for tag, key in ACCURACIES.items() if tag in latest}
        except BaseException as e:
            lost = distributed.lost_a_rank(e)  # gloo's or NCCL's text would blame this rank
            # the pictures of the steps it took (not while the launcher ends the other ranks)
            if isinstance(e, Exception) and state.step > 0 and not lost:
                state.status = "failed"
                with suppress(Exception):  # the model or the logger may fail again
                    figures.end(state)
            error = e
            if lost:
                error = launch.RankFailed(
                    f"rank {world().rank} lost the connection to another rank, which failed or "
                    f"was killed, at step {state.step} (its own error, if it printed one, says why)"
                )
            metrics["error"] = f"{type(error).__name__}: {error}".removesuffix(": ")  # bare Ctrl-C
            metrics["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            duration = round(time.perf_counter() - started, 4)
            unknown = reached(state) | {"epochs": state.epoch}
            metrics = unknown | {"device": str(b.device), "duration_s": duration} | metrics
            metrics["steps"], metrics["world_size"] = state.step, world().size
            if isinstance(e, KeyboardInterrupt) and stop.signal is not None:
                metrics["signal"] = stop.signal  # the first of two: the second stopped it
            if lost:
                raise error from None
            raise
        finally:
            if leader:  # with what made the run, which a sweep matches its jobs by
                write_json(run_dir / "metrics.json", metrics | {"overrides": list(overrides)})
            if not in_place or state.step > start:
                row = hparam_metrics(metrics, b.data is not None and b.data.x_val is not None)
                columns = hparams(cfg, overrides, b.hparams if resumed else None)
                # an interrupted run's at the step it goes on from, which its resume there purges
                at = state.step if metrics["status"] == "interrupted" else max(state.step - 1, 0)
                b.logger.hparams(columns, row, at, metrics["status"])
            b.logger.close()
    if stop.signal is not None and metrics["status"] != "interrupted":  # as the run ended:
        metrics["late_signal"] = stop.signal  # it stands as it is, and a sweep stops after it
    return metrics


def started_from(cfg: DictConfig) -> None:
    """With `hydra.job.chdir=true` a job runs in its run directory: the config's paths are read
    from where the command was started all the same, through Hydra's `to_absolute_path`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    if HydraConfig.initialized() and HydraConfig.get().job.get("chdir"):
        for key in ("dataset.path", "trainer.resume"):
            value = OmegaConf.select(cfg, key)
            if isinstance(value, str) and value not in ("", "auto"):
                OmegaConf.update(cfg, key, to_absolute_path(value))


def record(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's `.hydra/` files (the config, Hydra's, the overrides as typed), once the run may
    write in `run_dir`: Hydra's own come before any check, over a refused run's directory."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # a process the run started: the one under Hydra writes
        return
    hc = HydraConfig.get()
    files = {"config.yaml": cfg, "hydra.yaml": {"hydra": hc}, "overrides.yaml": hc.overrides.task}
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (run_dir / ".hydra" / name).write_text(OmegaConf.to_yaml(content))


def observers(
    b: Built,
    state: State,
    sweep_dir: Path | None = None,
    run_dir: Path | None = None,
    in_place: bool = False,
) -> list[Observer]:
    """The fixed list of observers, divergence first: a run knows it diverged before anything
    is written. `run_dir`: where the graph's files go (None: nowhere, as on DDP ranks but 0)."""
    cadence, t, last = b.checked.cadence, b.checked.trainer, total_steps(b) - 1
    scalars, start = Scalars(b, b.logger), state.step
    return [
        Divergence(),
        scalars,
        GraphStats(b, cadence.graph_every_n_steps or t.log_every_n_steps, last, run_dir, in_place),
        Histograms(b, b.logger, cadence.histogram_every_n_steps, last),
        Validation(b, b.logger, None if t.early_stop is None else EarlyStop(**t.early_stop)),
        Figures(b, b.logger, cadence.figure_every_n_epochs, start, state.path),
        Progress(last + 1, start, scalars, shown=world().leader),
        # an Optuna trial: report, maybe prune (rank 0 reports; the ranks agree on pruning)
        *(reporting(t.objective) if world().leader else []),
        *([] if sweep_dir is None else [Stopped(sweep_dir)]),  # a joblib sweep's Ctrl-C
    ]


def look_once(
    b: Built, observers: Sequence[Observer], graph: GraphStats
) -> tuple[State, dict[str, Any]]:
    """`trainer.epochs=0`: one forward and backward pass, logged as step 0, no update. Returns
    the post's prints (each result's grad_fn, the lines `report` shows), also to TensorBoard."""
    before = [p.detach().clone() for p in b.params.values()]
    with saved_bytes() as saved:
        loss = b.loss_on(None)
    loss.backward()
    state = State(step=1, epoch_loss=loss.detach(), best=loss.detach())
    look = Look(state, loss.detach(), loss.detach().reshape(1), before, loss, saved.total)
    for o in observers:
        o.log(look)
    state.step, state.status = 0, "completed"
    for o in observers:
        o.end(state)
    pieces = grad_fns(b.loss_fn, b.params, loss)
    lines = first_step_lines(number(state.epoch_loss), b.loss_fn, b.params, pieces, graph.tree)
    b.logger.text(0, "autograd/first_step", "\n".join(lines))
    return state, {"grad_fn": pieces, "first_step": lines}


def summarise(state: State, b: Built, duration: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "status": state.status,
        "final_loss": None if state.status == "diverged" else number(state.epoch_loss),
        "best_loss": number(state.fold()),
        "val_loss": number(state.val_loss),
        "steps": state.step,
        "epochs": state.epoch,
        "device": str(b.device),
        "duration_s": round(duration, 4),
        "world_size": world().size,
    }
    optional = ("diverged_step", "early_stopped_epoch", "signal")
    metrics |= {key: getattr(state, key) for key in optional if getattr(state, key) is not None}
    if sum(p.numel() for p in b.params.values()) <= MAX_PARAM_ELEMENTS:
        metrics["params"] = {n: p.detach().cpu().tolist() for n, p in b.params.items()}
        metrics["grads"] = {
            n: p.grad.detach().cpu().tolist() for n, p in b.params.items() if p.grad is not None
        }
    metrics["learned"] = b.describe()
    metrics["objective"] = objective(metrics, b.checked.trainer.objective)
    return metrics


def reached(state: State) -> dict[str, float | None]:
    """The losses a run that failed had reached: its last finished epoch's and its best."""
    try:
        return {"final_loss": number(state.epoch_loss), "best_loss": number(state.fold())}
    except Exception:  # a failed device: its tensors cannot be read either
        return {"final_loss": None, "best_loss": None}


def objective(metrics: Mapping[str, Any], key: str) -> float:
    """The number a sweeper minimises: +inf for a run that diverged or has no such value."""
    value = metrics.get(key)
    if metrics.get("status") == "diverged" or value is None or not math.isfinite(value):
        return math.inf
    return float(value)


def hparams(
    cfg: DictConfig, overrides: Sequence[str], used: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The HParams columns: the keys the command line or the sweep set, but Hydra's, with the
    values this run used (for a resumed run, `used`: the checkpoint's optimizer settings)."""
    columns: dict[str, Any] = {}
    for override in overrides:
        key, _, text = override.lstrip("+").partition("=")
        if key.startswith(("~", "hydra")) or "/" in key:
            continue
        value = (used or {}).get(key, OmegaConf.select(cfg, key, default=None))
        # a group's option (`optimizer=adam`), or a value HParams cannot show as it is
        columns[key] = value if isinstance(value, bool | int | float | str) else text
    return columns


def hparam_metrics(metrics: Mapping[str, Any], validates: bool) -> dict[str, float]:
    """The HParams metric columns (and a classifier's accuracies); NaN: a loss never reached.
    `hparam/val_loss` only with a validation split, even for a run that diverged."""
    out = {}
    for key in ("final_loss", "best_loss", "val_loss")[: 3 if validates else 2]:
        value = metrics.get(key)
        out[f"hparam/{key}"] = float(value) if isinstance(value, int | float) else math.nan
    return out | {f"hparam/{key}": metrics[key] for key in ("acc", "val_acc") if key in metrics}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON (NaN and infinities as null), written whole or not at all."""
    strict = json.loads(json.dumps(data), parse_constant=lambda nan_or_infinity: None)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(strict, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def report(metrics: Mapping[str, Any], run_dir: Path, sweep_dir: Path | None = None) -> None:
    """The end-of-run summary, led by the post's line: `Learned: y = 1.924x + 1.050`;
    for trainer.epochs=0, the pass itself: `y = 16.0`, `a.grad_fn = None`, `dy/dx = 8.0`."""
    first_step = metrics.get("first_step")
    for line in first_step or [f"Learned: {metrics['learned']}"]:
        log.info(line)
    if metrics["status"] == "diverged":
        step = metrics["diverged_step"]  # at step 0 or 1: not the learning rate, most likely
        fix = {
            0: "before any update: look at the data, the formulas and the starting values",
            1: "after the first update: a gradient at the starting values was NaN or infinite "
            "(sqrt or log at 0, say; trainer.check_grads=true names it), or optimizer.lr is "
            "far too large",
        }.get(step, "try a lower optimizer.lr (or set trainer.grad_clip)")
        log.info(f"Diverged: the loss became NaN or infinite at step {step}; {fix}")
    elif not first_step:
        line = f"Final loss: {_shown(metrics['final_loss'])} (best {_shown(metrics['best_loss'])})"
        if metrics.get("val_loss") is not None:
            line += f", validation {metrics['val_loss']:.6g}"
        log.info(line)
    done = f"{_count(metrics['steps'], 'step')}, {_count(metrics['epochs'], 'epoch')}"
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
        resume = "set trainer.checkpoint_every to be able to resume"
        if (run_dir / checkpoint.LAST).is_file():
            resume = f"continue with the same command and trainer.resume={run_dir}"
        if sweep_dir is not None:  # a grid job goes on from its checkpoint, a trial anew
            resume = f"the sweep's command with hydra.sweep.dir={sweep_dir} finishes the sweep"
        by = metrics.get("signal", "a signal")
        log.info(f"Interrupted by {by} at step {metrics['steps']}; {resume}")
    log.info(f"Run directory: {run_dir}")


def _shown(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.6g}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"
