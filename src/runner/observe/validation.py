"""At each epoch's end: the loss on the held-out split (`loss/val`), and `trainer.early_stop`,
which ends the run once the watched loss has gone `patience` epochs without improving on its
best by more than `min_delta` (on `loss/val`, or the epoch's training loss without a split)."""

from __future__ import annotations

import math

import torch

from runner.build import Built
from runner.build.models import evaluating
from runner.config.check import EarlyStop
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer
from runner.train.state import State


class Validation(Observer):
    """The validation losses wait on the device and are written at the next log step, so an
    epoch's end costs no host sync (early stopping needs one: it must decide now)."""

    def __init__(self, b: Built, logger: Logger, early_stop: EarlyStop | None) -> None:
        self.b, self.logger, self.early_stop = b, logger, early_stop
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss/val)

    def log(self, look: Look) -> None:
        self.flush()

    def flush(self) -> None:
        if self.pending:
            values = torch.stack([loss for _, loss in self.pending]).tolist()  # the sync
            for (step, _), value in zip(self.pending, values):
                self.logger.scalars(step, {"loss/val": value})
            self.pending = []

    def epoch(self, state: State) -> None:
        data = self.b.data
        if data is not None and data.x_val is not None and self.b.forward is not None:
            with evaluating(self.b.model):
                state.val_loss = self.b.loss_fn(self.b.forward(data.x_val), data.y_val)
            self.pending.append((state.step - 1, state.val_loss.float()))
        if (stop := self.early_stop) is None or state.status != "running":
            return
        watched = state.epoch_loss if state.val_loss is None else state.val_loss
        value = math.inf if watched is None else float(watched)
        if math.isnan(value) or (value == math.inf and watched is not None):
            return  # a diverged loss is no plateau: Divergence stops the run at a log step
        best, waited = state.early_stop or (math.inf, 0)
        best, waited = (value, 0) if value < best - stop.min_delta else (best, waited + 1)
        state.early_stop = (best, waited)
        if waited >= stop.patience and state.epoch < self.b.checked.trainer.epochs:  # not the end
            state.early_stopped_epoch = state.epoch
            state.status = "completed"

    def end(self, state: State) -> None:
        self.flush()  # what came after the last log step
