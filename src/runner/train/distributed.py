"""One run over several processes with PyTorch's DDP. Each rank takes a disjoint shard of every
batch and DDP and `mean` average gradients and loss, so the observers' decisions agree by
construction; a signal, which reaches ranks at different moments, is agreed on at log steps."""

from __future__ import annotations

import gc
import math
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from runner.build import Built, models
from runner.config.check import ConfigError
from runner.launch import RankFailed
from runner.train.state import State
from runner.train.world import World, world

TIMEOUT = "RUNNER_DIST_TIMEOUT_S"  # how long a collective waits for a rank that stopped answering
LossOn = Callable[[torch.Tensor | None], torch.Tensor]  # a batch's indices (None: all) -> loss


def join(w: World, sent: Any) -> Any:
    """Start the process group; returns rank 0's `sent` on every rank."""
    if dist.is_initialized():  # joined before Hydra (a torchrun rank other than 0)
        return sent
    # Its functions default to `group=group.WORLD`, read at import: imported later (DDP does),
    # they would keep the group, and gloo's threads, alive past `leave` into the interpreter's
    # exit, where a thread cut off mid-call can abort the process after the run succeeded.
    import torch.distributed.nn.functional  # noqa: F401

    # gloo carries CPU tensors (and this handshake), nccl CUDA ones
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, init_method=w.address, rank=w.rank, world_size=w.size, timeout=timeout()
    )
    box = [sent]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def timeout() -> timedelta:
    text = os.environ.get(TIMEOUT, "600")
    with suppress(ValueError):  # not a number: refused below
        if 0 < (seconds := float(text)) < math.inf:
            return timedelta(seconds=seconds)
    raise ConfigError(f"{TIMEOUT}={text!r} must be a positive number of seconds")


def pin(w: World, device: str) -> None:
    """Each process on its own GPU, the one of its local rank: `cuda` then means that one."""
    if not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return
    if device.startswith("cuda:"):
        raise ConfigError(
            f"trainer.device={device} names one GPU for every process; set trainer.device=cuda "
            "(each process takes the GPU of its local rank)"
        )
    if torch.cuda.is_available():  # otherwise building says there is no CUDA
        if w.local_size > (gpus := torch.cuda.device_count()):
            raise ConfigError(
                f"trainer.devices={w.local_size} but this machine has {gpus} GPU(s); set "
                f"trainer.devices (or torchrun's --nproc-per-node) to at most {gpus}, or "
                "trainer.device=cpu for gloo processes"
            )
        torch.cuda.set_device(w.local_rank)


def lost_a_rank(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo and NCCL name
    themselves in their errors): the failure is that rank's, not this one's."""
    text = str(e).lower()
    return world().size > 1 and isinstance(e, RuntimeError) and ("gloo" in text or "nccl" in text)


def everywhere(make: Callable[[], Built]) -> Built:
    """`make()` on every rank, then the ranks agree it worked: one rank's failure stops every
    rank here, not at DDP's first collective, which would wait for it until the timeout."""
    if not dist.is_initialized():
        return make()
    try:
        made, error = make(), None
    except Exception as e:
        made, error = None, e
    said: list[tuple[bool, str] | None] = [None] * dist.get_world_size()
    mine = None if error is None else (isinstance(error, ConfigError), str(error))
    dist.all_gather_object(said, mine)
    if error is not None:
        raise error
    for rank, failure in enumerate(said):
        if failure is not None:
            config, text = failure
            if config:
                raise ConfigError(f"rank {rank}: {text}")
            raise RankFailed(f"rank {rank} failed while the run was built: {text}")
    return made


def leave() -> None:
    """A DDP model holds its process group and is a reference cycle, freed only by the garbage
    collector: freed after the group is destroyed, it can hang its process; so it goes first."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def leaving() -> Iterator[None]:
    """`leave` after the block, whatever ends it; an error's traceback would keep the run's
    frames, and its DDP model, past `leave`: their variables go (the lines stay to print),
    for several processes only (one keeps them for a debugger)."""
    try:
        yield
    except BaseException as e:
        if dist.is_initialized():
            traceback.clear_frames(e.__traceback__)
        raise
    finally:
        leave()


def same(value: Any) -> Any:
    return value


def interrupted(stop: Any, state: State, log_now: bool) -> None:
    """One process: a signal ends the run after this step."""
    if stop.signal is not None and state.status == "running":
        state.status, state.signal = "interrupted", stop.signal


@dataclass
class Part:
    """This process's part of each step; for one process at full precision, the plain calls."""

    loss_on: LossOn  # forward and loss
    step: Callable[[Callable[[], torch.Tensor]], torch.Tensor]  # optimizer.step(closure)
    scale: Callable[[torch.Tensor], torch.Tensor] = same  # what backward starts from
    unscale: Callable[[], None] = lambda: None  # before clipping: the true gradients
    mean: Callable[[torch.Tensor], torch.Tensor] = same  # a loss, averaged over the ranks
    same: Callable[[torch.Tensor | None], torch.Tensor | None] = same  # rank 0's epoch order
    agree: Callable[[Any, State, bool], None] = interrupted  # on stopping, every rank at once


def part(b: Built, w: World | None = None) -> Part:
    w = w or world()
    p = Part(loss_on=b.loss_on, step=b.optimizer.step)
    if w.size > 1:
        p.loss_on, p.mean, p.same, p.agree = sharded(b, w), mean, broadcast, agreed
    if b.amp is not None:
        p.loss_on = autocast(p.loss_on, b.device.type, b.amp)
    if b.scaler is not None:
        p.scale, p.unscale, p.step = scaled(b.scaler, b.optimizer)
    return p


def check(b: Built, w: World | None = None) -> None:
    """What DDP cannot split, refused before the run writes anything (no-op for one process)."""
    if (w or world()).size == 1:
        return
    if b.data is None or b.model is None:
        raise ConfigError(
            "dataset=none has no data to split over processes, so each would compute the "
            "same; set trainer.devices=1 and trainer.num_nodes=1"
        )
    mine = {id(p) for p in b.model.parameters()}
    outside = [n for n, p in b.params.items() if id(p) not in mine]
    if outside:
        raise ConfigError(
            f"the loss's own parameters ({', '.join(outside)}) are outside the model, "
            "whose gradients DDP averages; move them into the model or set trainer.devices=1"
        )


def sharded(b: Built, w: World) -> LossOn:
    """The loss on this rank's shard of a batch, through DDP, weighted so that the ranks' mean
    is the whole batch's."""
    assert b.data is not None and b.model is not None  # `check` refused the others
    model = b.model
    if (backend := b.checked.trainer.compile) is not False:  # the model, inside DDP: compiled
        # around DDP, its forward breaks the graph and the model's layers run eagerly
        model = torch.compile(model, backend="inductor" if backend is True else backend)
    ddp = DistributedDataParallel(model, find_unused_parameters=skips_parameters(b))
    forward = ddp if isinstance(b.model, models.Expression) else models.forward_fn(ddp)
    x, y = b.data.x, b.data.y
    every = torch.arange(w.rank, b.data.n, w.size, device=x.device)  # the full batch's shard
    whole = (x[every], y[every], len(every) * w.size / b.data.n)  # gathered once

    def loss_on(idx: torch.Tensor | None) -> torch.Tensor:
        if idx is None:
            xs, ys, weight = whole
        else:
            own = idx[w.rank :: w.size]
            xs, ys, weight = x[own], y[own], len(own) * w.size / len(idx)
        loss = b.loss_fn(forward(xs), ys)
        if weight == 0:  # a batch smaller than the ranks: none of its points is this one's
            return loss.nan_to_num() * 0  # the mean of none is NaN; it adds nothing, as it should
        return loss if weight == 1 else loss * weight

    return loss_on


def skips_parameters(b: Built) -> bool:
    """Whether the loss leaves a parameter of the model without a gradient (a layer that its
    forward skips), which DDP must be told, or it stops at the second step."""
    assert b.data is not None and b.model is not None
    with models.evaluating(b.model, grad=True):  # batch norm's statistics left as they are
        loss = b.loss_fn(models.forward_fn(b.model)(b.data.x[:2]), b.data.y[:2])
    trainable = [p for p in b.model.parameters() if p.requires_grad]
    return any(g is None for g in torch.autograd.grad(loss, trainable, allow_unused=True))


def mean(loss: torch.Tensor) -> torch.Tensor:
    out = loss / dist.get_world_size()
    dist.all_reduce(out)
    return out


def broadcast(value: torch.Tensor | None) -> torch.Tensor | None:
    if value is not None:
        dist.broadcast(value, src=0)
    return value


def agreed(stop: Any, state: State, log_now: bool) -> None:
    """At log steps and epoch ends (a host sync): a signal on any rank, rank 0's pruner or any
    rank's early stop stops every rank."""
    if not log_now:
        return
    # each rank's early stop reads its own validation loss (batch norm's statistics differ)
    early = state.early_stopped_epoch is not None
    flags = torch.tensor([stop.signal is not None, state.status == "pruned", early]).float()
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signalled, pruned, stopped = flags.tolist()
    if pruned and state.status == "running":
        state.status = "pruned"
    if stopped and state.status == "running":
        state.status, state.early_stopped_epoch = "completed", state.epoch
    if signalled and state.status == "running":
        state.status, state.signal = "interrupted", stop.signal or "SIGTERM"


def autocast(loss_on: LossOn, device: str, dtype: torch.dtype) -> LossOn:
    def on(idx: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(device, dtype=dtype):
            return loss_on(idx).float()  # losses are summed and logged in float32

    return on


def scaled(scaler: torch.amp.GradScaler, optimizer: Any) -> tuple[Callable, Callable, Callable]:
    """float16's scaler: scaled backward, unscaled clipping, overflowed updates skipped."""

    def step(closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        loss = closure()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return scaler.scale, lambda: scaler.unscale_(optimizer), step
