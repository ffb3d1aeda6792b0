"""Accuracy for classification (`acc/train`, `acc/val`): the share of points whose
predicted class is their label, whatever loss trained the model."""

from __future__ import annotations

from collections.abc import Callable

import torch

from runner.build import Built


def accuracy_fn(b: Built) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """None for regression. One logit per point (output width 1) means class 1 when > 0, a
    wider output the class of its largest logit."""
    if b.data is None or b.forward is None or b.data.task != "classification":
        return None

    def share_right(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the runner squeezes a width-1 output to (n,): its dimension says which it is
        guess = (logits > 0).long() if logits.dim() == 1 else logits.argmax(-1)
        return (guess == y).float().mean()

    return share_right
