"""The post's manual gradient-descent update as a tiny optimizer, and a constant schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class GD(torch.optim.Optimizer):
    """`p -= lr * p.grad` under `no_grad`, then `p.grad.zero_()`: the post's loop, verbatim.

    Being a `torch.optim.Optimizer` lets schedulers, checkpoints and clipping treat it like
    any other; the arithmetic is kept literal so the post's numbers come out to the last digit.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr})

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else closure()
        with torch.no_grad():
            for group in self.param_groups:
                lr = group["lr"]
                for p in group["params"]:
                    if p.grad is not None:
                        p -= lr * p.grad
        return loss

    # torch.optim wraps every subclass's `step` in a profiler label and hook calls (~30 µs a
    # step here, more than the update itself); marked as wrapped, the post's step stays plain.
    step.hooked = True  # type: ignore[attr-defined]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # torch wraps this in a lazy `torch._dynamo` import (~3 s on a small CPU); the post's
        # update never needs dynamo, so call the plain function underneath when there is one.
        plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
        if plain is None:
            super().add_param_group(param_group)
        else:
            plain(self, param_group)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """The post zeroes in place (`w.grad.zero_()`), so gradients are visibly reset."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


class Constant:
    """`scheduler=none`: optimizer.lr for the whole run, with the scheduler methods the loop
    and checkpoints call (a LambdaLR would cost a torch._dynamo import at start-up)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
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
