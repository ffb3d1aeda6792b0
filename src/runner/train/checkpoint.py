"""Checkpoints: everything a run needs to continue exactly, written atomically and read with
`torch.load(weights_only=True)`: like a formula, a checkpoint cannot run code."""

from __future__ import annotations

import logging
import math
import os
import random
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch

from runner.build import Built
from runner.config.check import CONFIGS, ConfigError, one_line
from runner.train.loop import epoch_batches
from runner.train.state import State
from runner.train.world import world

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.pt"
LOCK = ".lock"  # in the run directory: held by the run going on there
HELD = "RUNNER_HELD"  # the run directory whose lock the launcher of its processes holds
# changed without a warning: how a run goes on, not what it learns (`device` covers `devices`)
TRAINER_GOES_ON = ("epochs", "resume", "checkpoint_every", "log_every_n_steps", "device")
TRAINER_GOES_ON += ("num_nodes", "objective", "early_stop", "check_grads", "compile")
GOES_ON = (*(f"trainer.{key}" for key in TRAINER_GOES_ON), "logger.")
FORMAT = 2  # bumped when the layout changes, so an old file is refused with a clear message


def locate(resume: Any, run_dir: Path) -> Path | None:
    """The checkpoint `trainer.resume` names: a run directory, a file, or `auto` (this one's)."""
    if not isinstance(resume, str):
        return None  # null, or a wrong type that the config check reports
    if resume == "auto":
        own = run_dir / LAST
        return own if own.is_file() else None
    given = Path(resume)
    for path in (given, given / LAST, given / LAST.name):
        if path.is_file():
            return path.absolute()
    raise ConfigError(
        f"trainer.resume={resume!r}: no checkpoint there (looked for {given}, {given / LAST}); "
        "give a run directory that has checkpoints/last.pt, a checkpoint file, or auto"
    )


class Occupied(ConfigError):
    """The run directory holds another run's results, which stay as they are."""


class InUse(Occupied):
    """Another run is going on in the run directory right now."""


@contextmanager
def held(run_dir: Path, leader: bool) -> Iterator[None]:
    """The run directory, locked while the run goes on: a second run there (a resume started
    twice, two sweep jobs named alike) is refused; the lock goes with the process, killed or not."""
    if not leader or fcntl is None or os.environ.get(HELD) == str(run_dir):
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 100, 0).decode(errors="replace").strip() or "a process"
            raise InUse(
                f"hydra.run.dir={str(run_dir)!r} is in use by a run still going there ({who}); "
                "wait for it to end, or pick a new directory"
            ) from None
        except OSError:  # a file system without locks (some network ones): unguarded
            pass
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        for torn in (run_dir / LAST).parent.glob(f".{LAST.name}.*.tmp"):  # a killed save's:
            torn.unlink(missing_ok=True)  # held, no other run's save is under way
        try:
            yield
        finally:  # still held: a run that wrote nothing (refused by a check) leaves no directory
            if [p.name for p in run_dir.iterdir()] == [LOCK]:
                (run_dir / LOCK).unlink()
                run_dir.rmdir()
    finally:
        os.close(fd)


def in_place(run_dir: Path, source: Path | None) -> bool:
    """Whether the run continues a checkpoint of its own directory."""
    return source is not None and run_dir.resolve() in source.resolve().parents


def foreign(run_dir: Path, source: Path | None) -> str | None:
    """The results of a run this one does not continue that `run_dir` holds (metrics.json or a
    checkpoint), to be left as they are; None when it holds none."""
    for name in ("metrics.json", str(LAST)):
        if (run_dir / name).exists() and not in_place(run_dir, source):
            return name
    return None


def claim(run_dir: Path, source: Path | None, resume: Any = None) -> None:
    """Make the run directory, refusing one holding results of a run this one does not continue."""
    if (name := foreign(run_dir, source)) is not None:
        go_on = "or continue that run with trainer.resume=auto"
        if not (run_dir / LAST).is_file():
            go_on = "that run has no checkpoint to continue from (trainer.checkpoint_every)"
        raise Occupied(
            f"hydra.run.dir={str(run_dir)!r} already holds a run ({name}); pick a new "
            f"directory (the default one is new for every run); {go_on}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if source is None and resume == "auto":
        log.info(f"trainer.resume=auto: no checkpoint in {run_dir}, so the run starts afresh")


def save(path: Path, b: Built, run: State) -> None:
    b.logger.flush()  # the logs up to here on disk: resumed after a SIGKILL, each step shows once
    run.rng = _rng_state(b.device)
    state = {
        "format": FORMAT,
        "modules": {name: module.state_dict() for name, module in _modules(b).items()},
        "grads": {n: p.grad for n, p in b.params.items() if p.grad is not None},
        "optimizer": b.optimizer.state_dict(),
        "scheduler": b.scheduler.state_dict(),
        "state": run.to_dict(),
        "hparams": dict(b.hparams),  # to name what a resumed run changed
        "world_size": world().size,  # any number of processes resumes it: the batch is global
        "scaler": None if b.scaler is None else b.scaler.state_dict(),  # trainer.amp=float16
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # a killed process leaves the old file or the new one, never a torn one (no fsync: it
    # can stall for seconds on a busy disk, and guards only against the machine going down)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, b: Built) -> State:
    """Restore `b` in place from a checkpoint; returns the run's state to start from."""
    try:
        # map to the CPU: generator states must stay there; the rest is copied onto the device
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"trainer.resume: {path} cannot be read ({one_line(e)}); the file is truncated, "
            "corrupt or not a checkpoint; resume from another checkpoint or start afresh "
            "without trainer.resume"
        ) from e
    if not isinstance(state, dict) or "format" not in state:
        raise ConfigError(f"trainer.resume: {path} is not a runner checkpoint")
    if not isinstance(state["format"], int) or state["format"] != FORMAT:
        raise ConfigError(
            f"trainer.resume: {path} is a runner checkpoint of format {state['format']!r}, and "
            f"this version of runner reads format {FORMAT}; resume with the version that wrote it"
        )
    try:
        saved = state.get("hparams") or {}
        refuse_changes(saved, b.hparams, state.get("state"), b.data.n if b.data else None)
        for name, module in _modules(b).items():
            module.load_state_dict(state["modules"][name])
        for name, p in b.params.items():
            grad = state["grads"].get(name)
            if grad is not None and grad.shape != p.shape:  # before a copy of what it claims
                raise ValueError(f"the gradient of {name} has shape {tuple(grad.shape)}")
            p.grad = None if grad is None else grad.to(p.device, p.dtype).clone()
        b.optimizer.load_state_dict(state["optimizer"])
        b.scheduler.load_state_dict(state["scheduler"])
        if b.scaler is not None and state.get("scaler"):
            b.scaler.load_state_dict(state["scaler"])
        run = State.from_dict(state["state"], b.device)
        _set_rng_state(run.rng, b.device)
        if not all(isinstance(v, int) for v in (run.step, run.epoch, run.position)):
            raise TypeError("its step, epoch and position are not all integers")
    except ConfigError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError(
            f"trainer.resume: {path} does not fit this experiment ({one_line(e, 400)}); resume "
            "with the experiment and model the checkpoint was written with"
        ) from e
    t, every = b.checked.trainer, saved.get("trainer.checkpoint_every")
    # what stopped the run before is over, but for an early stop that is still asked for
    stopped = run.early_stopped_epoch is not None and t.early_stop is not None
    run.status, run.signal = "completed" if stopped else "running", None
    run.early_stopped_epoch = run.early_stopped_epoch if stopped else None
    where = f"in epoch {run.epoch + 1}"
    if run.position == 0:
        where = f"after epoch {run.epoch}"
    elif run.position >= epoch_batches(b):  # a checkpoint at an epoch's last batch: before its end
        where = f"at the end of epoch {run.epoch + 1}"
    log.info(f"Resuming from {path} at step {run.step} ({where})")  # epochs count from 1
    if stopped:
        log.warning(
            f"The run stopped early after epoch {run.early_stopped_epoch} (trainer.early_stop): "
            "nothing is left to train (resume without trainer.early_stop to go on)"
        )
    elif run.epoch >= t.epochs:
        log.warning(
            f"trainer.epochs={t.epochs} and the checkpoint has {run.epoch} epochs done: "
            "nothing is left to train (raise trainer.epochs to go on)"
        )
    if t.checkpoint_every is None and isinstance(every, int):  # resumable in turn
        t.checkpoint_every = b.hparams["trainer.checkpoint_every"] = every  # and its own too
        log.info(f"Checkpointing every {every} steps, as the run resumed from did")
    changed = [k for k, v in b.hparams.items() if not k.startswith(GOES_ON) and saved.get(k) != v]
    # what the run trains with, for its HParams row and its own checkpoints: every setting of
    # the optimizer's group and the scheduler is the checkpoint's (`+optimizer.amsgrad` too)
    group = b.optimizer.param_groups[0]  # `lr` as set, not as a schedule has moved it since
    held = {"optimizer": group | {"lr": group.get("initial_lr", group.get("lr"))}}
    held["scheduler"] = b.scheduler.state_dict()
    kept = []  # changed settings the checkpoint's values override
    for key in b.hparams:
        part, _, name = key.partition(".")
        value = held.get(part, {}).get(name)
        if isinstance(value, bool | int | float | str):
            if key in changed and value != b.hparams[key]:
                kept.append(f"{key}={value}, not {b.hparams[key]}")
            b.hparams[key] = value
    if saved and changed:
        log.warning(
            f"Resuming with settings the checkpoint was not written with: {', '.join(changed)} "
            "(the parameters, the optimizer's state and the learning-rate schedule, with its "
            "own settings, are the checkpoint's" + "".join(f"; {k}" for k in kept) + ")"
        )
    return run


def refuse_changes(
    saved: Mapping[str, Any], now: Mapping[str, Any], run: Any, points: int | None
) -> None:
    """Changes a checkpoint cannot go on with: another model, optimizer or schedule (their
    states are another's), and mid-epoch another batch size (the epoch's place counts
    batches) or number of training `points` (the epoch's order indexes them)."""
    run = run if isinstance(run, dict) else {}
    position, perm = run.get("position", 0), run.get("perm")
    size = saved.get("trainer.batch_size")
    batches = 1 if perm is None or not isinstance(size, int) else math.ceil(len(perm) / size)
    mid_epoch = 0 < position < batches
    # the model first: another experiment changes the optimizer too, and the model says why
    keys = ["model._target_", "optimizer._target_", "scheduler._target_"]
    for key in keys + (["trainer.batch_size"] if mid_epoch else []):
        if key in saved and saved[key] != now.get(key):
            fix, (group, _, name) = f"{key}={saved[key]}", key.partition(".")
            if group == "model":  # several options build one class (an Expression, an MLP)
                fix = "the experiment and model the checkpoint was written with"
            elif name == "_target_":  # the shipped option that sets it, if one does
                sets, options = f"_target_: {saved[key]}\n", (CONFIGS / group).glob("*.yaml")
                fix = next(
                    (f"{group}={p.stem}" for p in sorted(options) if sets in p.read_text()), fix
                )
            raise ConfigError(
                f"trainer.resume: the checkpoint was written with {key}={saved[key]} "
                + ("in the middle of an epoch, " if key == "trainer.batch_size" else "")
                + f"and this run has {key}={now.get(key)}; resume with {fix}"
            )
    if mid_epoch and points is not None and len(perm) != points:
        raise ConfigError(
            f"trainer.resume: the checkpoint was written in the middle of an epoch over "
            f"{len(perm)} training points, and this run has {points}; resume with the dataset "
            "settings it was written with"
        )


def _modules(b: Built) -> dict[str, torch.nn.Module]:
    """The modules that own the parameters: the model and, for loss formulas, the loss."""
    owners = {"model": b.model, "loss": b.loss_fn}
    return {k: m for k, m in owners.items() if isinstance(m, torch.nn.Module)}


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator a run draws from: torch (CPU, and the accelerator in use), Python, NumPy."""
    version, words, gauss = random.getstate()
    # 625 words as one tensor rather than 625 pickled ints: far quicker to save
    python = (version, torch.tensor(words, dtype=torch.int64), gauss)
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": python}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    # weights_only loads tensors but not NumPy arrays: the key table travels as a tensor
    keys = torch.from_numpy(keys.astype(np.int64))
    state["numpy"] = (str(name), keys, int(pos), int(has_gauss), float(gauss))
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
