"""Histograms of tensor parameters and their gradients (`param_hist/<name>`,
`grad_hist/<name>`): at the first log step, at the first one after each multiple of
`histogram_every_n_steps`, and at the last step."""

from __future__ import annotations

from runner.build import Built
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer, due


class Histograms(Observer):
    def __init__(self, b: Built, logger: Logger, every: int | None, last: int) -> None:
        self.logger, self.every, self.last = logger, every, last
        self.tensors = {n: p for n, p in b.params.items() if p.numel() > 1}
        self.previous = -1  # the step last logged

    def log(self, look: Look) -> None:
        if not self.tensors or self.every is None:
            return
        if not due(look.step, self.every, self.previous, self.last):
            return
        self.previous = look.step
        tensors = {}
        for name, p in self.tensors.items():
            tensors[f"param_hist/{name}"] = p.detach()
            if p.grad is not None:
                tensors[f"grad_hist/{name}"] = p.grad.detach()
        self.logger.histograms(look.step, tensors)
