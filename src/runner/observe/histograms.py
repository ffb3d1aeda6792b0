"""Histograms of tensor parameters and gradients (`param_hist/<name>`, `grad_hist/<name>`)."""

from __future__ import annotations

from runner.build import Built
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer, due
from runner.train.state import State


class Histograms(Observer):
    def __init__(self, b: Built, logger: Logger, every: int | None, last: int) -> None:
        self.logger, self.last = logger, last
        self.tensors = {n: p for n, p in b.params.items() if p.numel() > 1}
        self.every = every if self.tensors else None  # None: nothing to show
        self.previous = -1  # the step last logged

    def log(self, look: Look) -> None:
        if self.every is not None and due(look, self.every, self.previous, self.last):
            self.write(look.step)

    def end(self, state: State) -> None:
        """A run stopped early right after a log step (an early stop at an epoch's end, a
        signal) was not known to end there: its last step, whose values these still are."""
        if self.every is not None and state.step > 0 and self.previous != state.step - 1:
            self.write(state.step - 1)

    def write(self, step: int) -> None:
        self.previous = step
        tensors = {}
        for name, p in self.tensors.items():
            tensors[f"param_hist/{name}"] = p.detach()
            if p.grad is not None:
                tensors[f"grad_hist/{name}"] = p.grad.detach()
        self.logger.histograms(step, tensors)
