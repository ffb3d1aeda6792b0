"""Values the loop logs beside loss, parameters and gradients: how big each update was
next to its parameter (`ratio/<name>`) and, for classification losses, the accuracy.

Everything is computed on the device at log steps and returned as one tensor, which the
loop appends to its log row, so these views add no host sync of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from runner.build import losses
from runner.build import Built

TINY = 1e-12  # keeps the ratio finite for a parameter that is exactly zero


def keys(b: Built) -> tuple[str, ...]:
    """The tags `row` fills, in order."""
    out = tuple(f"ratio/{name}" for name in b.params)
    if accuracy_fn(b) is not None:
        assert b.data is not None
        out += ("acc/train",) + (("acc/val",) if b.data.x_val is not None else ())
    return out


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Device copies of the parameters before an update; taken at log steps only."""
    with torch.no_grad():
        return [p.clone() for p in params]


@torch.no_grad()
def row(b: Built, before: list[torch.Tensor] | None) -> torch.Tensor:
    """`ratio/<name>` = ||p_after - p_before|| / ||p_after|| for each parameter (0 without a
    snapshot), then the accuracies; ~1e-3 is the classic healthy update size."""
    params = list(b.params.values())
    if before is None:
        values = [torch.zeros(len(params), device=params[0].device)]
    else:  # a handful of kernel launches, whatever the number of parameters
        updates = torch._foreach_sub(params, before)
        steps, sizes = torch.stack(torch._foreach_norm([*updates, *params])).float().chunk(2)
        values = [steps / sizes.clamp_min(TINY)]
    if accuracy_fn(b) is not None:
        values.append(accuracy(b))
    return torch.cat(values)


@torch.no_grad()
def accuracy(b: Built) -> torch.Tensor:
    """`acc/train` (and `acc/val` with a split) for a classification loss."""
    acc = accuracy_fn(b)
    assert acc is not None and b.data is not None and b.forward is not None
    values = [acc(b.forward(b.data.x), b.data.y).reshape(1)]
    if b.data.x_val is not None:
        values.append(acc(b.forward(b.data.x_val), b.data.y_val).reshape(1))
    return torch.cat(values)


def accuracy_fn(b: Built) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The share classified right, for `bce` (a logit > 0 means class 1) and `cross_entropy`
    (the largest logit's class); None for other losses."""
    if b.data is None or b.forward is None:
        return None
    target = getattr(b.loss_fn, "func", b.loss_fn)
    if target is F.binary_cross_entropy_with_logits:
        return lambda logit, y: ((logit > 0) == (y > 0.5)).float().mean()
    if target in (losses.cross_entropy, F.cross_entropy):
        return lambda logits, y: (logits.argmax(-1) == y.long()).float().mean()
    return None
