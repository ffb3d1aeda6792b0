"""Read-only views of training; the two that end a run early only set `state.status`."""

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
    before: list[torch.Tensor] | None  # the parameters before the step (for update sizes)
    root: torch.Tensor | None  # the step's loss with its autograd graph (the last micro-batch)
    saved_bytes: int | None  # what autograd saved for backward in that graph's forward
    clipped: torch.Tensor | None = None  # trainer.grad_clip: the total norm before clipping
    final: bool = False  # the last step of a run stopped early: costlier logging is due

    @property
    def step(self) -> int:
        return self.state.step - 1


class Observer:
    """The loop calls `log` after a log step's update, `epoch` at an epoch's end, `end` last."""

    def log(self, look: Look) -> None: ...
    def epoch(self, state: State) -> None: ...
    def end(self, state: State) -> None: ...


def due(look: Look, every: int, previous: int, last: int) -> bool:
    """Whether costlier logging is due: at the first log step (`previous` -1), the first once a
    multiple of `every` is passed (log steps need not fall on one), and the last step."""
    step = look.step
    return previous < 0 or step // every > previous // every or step == last or look.final
