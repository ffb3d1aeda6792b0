"""The post's manual gradient-descent update as a tiny optimizer, and a constant schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class GD:
    """The post's update: `p -= lr * p.grad` under `no_grad`; `zero_grad` zeroes in place.
    Not a `torch.optim.Optimizer`, whose constructor imports `torch._dynamo`."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1) -> None:
        # always this one group; the list is the torch shape that schedulers and logging read
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), "lr": lr}]

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else closure()
        group = self.param_groups[0]
        with torch.no_grad():
            for p in group["params"]:
                if p.grad is not None:
                    p -= group["lr"] * p.grad
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        """The post zeroes in place (`w.grad.zero_()`), so gradients are visibly reset."""
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:  # none before the first backward
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """As a torch optimizer's: no per-parameter state, the group's settings."""
        group = self.param_groups[0]
        ids = list(range(len(group["params"])))
        return {"state": {}, "param_groups": [{"lr": group["lr"], "params": ids}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        (saved,) = state["param_groups"]
        self.param_groups[0]["lr"] = saved["lr"]


class Constant:
    """`scheduler=none`: a constant lr (a LambdaLR would need a `torch.optim.Optimizer`)."""

    def __init__(self, optimizer: Any) -> None:  # taken as torch's are, and left alone
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = state["last_epoch"]
