"""The post's manual gradient-descent update as a tiny optimizer, and a constant schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class GD:
    """`p -= lr * p.grad` under `no_grad`, then `p.grad.zero_()`: the post's loop, verbatim.

    A small object with the optimizer methods the loop, clipping and checkpoints call, not a
    `torch.optim.Optimizer`: constructing one imports `torch._dynamo`, which the post's
    update never needs. torch's learning-rate schedulers take only a `torch.optim.Optimizer`,
    so with one the update runs as `torch.optim.SGD` without momentum (`as_torch`): the same
    multiply and subtract, so the same numbers.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), "lr": lr}]

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p -= group["lr"] * p.grad
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        """The post zeroes in place (`w.grad.zero_()`), so gradients are visibly reset."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:  # none before the first backward
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """As a torch optimizer's: no per-parameter state, the groups' settings."""
        groups, first = [], 0
        for group in self.param_groups:
            ids = list(range(first, first + len(group["params"])))
            groups.append({"lr": group["lr"], "params": ids})
            first += len(ids)
        return {"state": {}, "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group, saved in zip(self.param_groups, state["param_groups"], strict=True):
            group["lr"] = saved["lr"]

    def as_torch(self) -> torch.optim.SGD:
        group = self.param_groups[0]
        return torch.optim.SGD(group["params"], lr=group["lr"])


class Constant:
    """`scheduler=none`: optimizer.lr for the whole run, with the scheduler methods the loop
    and checkpoints call (a LambdaLR would need a `torch.optim.Optimizer`)."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = state["last_epoch"]
