"""A loss that became NaN or infinite stops the run at the next log step, naming the first
bad step: the losses wait on the device, so finding it costs no host sync per step."""

from __future__ import annotations

import torch

from runner.observe import Look, Observer


class Divergence(Observer):
    def log(self, look: Look) -> None:
        bad = ~torch.isfinite(look.losses)
        if bool(bad.any()):  # note: a host sync, at log steps only
            first = int(bad.to(torch.uint8).argmax())
            look.state.diverged_step = look.step - len(look.losses) + 1 + first
            look.state.status = "diverged"
