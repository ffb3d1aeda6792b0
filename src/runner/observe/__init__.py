"""Read-only views of training, shown each log step, epoch end and the end. An observer never
changes the model, the optimizer or the data; the two that end a run early (divergence, early
stop) do it by setting `state.status`, which the loop reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.train.state import State


@dataclass
class Look:
    """What a log step hands the observers."""

    state: State  # already advanced: `state.step - 1` is the step just taken
    loss: torch.Tensor  # that step's loss, on the device
    losses: torch.Tensor  # 1-D: the loss of every step since the last log step, this one last
    before: list[torch.Tensor]  # the parameters before the step (for update sizes)
    root: torch.Tensor | None  # the step's loss with its autograd graph (the last micro-batch)
    saved_bytes: int  # what autograd saved for backward in that step

    @property
    def step(self) -> int:
        return self.state.step - 1


class Observer:
    """The three moments the loop shows an observer; each one overrides those it needs."""

    def log(self, look: Look) -> None:
        """A log step, right after its update."""

    def epoch(self, state: State) -> None:
        """An epoch's end."""

    def end(self, state: State) -> None:
        """The run's end: after the last step, or the one that stopped it."""


def due(step: int, every: int, previous: int, last: int) -> bool:
    """Whether a costlier kind of logging is due at this log step: at the first (`previous`
    -1, nothing logged yet), once a multiple of `every` was reached since `previous`, and at
    the last step. Log steps need not fall on multiples of `every`."""
    return previous < 0 or step // every > previous // every or step == last
