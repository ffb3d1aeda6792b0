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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from runner.observe import gradcheck

from runner.observe import insight
from runner.backward import backward
from runner.build import Built
from runner.config.check import EarlyStop
from runner.observe.figures import Figures
from runner.observe.graph import graph_chain, graph_dot, graph_stats, graph_tree, saved_bytes
from runner.log.tensorboard import Logger
from runner.observe.walkthrough import grad_fns


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

    def __init__(
        self,
        logger: Logger,
        every_s: float = 1.0,
        derive: Callable[[dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.derive = derive  # values worked out on the host from a row, once it is there
        self.pending: list[tuple[int, tuple[str, ...], torch.Tensor | None, dict[str, float]]] = []
        self.last_flush = time.monotonic()
        self.latest: dict[str, float] = {}

    def add(
        self,
        step: int,
        keys: tuple[str, ...],
        values: torch.Tensor | None,
        host: Mapping[str, float],
    ) -> None:
        """`keys` name the elements of `values` (None: host numbers only)."""
        self.pending.append((step, keys, None if values is None else values.detach(), dict(host)))

    def flush_due(self) -> None:
        """Called at log steps only, so a flush never adds a sync anywhere else."""
        if time.monotonic() - self.last_flush > self.every_s:
            self.flush()

    def flush(self) -> None:
        """Everything pending to the host in one move, then one `scalars` call (one Event)
        per step, whatever was added for that step."""
        if self.pending:
            tensors = [v.float().reshape(-1) for _, _, v, _ in self.pending if v is not None]
            flat = torch.cat(tensors).cpu().tolist() if tensors else []
            start = 0
            steps: dict[int, dict[str, float]] = {}
            for step, keys, _, host in self.pending:
                row, start = flat[start : start + len(keys)], start + len(keys)
                values = dict(zip(keys, row, strict=True))
                if self.derive is not None:
                    values = self.derive(values)
                steps.setdefault(step, {}).update(values | host)
            for step, values in steps.items():
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
        return FULL_BATCH
    perm = torch.randperm(n, device=device)
    return list(perm.split(batch_size))


FULL_BATCH: list[torch.Tensor | None] = [None]


def train(
    b: Built,
    save: Callable[[dict[str, Any]], None] | None = None,
    start: Mapping[str, Any] | None = None,
) -> Result:
    """Run the loop; with `save`, checkpoint every trainer.checkpoint_every steps and at the
    end; with `start` (a checkpoint's loop state), continue exactly where it was written."""
    return Loop(b, save, start).run()


class Loop:
    """One run's loop and everything it carries from step to step.

    `run` is the outline; `_epoch` holds the per-step path, kept lean because on a small
    problem (the post's, ~0.2 ms a step) every Python line shows; logging, divergence and
    checkpoints happen at their cadences in methods of their own.
    """

    def __init__(
        self,
        b: Built,
        save: Callable[[dict[str, Any]], None] | None,
        start: Mapping[str, Any] | None,
    ) -> None:
        self.b, self.save = b, save
        t = self.t = b.checked.trainer
        cadence = b.checked.cadence
        self.data, self.device, self.logger = b.data, b.device, b.logger
        self.params = list(b.params.values())
        self.graph_every = cadence.graph_every_n_steps or t.log_every_n_steps
        self.hist_every = cadence.histogram_every_n_steps
        self.tensor_params = [n for n, p in b.params.items() if p.numel() > 1]
        names = list(b.params)
        self.keys = ("loss/train", *(f"param/{n}" for n in names), *(f"grad/{n}" for n in names))
        self.keys += ("grad/total_norm",)
        self.view_keys = insight.keys(b)  # ratio/<name>, and acc/* for classification losses
        # formula parameters (one number each): a log step stacks the numbers as they are,
        # the values before the update included, and the host works out the total gradient
        # norm and the update ratios; ~15 small device ops fewer at every log step
        self.on_host = all(p.dim() == 0 for p in self.params)
        self.host_keys = (*self.keys[:-1], *(f"before/{n}" for n in names))
        self.accuracy_keys = tuple(k for k in self.view_keys if k.startswith("acc/"))
        self.pictures = Figures(b, cadence.figure_every_n_epochs)

        self.n = b.data.n if b.data is not None else 1
        batches_per_epoch = 1 if t.batch_size is None else math.ceil(self.n / t.batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / t.accumulate)
        self.total_steps = max(t.epochs * steps_per_epoch, 1)
        self.checkpoint_every = (t.checkpoint_every or 1) if save is not None else None
        self.update = self._closure if t.grad_clip is None else _clipped(self._closure, self)

        device = self.device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet in first_bad
        self.epoch_losses: list[torch.Tensor] = []  # not yet in best
        # one full batch a step: each step's loss is its epoch's, so best comes from those
        self.full_batch = t.accumulate == 1 and (t.batch_size is None or t.batch_size >= self.n)
        self.best = torch.full((), math.inf, device=device)
        self.last_epoch_loss = torch.full((), math.nan, device=device)
        self.val_loss: torch.Tensor | None = None
        self.rec = Recorder(self.logger, derive=_derived_on_host(names) if self.on_host else None)
        self.result = Result("completed", 0, 0, None, None)
        self.stopper = Patience(EarlyStop(**t.early_stop)) if t.early_stop is not None else None
        self.signals: dict[str, Any] = {"stop": False, "signal": None}
        self.want_graph = False  # the closure keeps the loss of steps whose graph is walked
        self.graph_loss: torch.Tensor | None = None
        self.saved_at: tuple[int, int] | None = None  # (step, position) of the last checkpoint
        # where the loop is: the step, the epoch, and inside it the next batch group, this
        # epoch's order and its running loss
        self.zero = torch.zeros((), device=device)
        self.step, self.epoch, self.position = 0, 0, 0
        self.batches, self.epoch_sum = FULL_BATCH, self.zero
        self.group: list[torch.Tensor | None] = FULL_BATCH
        if start is not None:
            self._resume(start)

    def _resume(self, start: Mapping[str, Any]) -> None:
        """Continue a checkpoint: the epoch it was taken in, then on."""
        self.step, self.epoch, self.position = start["step"], start["epoch"], start["position"]
        perm, self.epoch_sum = start["perm"], start["epoch_sum"]
        self.batches = FULL_BATCH if perm is None else list(perm.split(self.t.batch_size))
        self.best, self.last_epoch_loss = start["best"], start["last_epoch_loss"]
        self.first_bad, self.val_loss = start["first_bad"], start["val_loss"]
        if self.stopper is not None and start["early_stop"] is not None:
            self.stopper.best, self.stopper.waited = start["early_stop"]

    def run(self) -> Result:
        from tqdm.auto import tqdm

        t, result = self.t, self.result
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=None,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        self.pictures.start()  # the Custom Scalars layout, the model graph, the first picture
        with stop_on_signals() as self.signals:
            if t.epochs == 0:  # one forward and backward pass to look at, no update
                self._look()
            while self.epoch < t.epochs and result.status == "completed":
                if self.position == 0:  # a new epoch (a resumed one goes on with its own order)
                    self.batches = _batches(self.n, t.batch_size, self.device)
                    self.epoch_sum = self.zero  # never changed in place: sums make new tensors
                if self._epoch():
                    self._end_epoch()
                    if result.early_stopped_epoch is not None:
                        break
                if self.signals["stop"] and result.status == "completed":
                    result.status, result.signal = "interrupted", self.signals["signal"]
            if result.status != "diverged":
                self.checkpoint()  # the end (or the interruption): resume goes on from here
        self.bar.close()
        self.pictures.finish(max(self.step - 1, 0))
        self.rec.flush()
        return self._outcome()

    def _look(self) -> None:
        """`trainer.epochs=0`: the forward and backward pass of the post's sections."""
        b = self.b
        self.want_graph = True
        with saved_bytes() as saved:
            loss = self._closure()
        assert self.graph_loss is not None
        self._log_graph(0, self.graph_loss, saved.total)
        self.last_epoch_loss = self.best = loss
        lr = b.optimizer.param_groups[0]["lr"]
        self.rec.add(0, self.keys, _log_row(loss, self.params), {"lr": lr})
        self.result.grad_fns = grad_fns(b.loss_fn, b.params, self.graph_loss)
        _log_histograms(self.logger, 0, b, self.tensor_params)  # the elements, not the norm

    def _epoch(self) -> bool:
        """The updates of one epoch from `position` on; False when it stopped part-way."""
        t, batches, step_fn = self.t, self.batches, self.b.optimizer.step
        every, graph_every, last = t.log_every_n_steps, self.graph_every, self.total_steps - 1
        accumulate, unchecked = t.accumulate, self.unchecked
        for i in range(self.position, len(batches), accumulate):
            group = self.group = batches[i : i + accumulate]
            step = self.step
            log_now = step % every == 0 or step == last
            before = insight.snapshot(self.params) if log_now else None  # for ratio/<name>
            # the first two updates: did micro-batches add up, was the last update zeroed?
            expected = gradcheck.accumulated_grads(self.b, group) if step < 2 else None
            if step % graph_every == 0:
                self.want_graph = True
                with saved_bytes() as saved:
                    loss = step_fn(self.update)
                assert self.graph_loss is not None
                self._log_graph(step, self.graph_loss, saved.total)
                self.want_graph, self.graph_loss = False, None
            else:
                loss = step_fn(self.update)
            unchecked.append((step, loss))  # divergence is looked for at log steps
            if group[0] is None:  # full batch: the epoch's loss is this one (0 + loss * 1)
                self.epoch_sum = loss
            else:
                self.epoch_sum = self.epoch_sum + loss * (sum(len(g) for g in group) / self.n)
            if expected is not None:
                check = gradcheck.accumulate_error(self.b, expected)
                self.logger.scalars(step, {"grad/accumulate_check": check})
            if log_now:
                self._log(step, loss, before)
            elif len(unchecked) >= 1024:  # bounded memory between distant log steps
                self._fold_unchecked()
            self.step = step + 1
            self.position = i + accumulate
            self.bar.update(1)
            if self.result.status != "completed" or self.signals["stop"]:
                return False
            if self._checkpoint_due() and self.position < len(batches):
                self.checkpoint()  # at an epoch's end: after its bookkeeping, below
        return True

    def _end_epoch(self) -> None:
        b, result = self.b, self.result
        self.epoch += 1
        self.pictures.epoch(self.epoch, self.step - 1)
        self.last_epoch_loss = self.epoch_sum
        if not self.full_batch:
            self.epoch_losses.append(self.epoch_sum)  # folded into best at log steps
        b.scheduler.step()
        if self.data is not None and self.data.x_val is not None:
            self.val_loss = _validate(b)
            self.rec.add(self.step - 1, ("loss/val",), self.val_loss.reshape(1), {})
        self.position = 0
        watched = self.epoch_sum if self.val_loss is None else self.val_loss  # loss/val if split
        if self.stopper is not None and self.stopper.stop(watched):
            result.early_stopped_epoch = self.epoch
        if self._checkpoint_due():
            self.checkpoint()

    def _closure(self) -> torch.Tensor:
        """Zero the gradients, then forward and backward over the current batch group."""
        b, data, group = self.b, self.data, self.group
        b.optimizer.zero_grad()
        total: torch.Tensor | None = None
        for idx in group:
            if data is None:
                loss = b.loss_fn()
            else:
                x, y = (data.x, data.y) if idx is None else (data.x[idx], data.y[idx])
                loss = b.loss_fn(b.forward(x), y)
            if self.want_graph:
                self.graph_loss = loss
            # dividing only when accumulating keeps the post's graph (no DivBackward0)
            backward(loss if len(group) == 1 else loss / len(group))
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        # one micro-batch: its loss as it is, no extra ops on every step
        return total if len(group) == 1 else total / len(group)

    def _log(self, step: int, loss: torch.Tensor, before: list[torch.Tensor] | None) -> None:
        """A log step: the row of values, the views, histograms, and the divergence check."""
        b, rec, result = self.b, self.rec, self.result
        lr = {"lr": b.optimizer.param_groups[0]["lr"]}
        if self.on_host and before is not None:
            rec.add(step, self.host_keys, _host_row(loss, self.params, before), lr)
            if self.accuracy_keys:
                rec.add(step, self.accuracy_keys, insight.accuracy(b), {})
        else:
            rec.add(step, self.keys, _log_row(loss, self.params), lr)
            rec.add(step, self.view_keys, insight.row(b, before), {})
        rec.flush_due()
        self.pictures.record()
        if self.hist_every and step % self.hist_every == 0:
            _log_histograms(self.logger, step, b, self.tensor_params)
        # note: the one host sync between log steps: act on divergence now
        self._fold_unchecked(sync=True)
        if self.first_bad.item() >= 0:
            result.status = "diverged"
            result.diverged_step = int(self.first_bad.item())
        if rec.latest and not self.bar.disable:
            self.bar.set_postfix(loss=f"{rec.latest['loss/train']:.4g}", refresh=False)

    def _log_graph(self, step: int, loss: torch.Tensor, saved: int) -> None:
        stats = graph_stats(loss) | {"graph/saved_bytes": float(saved)}
        self.rec.add(step, (), None, stats)  # written with the step's other values
        result = self.result
        if not result.graph:
            result.graph = {
                "tree": graph_tree(loss, self.b.params),
                "chain": graph_chain(loss, self.b.params),
                "dot": graph_dot(loss, self.b.params),
            }
            text = result.graph["chain"] + "\n\n" + result.graph["tree"]
            self.logger.text(step, "graph/tree", text)

    def _fold_unchecked(self, sync: bool = False) -> None:
        """Fold the step and epoch losses kept since the last fold into first_bad and best:
        a few ops per log step instead of a few ops on every step. With `sync` (log steps,
        which sync anyway), all-finite losses, the usual case, are found out on the host."""
        unchecked, epoch_losses = self.unchecked, self.epoch_losses
        if unchecked:
            losses = torch.stack([loss for _, loss in unchecked])
            finite = sync and bool(torch.isfinite(losses).all())
            if not finite:
                bad = ~torch.isfinite(losses)
                first = unchecked[0][0] + bad.to(torch.uint8).argmax()  # the first True
                found = (self.first_bad < 0) & bad.any()
                self.first_bad = torch.where(found, first, self.first_bad)
            if self.full_batch:  # each step's loss is its epoch's: no epoch list to stack
                self.best = _fold_best(self.best, losses, finite)
            unchecked.clear()
        if len(epoch_losses) == 1:
            self.best = torch.fmin(self.best, epoch_losses[0])
        elif epoch_losses:
            self.best = _fold_best(self.best, torch.stack(epoch_losses), finite=False)
        epoch_losses.clear()

    def _checkpoint_due(self) -> bool:
        return self.checkpoint_every is not None and self.step % self.checkpoint_every == 0

    def checkpoint(self) -> None:
        """Save the loop's state (all of it, so a resumed run is bit-identical) with the
        logs up to here flushed; a diverged state is never saved over the last good one."""
        self._fold_unchecked()
        here = (self.step, self.position)
        if self.save is None or self.saved_at == here or self.first_bad.item() >= 0:
            return
        self.rec.flush()
        self.logger.flush()
        perm = None if self.batches[0] is None else torch.cat(self.batches)
        stopper = self.stopper
        self.save(
            {
                "step": self.step,
                "epoch": self.epoch,
                "position": self.position,
                "perm": perm,
                "epoch_sum": self.epoch_sum,
                "best": self.best,
                "last_epoch_loss": self.last_epoch_loss,
                "first_bad": self.first_bad,
                "val_loss": self.val_loss,
                "early_stop": None if stopper is None else (stopper.best, stopper.waited),
            }
        )
        self.saved_at = here

    def _outcome(self) -> Result:
        """The run's numbers, moved to the host once, at the end."""
        result = self.result
        result.steps, result.epochs = self.step, self.epoch
        if result.status != "diverged":
            final = self.last_epoch_loss.item()
            result.final_loss = final if math.isfinite(final) else None
        self._fold_unchecked()
        best = self.best.item()
        result.best_loss = best if math.isfinite(best) else None
        if self.val_loss is not None:
            v = self.val_loss.item()
            result.val_loss = v if math.isfinite(v) else None
        result.grads = {
            name: p.grad.detach().cpu().tolist()
            for name, p in self.b.params.items()
            if p.grad is not None
        }
        return result


def _fold_best(best: torch.Tensor, losses: torch.Tensor, finite: bool) -> torch.Tensor:
    """As fmin one epoch at a time: NaN never wins, +-inf kept (`finite`: known all finite)."""
    if not finite:
        losses = losses.nan_to_num(math.inf, math.inf, -math.inf)
    return torch.fmin(best, losses.min())


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


@torch.no_grad()
def _host_row(
    loss: torch.Tensor, params: list[torch.Tensor], before: list[torch.Tensor]
) -> torch.Tensor:
    """loss, each parameter, each gradient, each parameter before the update: one op."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return torch.stack([loss.reshape(()), *params, *grads, *before]).float()


def _derived_on_host(names: list[str]) -> Callable[[dict[str, float]], dict[str, float]]:
    """What `_log_row` and `insight.row` compute on the device, from a `_host_row`'s numbers:
    `grad/total_norm`, and `ratio/<name>` = |after - before| / |after|."""

    def derive(values: dict[str, float]) -> dict[str, float]:
        if f"before/{names[0]}" not in values:  # another row: loss/val, acc/*, epochs=0
            return values
        out = {k: v for k, v in values.items() if not k.startswith("before/")}
        out["grad/total_norm"] = math.sqrt(sum(values[f"grad/{n}"] ** 2 for n in names))
        for n in names:
            after = values[f"param/{n}"]
            out[f"ratio/{n}"] = abs(after - values[f"before/{n}"]) / max(abs(after), insight.TINY)
        return out

    return derive


def _one_number_each(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """A one-element tensor's value (its sign kept), or a larger tensor's L2 norm."""
    if all(t.dim() == 0 for t in tensors):  # formula parameters: nothing to compute
        return tensors
    norms = torch._foreach_norm(tensors)  # one kernel launch for all of them
    return [t.reshape(()) if t.numel() == 1 else n for t, n in zip(tensors, norms, strict=True)]


def _clipped(closure: Callable[[], torch.Tensor], loop: Loop) -> Callable[[], torch.Tensor]:
    params, max_norm = loop.params, loop.t.grad_clip

    def clipped() -> torch.Tensor:
        loss = closure()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return loss

    return clipped


@torch.no_grad()
def _validate(b: Built) -> torch.Tensor:
    assert b.data is not None and b.data.x_val is not None and b.forward is not None
    return b.loss_fn(b.forward(b.data.x_val), b.data.y_val).detach()
