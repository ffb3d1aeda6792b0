"""Everything the loop carries from one step to the next, so a checkpoint continues a run bit
for bit. Losses stay on the device: reading one is a host sync, paid only at log steps."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

FOLD = 1024  # losses a list keeps on the device before one reduction: bounded memory


@dataclass
class State:
    step: int = 0  # updates done
    epoch: int = 0  # epochs finished
    position: int = 0  # the next batch of the current epoch
    perm: torch.Tensor | None = None  # the current epoch's order; None: the whole batch
    epoch_sum: torch.Tensor | None = None  # the current epoch's loss, but for `unsummed`
    epoch_loss: torch.Tensor | None = None  # the last finished epoch's loss
    best: torch.Tensor | None = None  # the lowest epoch loss so far (NaN never wins)
    val_loss: torch.Tensor | None = None  # the last validation loss
    status: str = "running"  # then completed, diverged, interrupted, pruned or failed
    diverged_step: int | None = None  # the first step whose loss was NaN or infinite
    early_stop: tuple[float, int] | None = None  # (best watched loss, epochs without gain)
    early_stopped_epoch: int | None = None
    signal: str | None = None  # SIGINT or SIGTERM for an interrupted run
    rng: dict[str, Any] = field(default_factory=dict)  # every generator, at the last save
    path: torch.Tensor | None = None  # figure/landscape's path, at the last save: drawn whole
    unfolded: list[torch.Tensor] = field(default_factory=list)  # epoch losses not in `best` yet
    unsummed: list[tuple[torch.Tensor, float]] = field(default_factory=list)  # (loss, share)s

    def end_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self.epoch_loss = self.so_far()
        if self.epoch_loss is not None:
            self.unfolded.append(self.epoch_loss)
            if len(self.unfolded) >= FOLD:
                self.fold()

    def add(self, loss: torch.Tensor, share: float | None) -> None:
        """An update's loss and its share of the data (None: the whole batch)."""
        if share is None:
            self.epoch_sum = loss
            return
        self.unsummed.append((loss, share))
        if len(self.unsummed) >= FOLD:  # a long epoch
            self.so_far()

    def so_far(self) -> torch.Tensor | None:
        """The epoch's loss so far: one sum and product per run of equal shares, not two ops a
        step. A checkpoint keeps `unsummed`, so a resumed run sums alike, bit for bit."""
        for share, run in itertools.groupby(self.unsummed, key=lambda step: step[1]):
            part = torch.stack([loss for loss, _ in run]).sum() * share
            self.epoch_sum = part if self.epoch_sum is None else self.epoch_sum + part
        self.unsummed = []
        return self.epoch_sum

    def fold(self) -> torch.Tensor | None:
        """The lowest epoch loss so far (NaN never wins), one reduction for many epochs."""
        if self.unfolded:
            losses = torch.stack(self.unfolded)
            nan = torch.isnan(losses)
            low = torch.where(nan.all(), math.nan, losses.masked_fill(nan, math.inf).min())
            self.best = low if self.best is None else torch.fmin(self.best, low)
            self.unfolded = []
        return self.best

    def to_dict(self) -> dict[str, Any]:
        """Plain values and tensors only, so `torch.load(weights_only=True)` reads them back."""
        self.fold()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], device: torch.device) -> State:
        names = {f.name for f in dataclasses.fields(cls)}
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        # a checkpoint is read onto the CPU: the unsummed losses go to the device too
        moved["unsummed"] = [(loss.to(device), s) for loss, s in values.get("unsummed", [])]
        return cls(**{k: v for k, v in moved.items() if k in names})


def number(value: torch.Tensor | None) -> float | None:
    """A device loss as a finite float for metrics.json, or None (a host sync)."""
    if value is None:
        return None
    x = float(value.item())
    return x if math.isfinite(x) else None
