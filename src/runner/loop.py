"""train(): the one training loop, top to bottom.

Per update: zero grads -> forward -> loss -> backward (over `accumulate` micro-batches)
-> clip -> optimizer step -> log every N steps. Logged values stay on the device as
tensors until the recorder writes them, and divergence is tracked on the device, so the
only host syncs are at log steps.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from . import gradcheck, insight
from .build import Built
from .config import EarlyStop
from .figures import Figures
from .graph import graph_chain, graph_dot, graph_stats, graph_tree, saved_bytes
from .loggers import Logger
from .walkthrough import grad_fns


@dataclass
class Result:
    status: str  # completed | diverged | interrupted
    steps: int
    epochs: int
    final_loss: float | None
    best_loss: float | None
    val_loss: float | None = None
    diverged_step: int | None = None
    graph: dict[str, str] = field(default_factory=dict)  # tree, chain, dot of the first step
    grads: dict[str, Any] = field(default_factory=dict)
    grad_fns: dict[str, str | None] = field(default_factory=dict)  # epochs=0: leaf to root
    early_stopped_epoch: int | None = None  # trainer.early_stop ended the run after this epoch
    signal: str | None = None  # SIGINT | SIGTERM for an interrupted run


class Recorder:
    """Holds logged values as device tensors and writes them in batches.

    One `.tolist()` per flush moves everything to the host: the sync is paid once per
    flush rather than once per value (`# note: this is the CPU-GPU sync point`).
    """

    def __init__(self, logger: Logger, every_s: float = 1.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self.pending: list[tuple[int, tuple[str, ...], torch.Tensor, dict[str, float]]] = []
        self.last_flush = time.monotonic()
        self.latest: dict[str, float] = {}

    def add(
        self, step: int, keys: tuple[str, ...], values: torch.Tensor, host: Mapping[str, float]
    ) -> None:
        self.pending.append((step, keys, values.detach(), dict(host)))

    def flush_due(self) -> None:
        """Called at log steps only, so a flush never adds a sync anywhere else."""
        if time.monotonic() - self.last_flush > self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            flat = torch.cat([v.float().reshape(-1) for _, _, v, _ in self.pending]).cpu().tolist()
            start = 0
            for step, keys, _, host in self.pending:
                row, start = flat[start : start + len(keys)], start + len(keys)
                values = dict(zip(keys, row, strict=True)) | host
                self.logger.scalars(step, values)
                self.latest = self.latest | values
            self.pending.clear()
        self.last_flush = time.monotonic()


@contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Ctrl-C and SIGTERM ask the loop to stop after the current step (logs are kept,
    a checkpoint is written); a second one stops at once."""
    flag: dict[str, Any] = {"stop": False, "signal": None}

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"], flag["signal"] = True, signal.Signals(signum).name

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (some launchers): no handlers, run on
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Patience:
    """trainer.early_stop: stop once the watched loss has gone `patience` epochs in a row
    without improving on its best by more than `min_delta`."""

    def __init__(self, cfg: EarlyStop) -> None:
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best, self.waited = math.inf, 0

    def stop(self, loss: torch.Tensor) -> bool:
        value = loss.item()  # note: a host sync, once an epoch and only with early_stop on
        if value < self.best - self.min_delta:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
        return self.waited >= self.patience


def _batches(n: int, batch_size: int | None, device: torch.device) -> list[torch.Tensor | None]:
    """Index slices of a shuffled randperm; None means the whole (unshuffled) batch."""
    if batch_size is None or batch_size >= n:
        return [None]
    perm = torch.randperm(n, device=device)
    return list(perm.split(batch_size))


def train(
    b: Built,
    save: Callable[[dict[str, Any]], None] | None = None,
    start: Mapping[str, Any] | None = None,
) -> Result:
    """Run the loop; with `save`, checkpoint every trainer.checkpoint_every steps and at the
    end; with `start` (a checkpoint's loop state), continue exactly where it was written."""
    t, cadence = b.checked.trainer, b.checked.cadence
    data, device, logger = b.data, b.device, b.logger
    names = list(b.params)
    params = list(b.params.values())
    graph_every = cadence.graph_every_n_steps or t.log_every_n_steps
    hist_every = cadence.histogram_every_n_steps
    tensor_params = [n for n in names if b.params[n].numel() > 1]
    keys = ("loss/train", *(f"param/{n}" for n in names), *(f"grad/{n}" for n in names))
    keys += ("grad/total_norm",)
    view_keys = insight.keys(b)  # ratio/<name>, and acc/* for classification losses
    pictures = Figures(b, cadence.figure_every_n_epochs)

    n = data.n if data is not None else 1
    batches_per_epoch = 1 if t.batch_size is None else math.ceil(n / t.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / t.accumulate)
    total_steps = max(t.epochs * steps_per_epoch, 1)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet in first_bad
    epoch_losses: list[torch.Tensor] = []  # not yet in best
    best = torch.full((), math.inf, device=device)
    last_epoch_loss = torch.full((), math.nan, device=device)
    val_loss: torch.Tensor | None = None
    rec = Recorder(logger)
    result = Result("completed", 0, 0, None, None)
    step = 0
    want_graph = True
    graph_loss: list[torch.Tensor] = []
    stopper = Patience(EarlyStop(**t.early_stop)) if t.early_stop is not None else None
    # where the loop is inside an epoch: the next batch group, this epoch's order and sum
    zero = torch.zeros((), device=device)
    position, batches, epoch_sum = 0, [None], zero
    saved_at: list[tuple[int, int]] = []

    def fold_unchecked(sync: bool = False) -> None:
        """Fold the step and epoch losses kept since the last fold into first_bad and best:
        a few ops per log step instead of a few ops on every step. With `sync` (log steps,
        which sync anyway), all-finite losses, the usual case, are found out on the host."""
        nonlocal first_bad, best
        if unchecked:
            losses = torch.stack([loss for _, loss in unchecked])
            if not sync or not bool(torch.isfinite(losses).all()):
                bad = ~torch.isfinite(losses)
                first = unchecked[0][0] + bad.to(torch.uint8).argmax()  # the first True
                first_bad = torch.where((first_bad < 0) & bad.any(), first, first_bad)
            unchecked.clear()
        if len(epoch_losses) == 1:
            best = torch.fmin(best, epoch_losses[0])
        elif epoch_losses:  # as fmin one epoch at a time: NaN never wins, +-inf kept
            losses = torch.stack(epoch_losses).nan_to_num(math.inf, math.inf, -math.inf)
            best = torch.fmin(best, losses.min())
        epoch_losses.clear()

    def checkpoint() -> None:
        """Save the loop's state (all of it, so a resumed run is bit-identical) with the
        logs up to here flushed; a diverged state is never saved over the last good one."""
        fold_unchecked()
        if save is None or saved_at == [(step, position)] or first_bad.item() >= 0:
            return
        rec.flush()
        logger.flush()
        perm = None if batches[0] is None else torch.cat(batches)
        save(
            {
                "step": step,
                "epoch": epoch,
                "position": position,
                "perm": perm,
                "epoch_sum": epoch_sum,
                "best": best,
                "last_epoch_loss": last_epoch_loss,
                "first_bad": first_bad,
                "val_loss": val_loss,
                "early_stop": None if stopper is None else (stopper.best, stopper.waited),
            }
        )
        saved_at[:] = [(step, position)]

    def due() -> bool:
        return save is not None and step % (t.checkpoint_every or 1) == 0

    def closure_for(group: list[torch.Tensor | None]) -> Any:
        def closure() -> torch.Tensor:
            b.optimizer.zero_grad()
            total: torch.Tensor | None = None
            for idx in group:
                if data is None:
                    loss = b.loss_fn()
                else:
                    x, y = (data.x, data.y) if idx is None else (data.x[idx], data.y[idx])
                    loss = b.loss_fn(b.forward(x), y)
                if want_graph:
                    graph_loss[:] = [loss]
                # dividing only when accumulating keeps the post's graph (no DivBackward0)
                (loss if len(group) == 1 else loss / len(group)).backward()
                total = loss.detach() if total is None else total + loss.detach()
            assert total is not None
            # one micro-batch: its loss as it is, no extra ops on every step
            return total if len(group) == 1 else total / len(group)

        return closure

    def log_graph(step: int, loss: torch.Tensor, saved: int) -> None:
        stats = graph_stats(loss) | {"graph/saved_bytes": float(saved)}
        logger.scalars(step, stats)
        if not result.graph:
            result.graph = {
                "tree": graph_tree(loss, b.params),
                "chain": graph_chain(loss, b.params),
                "dot": graph_dot(loss, b.params),
            }
            logger.text(step, "graph/tree", result.graph["chain"] + "\n\n" + result.graph["tree"])

    from tqdm.auto import tqdm

    epoch = 0
    if start is not None:  # continue a checkpoint: the epoch it was taken in, then on
        step, epoch, position = start["step"], start["epoch"], start["position"]
        perm, epoch_sum = start["perm"], start["epoch_sum"]
        batches = [None] if perm is None else list(perm.split(t.batch_size))
        best, last_epoch_loss = start["best"], start["last_epoch_loss"]
        first_bad, val_loss = start["first_bad"], start["val_loss"]
        if stopper is not None and start["early_stop"] is not None:
            stopper.best, stopper.waited = start["early_stop"]
    bar = tqdm(
        total=total_steps, initial=step, disable=None, unit="step", dynamic_ncols=True, leave=False
    )
    pictures.start()  # the Custom Scalars layout, the model graph, the first picture
    with stop_on_signals() as signals:
        if t.epochs == 0:  # one forward and backward pass to look at, no update
            want_graph = True
            with saved_bytes() as saved:
                loss = closure_for([None])()
            log_graph(0, graph_loss[0], saved.total)
            last_epoch_loss = best = loss
            rec.add(0, keys, _log_row(loss, params), {"lr": b.optimizer.param_groups[0]["lr"]})
            result.grad_fns = grad_fns(b.loss_fn, b.params, graph_loss[0])
            _log_histograms(logger, 0, b, tensor_params)  # the elements, not only the norm
        while epoch < t.epochs and result.status == "completed":
            if position == 0:  # a new epoch (a resumed one goes on with its own order)
                batches = _batches(n, t.batch_size, device)
                epoch_sum = zero  # never changed in place: sums make new tensors
            for i in range(position, len(batches), t.accumulate):
                group = batches[i : i + t.accumulate]
                want_graph = step == 0 or step % graph_every == 0
                log_now = step % t.log_every_n_steps == 0 or step == total_steps - 1
                before = insight.snapshot(params) if log_now else None  # for ratio/<name>
                # the first two updates: did micro-batches add up, was the last update zeroed?
                expected = gradcheck.accumulated_grads(b, group) if step < 2 else None
                with saved_bytes() if want_graph else nullcontext() as saved:
                    closure = closure_for(group)
                    if t.grad_clip is None:
                        loss = b.optimizer.step(closure)
                    else:
                        loss = b.optimizer.step(_clipped(closure, params, t.grad_clip))
                unchecked.append((step, loss))  # divergence is looked for at log steps
                if len(unchecked) >= 1024 or len(epoch_losses) >= 1024:  # bounded memory
                    fold_unchecked()
                if group[0] is None:  # full batch: the epoch's loss is this one (0 + loss * 1)
                    epoch_sum = loss
                else:
                    epoch_sum = epoch_sum + loss * (sum(len(g) for g in group) / n)
                if want_graph:
                    log_graph(step, graph_loss[0], saved.total)
                    graph_loss.clear()
                if expected is not None:
                    check = gradcheck.accumulate_error(b, expected)
                    logger.scalars(step, {"grad/accumulate_check": check})
                if log_now:
                    lr = b.optimizer.param_groups[0]["lr"]
                    rec.add(step, keys, _log_row(loss, params), {"lr": lr})
                    rec.add(step, view_keys, insight.row(b, before), {})
                    rec.flush_due()
                    pictures.record()
                    if hist_every and step % hist_every == 0:
                        _log_histograms(logger, step, b, tensor_params)
                    # note: the one host sync between log steps: act on divergence now
                    fold_unchecked(sync=True)
                    if first_bad.item() >= 0:
                        result.status = "diverged"
                        result.diverged_step = int(first_bad.item())
                    if rec.latest:
                        bar.set_postfix(loss=f"{rec.latest['loss/train']:.4g}", refresh=False)
                step += 1
                position = i + t.accumulate
                bar.update(1)
                if result.status != "completed" or signals["stop"]:
                    break
                if due() and position < len(batches):  # at an epoch's end: after its bookkeeping
                    checkpoint()
            else:
                epoch += 1
                pictures.epoch(epoch, step - 1)
                last_epoch_loss = epoch_sum
                epoch_losses.append(epoch_sum)  # folded into best at log steps
                b.scheduler.step()
                if data is not None and data.x_val is not None:
                    val_loss = _validate(b)
                    rec.add(step - 1, ("loss/val",), val_loss.reshape(1), {})
                position = 0
                watched = epoch_sum if val_loss is None else val_loss  # loss/val when split
                if stopper is not None and stopper.stop(watched):
                    result.early_stopped_epoch = epoch
                if due():
                    checkpoint()
                if result.early_stopped_epoch is not None:
                    break
            if signals["stop"] and result.status == "completed":
                result.status, result.signal = "interrupted", signals["signal"]
        if result.status != "diverged":
            checkpoint()  # the end (or the interruption) of the run: resume goes on from here
    bar.close()
    pictures.finish(max(step - 1, 0))
    rec.flush()
    result.steps, result.epochs = step, epoch
    if result.status != "diverged":
        final = last_epoch_loss.item()
        result.final_loss = final if math.isfinite(final) else None
    fold_unchecked()
    best_value = best.item()
    result.best_loss = best_value if math.isfinite(best_value) else None
    if val_loss is not None:
        v = val_loss.item()
        result.val_loss = v if math.isfinite(v) else None
    result.grads = {
        name: p.grad.detach().cpu().tolist() for name, p in b.params.items() if p.grad is not None
    }
    return result


def _log_histograms(logger: Logger, step: int, b: Built, names: list[str]) -> None:
    for name in names:
        p = b.params[name]
        logger.histogram(step, f"param/{name}", p.detach())
        if p.grad is not None:
            logger.histogram(step, f"grad/{name}", p.grad.detach())


@torch.no_grad()
def _log_row(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """loss, each parameter, each gradient, the total gradient norm, as one tensor: a handful
    of ops whatever the number of parameters (this runs at every log step)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    shown = _one_number_each(grads)
    total = torch.linalg.vector_norm(torch.stack(shown))  # signs do not change the squares
    return torch.stack([loss.reshape(()), *_one_number_each(params), *shown, total]).float()


def _one_number_each(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """A one-element tensor's value (its sign kept), or a larger tensor's L2 norm."""
    if all(t.dim() == 0 for t in tensors):  # formula parameters: nothing to compute
        return tensors
    norms = torch._foreach_norm(tensors)  # one kernel launch for all of them
    return [t.reshape(()) if t.numel() == 1 else n for t, n in zip(tensors, norms, strict=True)]


def _clipped(closure: Any, params: list[torch.Tensor], max_norm: float) -> Any:
    def clipped() -> torch.Tensor:
        loss = closure()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return loss

    return clipped


@torch.no_grad()
def _validate(b: Built) -> torch.Tensor:
    assert b.data is not None and b.data.x_val is not None and b.forward is not None
    return b.loss_fn(b.forward(b.data.x_val), b.data.y_val).detach()
