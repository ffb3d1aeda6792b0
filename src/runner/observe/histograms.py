"""Histograms of tensor parameters and their gradients (`param_hist/<name>`,
`grad_hist/<name>`), every `histogram_every_n_steps` log step and at the last step."""

from __future__ import annotations

from runner.build import Built
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer


class Histograms(Observer):
    def __init__(self, b: Built, logger: Logger, every: int | None, last: int) -> None:
        self.logger, self.every, self.last = logger, every, last
        self.tensors = {n: p for n, p in b.params.items() if p.numel() > 1}

    def log(self, look: Look) -> None:
        if self.every is None or (look.step % self.every != 0 and look.step != self.last):
            return
        for name, p in self.tensors.items():
            self.logger.histogram(look.step, f"param_hist/{name}", p.detach())
            if p.grad is not None:
                self.logger.histogram(look.step, f"grad_hist/{name}", p.grad.detach())
