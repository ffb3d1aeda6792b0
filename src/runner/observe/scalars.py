"""A log step's numbers (loss, parameters, gradients, update ratios, lr, accuracy), moved to the
host as one tensor: the log step's one sync."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.linalg import vector_norm

from runner.build import Built
from runner.build.models import evaluating
from runner.log.tensorboard import Logger
from runner.observe import Look, Observer

TINY = 1e-12  # keeps the update ratio finite for a parameter that is exactly zero


def accuracy_fn(b: Built) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The share of points whose predicted class is their label; None for regression."""
    if b.data is None or b.forward is None or b.data.task != "classification":
        return None

    def share_right(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the runner squeezes a width-1 output to (n,): one logit, class 1 when > 0
        guess = (logits > 0).long() if logits.dim() == 1 else logits.argmax(-1)
        return (guess == y).float().mean()

    return share_right


class Scalars(Observer):
    def __init__(self, b: Built, logger: Logger) -> None:
        self.b, self.logger = b, logger
        self.params = list(b.params.values())
        self.accuracy = accuracy_fn(b)
        names = list(b.params)
        self.keys = ["loss/train", *(f"param/{n}" for n in names), *(f"grad/{n}" for n in names)]
        self.keys += ["grad/total_norm", *(f"ratio/{n}" for n in names)]
        if self.accuracy is not None:
            self.keys.append("acc/train")
            if b.data is not None and b.data.x_val is not None:
                self.keys.append("acc/val")
        self.latest: dict[str, float] = {}
        self.wide = None if b.device.type == "mps" else torch.float64  # MPS has no float64

    @torch.no_grad()
    def log(self, look: Look) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # in float64: a float32 sum of squares overflows while the values are still finite
        param_norms = [vector_norm(p, dtype=self.wide) for p in self.params]
        grad_norms = [vector_norm(g, dtype=self.wide) for g in grads]
        row = [look.loss.reshape(()), *map(one_number, self.params, param_norms)]
        total = vector_norm(torch.stack(grad_norms)) if look.clipped is None else look.clipped
        row += [*map(one_number, grads, grad_norms), total.reshape(())]
        parts, keys = [torch.stack(row)], self.keys
        if look.before is not None:  # each update's size beside its parameter's: the ratios
            updates = torch.stack([torch.dist(p, old) for p, old in zip(self.params, look.before)])
            parts.append(updates / torch.stack(param_norms).clamp_min(TINY))
        else:
            keys = [key for key in keys if not key.startswith("ratio/")]
        if self.accuracy is not None:
            parts.append(self.accuracies())
        values = torch.cat(parts).tolist()  # note: the host sync
        lr = self.b.optimizer.param_groups[0].get("lr")  # a user's optimizer may call it else
        self.latest = dict(zip(keys, values)) | ({} if lr is None else {"lr": float(lr)})
        self.logger.scalars(look.step, self.latest)

    def accuracies(self) -> torch.Tensor:
        """On the training points, and on the held-out ones with a split."""
        assert self.accuracy is not None and self.b.data is not None and self.b.forward
        data, forward = self.b.data, self.b.forward
        with evaluating(self.b.model):
            accuracies = [self.accuracy(forward(data.x), data.y)]
            if data.x_val is not None:
                accuracies.append(self.accuracy(forward(data.x_val), data.y_val))
        return torch.stack(accuracies)


def one_number(t: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """A one-element tensor's value (its sign kept), a larger tensor's L2 norm (`norm`)."""
    return t.reshape(()) if t.numel() == 1 else norm
