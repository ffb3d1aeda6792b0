"""Losses: functions of (pred, y), and formula losses that may own parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.build.models import add_parameters, parse_formula
from runner.config.check import ConfigError, check_choice
from runner.config.formula import FormulaError


def mse(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """As the post writes it: the graph shows Mean, Pow and Sub, not one fused MseLossBackward0."""
    return ((input - target) ** 2).mean()


def mae(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (input - target).abs().mean()


def cross_entropy(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class logits (n, classes) against class indices; `.long()` lets float labels in too."""
    return F.cross_entropy(input, target.long())


def bce(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One logit per point against class indices 0 and 1, which it needs as floats."""
    return F.binary_cross_entropy_with_logits(input, target.to(input.dtype))


class Expression(nn.Module):
    """A loss formula over `pred`, `y` and its own parameters; with no dataset, the objective."""

    def __init__(
        self,
        formula: str,
        params: Mapping[str, Any] | None = None,
        reduction: str | None = None,
        *,
        objective_only: bool = False,
    ) -> None:
        super().__init__()
        check_choice("loss.reduction", reduction, ("sum", "mean", None))
        self.formula = parse_formula("loss", formula)
        self.reduction = reduction
        self.objective_only = objective_only
        data_names = () if objective_only else ("pred", "y")
        add_parameters(self, "loss", self.formula, data_names.__contains__, params or {})
        unused = [n for n in data_names if n not in self.formula.names]
        if unused:  # a typo (`Y`) would be a parameter, and the loss would train on nothing
            raise ConfigError(
                f"loss.formula={formula!r} does not use {' or '.join(unused)}: a loss over data "
                "compares pred with y, such as mean((pred - y)**2); with no data use "
                "dataset=none and model=none"
            )
        if objective_only and not self.formula.names:
            raise ConfigError(f"loss.formula={formula!r} has no parameters to learn")

    def forward(
        self, input: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        env: dict[str, Any] = dict(self.named_parameters())
        if not self.objective_only:
            env.update(pred=input, y=target)
        try:
            out = self.formula(env)
        except FormulaError as e:
            raise ConfigError(f"loss.formula: {e}") from e
        out = torch.as_tensor(out)
        if self.reduction is None and out.dim() > 0:
            on = "" if target is None else f" on {len(target)} points"
            raise ConfigError(
                f"loss.formula={self.formula.source!r} gives a tensor of shape "
                f"{tuple(out.shape)}{on}, and .backward() needs a scalar; set "
                "loss.reduction=sum or loss.reduction=mean, or wrap it in sum(...) or mean(...)"
            )
        if self.reduction is not None:  # also of a scalar, as its printout and graph say
            out = out.sum() if self.reduction == "sum" else out.mean()
        return out
