"""An example of your own model: a truncated Fourier series with learnable coefficients.

A config points at it by dotted path, and the runner does the rest (it is a plain
`torch.nn.Module`; the runner feeds it inputs of shape (n, 1) and squeezes its (n, 1)
output to (n,)):

    # configs/model/fourier.yaml
    _target_: experiments.fourier.Fourier
    terms: 3

    python -m runner experiment=sine_mlp model=fourier

Run from the project root so that `experiments` is importable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Fourier(nn.Module):
    """y = c + sum_k a_k sin(2 pi k x / period) + b_k cos(2 pi k x / period)."""

    def __init__(self, terms: int = 3, period: float = 1.0) -> None:
        super().__init__()
        if terms < 1:
            raise ValueError(f"terms must be at least 1, got {terms}")
        self.register_buffer("k", torch.arange(1, terms + 1, dtype=torch.float32))
        self.period = period
        self.sin = nn.Parameter(torch.zeros(terms))
        self.cos = nn.Parameter(torch.zeros(terms))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * x * self.k / self.period  # (n, 1) * (terms,) -> (n, terms)
        out = torch.sin(phase) @ self.sin + torch.cos(phase) @ self.cos + self.bias
        return out.unsqueeze(-1)
