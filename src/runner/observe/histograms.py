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
        if not self.tensors or self.every is None:
            return
        if look.step % self.every != 0 and look.step != self.last:
            return
        tensors = {}
        for name, p in self.tensors.items():
            tensors[f"param_hist/{name}"] = p.detach()
            if p.grad is not None:
                tensors[f"grad_hist/{name}"] = p.grad.detach()
        self.logger.histograms(look.step, tensors)
