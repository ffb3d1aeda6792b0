"""train(): the training loop, top to bottom, with read-only observers at log steps, epoch ends
and the end. Losses stay on the device between log steps, the only host syncs."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import torch

from runner.build import Built
from runner.config.check import ConfigError
from runner.observe import Look, Observer
from runner.observe.graph import saved_bytes
from runner.train import distributed
from runner.train.state import FOLD, State

NO_CLOSURE = (
    "optimizer: {}.step(closure) returned without calling closure(), which computes the loss "
    "and the gradients; call it first (loss = closure()), as torch's optimizers do"
)


def train(
    b: Built,
    state: State,
    observers: Sequence[Observer],
    save: Callable[[State], None] | None,
    stop: Stop | None = None,
) -> State:
    """Run from `state` to the last epoch (or until an observer or a signal stops it); `stop`:
    the caller's own signal handling (`stop_on_signals`), which then outlasts the loop."""
    t, params = b.checked.trainer, list(b.params.values())
    last = total_steps(b) - 1
    recent = Recent()  # each update's loss since the last log step
    part = distributed.part(b)  # this process's share of each step: all of it, for one
    at_epochs = [o for o in observers if type(o).epoch is not Observer.epoch]  # listed once
    log_now = True  # whether the last step was a log step (with no step, nothing to show)
    with nullcontext(stop) if stop is not None else stop_on_signals() as stop:
        while state.epoch < t.epochs and state.status == "running":
            if state.position == 0:  # a new epoch, in a new order
                state.perm, state.epoch_sum = part.same(shuffle(b, t.batch_size)), None
            batches = [None] if state.perm is None else list(state.perm.split(t.batch_size))
            for i in range(state.position, len(batches), t.accumulate):
                group = batches[i : i + t.accumulate]
                log_now = state.step % t.log_every_n_steps == 0 or state.step == last
                before = [p.detach().clone() for p in params] if log_now else []
                calls: list[tuple[torch.Tensor, torch.Tensor, Any, Any]] = []  # for observers

                def closure(group: list = group, calls: list = calls, now: bool = log_now):
                    b.optimizer.zero_grad()
                    losses, norm = [], None
                    for idx, weight in zip(group, weights(group)):
                        with saved_bytes() if now else nullcontext() as saved:
                            loss = part.loss_on(idx)  # forward and loss
                        root = loss if t.accumulate == 1 else loss * weight  # backward's root
                        part.scale(root).backward()
                        losses.append(root.detach())
                    if t.grad_clip is not None:
                        part.unscale()
                        norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)  # before
                    total = part.mean(losses[0] if len(losses) == 1 else torch.stack(losses).sum())
                    calls.append((total, root, saved, norm))  # the last: what observers see
                    return total

                part.step(closure)
                if not calls:  # a user's optimizer that updates from `.grad` alone
                    raise ConfigError(NO_CLOSURE.format(type(b.optimizer).__name__))
                loss = calls[0][0]  # the loss before the update, as LBFGS returns it
                share = None if group[0] is None else sum(g.shape[0] for g in group) / b.data.n
                state.add(loss, share)
                state.step, state.position = state.step + 1, i + t.accumulate
                recent.add(loss)
                if log_now:
                    _, root, saved, norm = calls[-1]
                    look = Look(state, loss, recent.take(), before, root, saved.total, norm)
                    for o in observers:
                        o.log(look)
                checkpoint = save is not None and state.step % t.checkpoint_every == 0
                if checkpoint and sound(state, recent, params):
                    save(state)
                part.agree(stop, state, log_now)  # a signal or a pruned trial stops every rank
                if state.status != "running" and state.position < len(batches):
                    break  # mid-epoch; after its last batch, the epoch ends first
            else:  # the epoch ran to its end
                state.end_epoch()
                b.scheduler.step()
                for o in at_epochs:
                    o.epoch(state)
                part.agree(stop, state, True)  # a trial pruned on its validation loss
    if state.status == "running":
        state.status = "completed"
    if not log_now:  # stopped early, after a step that was no log step: shown all the same
        look = Look(state, loss, recent.take(), None, calls[-1][1], None, calls[-1][3], True)
        for o in observers:
            o.log(look)
    if save is not None and sound(state, recent, params):
        save(state)  # the end, or the interruption: a resume goes on from here
    for o in observers:
        o.end(state)
    return state


def sound(state: State, recent: Recent, params: list[torch.Tensor]) -> bool:
    """No NaN or infinite loss since the last log step, nor parameter: a diverged run's last
    checkpoint is one to go on from (a host sync, at checkpoints only)."""
    if state.status == "diverged" or not recent.finite():
        return False
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def weights(group: list[torch.Tensor | None]) -> list[float]:
    """Each micro-batch's share of its group's points, so the group's update and loss are
    those of one batch of them all (without accumulation the loop leaves the post's graph)."""
    if len(group) == 1:
        return [1.0]
    points = [len(idx) for idx in group]
    return [n / sum(points) for n in points]


def total_steps(b: Built) -> int:
    """Updates in the whole run: the progress bar's length; the last one is always logged."""
    t = b.checked.trainer
    return max(t.epochs * math.ceil(epoch_batches(b) / t.accumulate), 1)


def epoch_batches(b: Built) -> int:
    """Batches an epoch: one for the whole batch (or no data)."""
    t = b.checked.trainer
    return 1 if b.data is None or t.batch_size is None else math.ceil(b.data.n / t.batch_size)


def shuffle(b: Built, batch_size: int | None) -> torch.Tensor | None:
    """This epoch's order as one index tensor on the device; None: the whole batch in order."""
    if b.data is None or batch_size is None or batch_size >= b.data.n:
        return None
    return torch.randperm(b.data.n, device=b.data.x.device)


class Recent:
    """The losses since the last log step, on the device; folded when many pile up."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []  # 0-d, one per update, after a 1-D folded one

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)
        if len(self.losses) >= FOLD:
            self.losses = [self.take()]

    def take(self) -> torch.Tensor:
        out, self.losses = torch.hstack(self.losses), []
        return out

    def finite(self) -> bool:
        """Whether every loss since the last log step is finite (a host sync)."""
        return not self.losses or bool(torch.isfinite(torch.hstack(self.losses)).all())


class Stop:
    signal: str | None = None


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Ctrl-C and SIGTERM stop the loop after the current step; a second one stops at once."""
    stop = Stop()

    def handler(signum: int, frame: Any) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signal.Signals(signum).name

    previous = {}
    with suppress(ValueError):  # not the main thread (some launchers): no handlers, run on
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
