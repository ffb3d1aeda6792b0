"""`trainer.amp`: the training step's forward and loss under `torch.autocast`. float16's
small gradients underflow to zero, so with it a `torch.amp.GradScaler` scales the loss up
before backward and the gradients back down before the update; bfloat16 needs none."""

from __future__ import annotations

from typing import Any

import torch

from runner.config.check import ConfigError


def precision(
    amp: str | None, device: torch.device, optimizer: Any
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and, for float16, the gradient scaler; errors name the fix."""
    if amp is None:
        return None, None
    if amp == "float16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.amp=float16 needs CUDA and the device is {device}; use "
            "trainer.amp=bfloat16 (float32's range, so no gradient scaler)"
        )
    if amp == "float16" and isinstance(optimizer, torch.optim.LBFGS):
        raise ConfigError(
            "optimizer=lbfgs evaluates the loss inside its step, where float16's gradient "
            "scaler cannot follow; use trainer.amp=bfloat16 or another optimizer"
        )
    return getattr(torch, amp), torch.amp.GradScaler(device.type) if amp == "float16" else None
