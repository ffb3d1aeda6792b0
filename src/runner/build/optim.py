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
        self._lr_cache: tuple[tuple[float, torch.dtype, torch.device], torch.Tensor] | None = None

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else closure()
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                lr = self._lr_tensor(group["lr"], params)
                if lr is None:
                    for p in params:
                        p -= group["lr"] * p.grad
                else:  # the same multiply and subtract per tensor, so the same bits
                    torch._foreach_sub_(params, torch._foreach_mul([p.grad for p in params], lr))
        return loss

    def _lr_tensor(self, lr: float, params: list[torch.Tensor]) -> torch.Tensor | None:
        """lr as a 0-d tensor of the parameters' dtype, cached: multiplying by a Python
        number costs a tensor made for it each time (~2.5 µs). float32 and float64 only,
        where `lr * g` already rounds lr to the dtype first; None: one tensor at a time."""
        if not params:
            return None
        dtype, device = params[0].dtype, params[0].device
        if dtype not in (torch.float32, torch.float64):
            return None
        if any(p.dtype != dtype or p.device != device for p in params):
            return None
        key = (lr, dtype, device)
        if self._lr_cache is None or self._lr_cache[0] != key:
            self._lr_cache = (key, torch.full((), lr, dtype=dtype, device=device))  # no copy
        return self._lr_cache[1]

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
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        if grads:  # none before the first backward
            torch._foreach_zero_(grads)  # one call for all of them


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
