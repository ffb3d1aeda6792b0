"""A teaching example: a model whose hand-written backward is wrong on purpose.

    python -m runner experiment=linear_fit model=broken_grad trainer.check_grads=true

`BrokenLine` computes the post's `y = w * x + b`, but the multiplication is a custom
`torch.autograd.Function` whose backward mixes up its inputs: the derivative of `w * x`
with respect to `w` is `x`, and this backward returns `w`. Autograd trusts a custom
backward completely, so training runs without an error and quietly learns the wrong
line. `trainer.check_grads=true` compares autograd's gradients with central finite
differences before training and stops the run with a message that names `w`.
"""

from __future__ import annotations

import torch
from torch import nn


class WrongMul(torch.autograd.Function):
    """`w * x` with a wrong backward (the classic slip of a hand-written derivative)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, w: torch.Tensor, x: torch.Tensor):
        ctx.save_for_backward(w, x)
        return w * x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        w, x = ctx.saved_tensors  # type: ignore[attr-defined]
        # correct: d(w*x)/dw = x, so (grad * x).sum(); this uses w instead
        grad_w = (grad * w).sum().reshape(w.shape)
        return grad_w, grad * w


class BrokenLine(nn.Module):
    """y = w * x + b with the multiplication above; w and b start at 0.0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return WrongMul.apply(self.w, x) + self.b
