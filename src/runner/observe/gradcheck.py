"""`trainer.check_grads=true`: autograd's gradients on the first batch against central differences
of float64 copies, as `torch.autograd.gradcheck` does, to catch a wrong hand-written backward."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction

from runner.build import Built, named_parameters
from runner.build.models import forward_fn
from runner.config.check import ConfigError, one_line
from runner.observe.graph import nodes

log = logging.getLogger(__name__)

EPS = 1e-6  # torch.autograd.gradcheck's step: float64 keeps the round-off near 1e-10
ATOL = 1e-5  # an element passes when |autograd - numeric| <= ATOL + RTOL * |numeric|,
RTOL = 1e-3  # gradcheck's own default tolerances
MAX_ELEMENTS = 256  # larger models are checked on a seeded sample, so the check stays fast
SAMPLE_SEED = 0  # a private generator: checking never moves the training RNG


class GradCheckError(ConfigError):
    """Autograd and finite differences disagree: reported like a config error, no traceback."""


def check_grads(b: Built) -> dict[str, Any]:
    """Compare, log and return the errors; raise GradCheckError naming the worst element."""
    objective = float64_objective(b)
    params = named_parameters(objective.model, objective.loss_fn)  # by the names users know
    picks = sample_elements(params, MAX_ELEMENTS)
    try:
        loss = objective()
    except RuntimeError as e:  # `x.float()` meeting float64 weights, say
        raise ConfigError(
            f"trainer.check_grads=true runs float64 copies of the model, which failed there "
            f"({one_line(e)}): a model that sets its own dtype cannot be "
            "checked; set trainer.check_grads=false"
        ) from e
    custom = sorted({type(n).__name__ for n in nodes(loss) if isinstance(n, BackwardCFunction)})
    # materialized: a parameter the loss does not use has derivative 0, not None
    grads = torch.autograd.grad(loss, list(params.values()), materialize_grads=True)
    by_name = dict(zip(params, grads))
    # note: the check's host syncs, once for each side
    a = torch.stack([by_name[name].reshape(-1)[i] for name, i in picks]).cpu()
    n = central_differences(objective, params, picks).cpu()
    abs_err = (a - n).abs()
    rel_err = abs_err / n.abs().clamp_min(ATOL)
    errors = {"max_abs_error": abs_err.max().item(), "max_rel_error": rel_err.max().item()}
    b.logger.scalars(0, {f"gradcheck/{k}": v for k, v in errors.items()})
    of_elements = sum(p.numel() for p in params.values())
    result = errors | {"elements": len(picks), "of_elements": of_elements}
    bad = ~(abs_err <= ATOL + RTOL * n.abs())  # a NaN on either side agrees with nothing
    if bad.any():
        worst = int((abs_err - RTOL * n.abs()).nan_to_num(math.inf).argmax())
        name, index = picks[worst]
        at = [int(i) for i in torch.unravel_index(torch.tensor(index), params[name].shape)]
        where = name if params[name].numel() == 1 else f"{name}{at}"
        raise GradCheckError(
            f"trainer.check_grads=true: autograd and finite differences disagree on "
            f"{int(bad.sum())} of {len(picks)} checked gradient elements. Worst: d loss / d "
            f"{where} is {a[worst].item():.6g} by autograd but {n[worst].item():.6g} by central "
            f"differences (largest absolute error {result['max_abs_error']:.3g}, relative "
            f"{result['max_rel_error']:.3g}; allowed |autograd - numeric| <= {ATOL:g} + "
            f"{RTOL:g} * |numeric|). "
            + (
                "A gradient that is NaN or infinite: the loss has no derivative at the starting "
                "parameters (sqrt or log at 0, say); start them elsewhere"
                if not (a[worst].isfinite() and n[worst].isfinite())
                else f"The custom backward in the graph ({', '.join(custom)}, a "
                "torch.autograd.Function) is the likely cause"
                if custom
                else "No custom backward is in the graph, so the differences may be the ones "
                "wrong: at a kink (relu, abs, max at the point) or through a step the model "
                "computes in float32 (a float32 tensor it makes, a .float())"
            )
            + "; set trainer.check_grads=false to train anyway"
        )
    log.info(
        f"Gradient check passed: {len(picks)} of {of_elements} elements, largest "
        f"absolute error {result['max_abs_error']:.3g}, relative {result['max_rel_error']:.3g}"
    )
    return result


class Objective(nn.Module):
    """The loss of a model (and of a loss formula's own parameters) on fixed data, as a module
    of its parameters, so that `torch.func.functional_call` can swap them for other values."""

    def __init__(
        self,
        model: nn.Module | None,
        loss_fn: Callable[..., torch.Tensor],
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # a module (registered, so its parameters count) or a function
        # plain attributes, not registered: forward_fn may hand back the model itself
        self.__dict__["run_model"] = None if model is None else forward_fn(model)
        self.x, self.y = x, y

    def forward(self) -> torch.Tensor:
        if self.run_model is None or self.x is None:
            return self.loss_fn()
        return self.loss_fn(self.run_model(self.x), self.y)


def float64_objective(b: Built) -> Objective:
    """The loss of float64 copies (the run's own parameters untouched) of the model and loss on
    the first `batch_size` points in data order: drawing a shuffled batch would move the RNG."""
    # eval mode: dropout would draw new masks for each evaluation the differences compare
    model = None if b.model is None else copy.deepcopy(b.model).to(torch.float64).eval()
    loss_fn = b.loss_fn
    if isinstance(loss_fn, nn.Module):
        loss_fn = copy.deepcopy(loss_fn).to(torch.float64)
    if b.data is None:
        return Objective(model, loss_fn)
    size = b.checked.trainer.batch_size or b.data.n
    x, y = b.data.x[:size].double(), b.data.y[:size]  # class indices in y stay integers
    return Objective(model, loss_fn, x, y.double() if y.is_floating_point() else y)


@torch.no_grad()
def central_differences(
    objective: Objective, params: dict[str, nn.Parameter], picks: list[tuple[str, int]]
) -> torch.Tensor:
    """(L(p + eps e_i) - L(p - eps e_i)) / 2 eps for each picked element, in picks' order."""
    out = []
    for name, index in picks:
        element = params[name].detach().view(-1)[index : index + 1]  # a view: edits reach p
        original = element.clone()
        element += EPS
        above = objective()
        element.copy_(original - EPS)
        below = objective()
        element.copy_(original)
        out.append((above - below) / (2 * EPS))
    return torch.stack(out)


def sample_elements(params: dict[str, nn.Parameter], limit: int) -> list[tuple[str, int]]:
    """(name, flat index) of every element, or of a seeded sample of about `limit` of them
    spread over the tensors by size, with at least one from each."""
    total = sum(p.numel() for p in params.values())
    if total <= limit:
        return [(name, i) for name, p in params.items() for i in range(p.numel())]
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    picks = []
    for name, p in params.items():
        k = max(1, round(limit * p.numel() / total))
        picks += [(name, i) for i in sorted(torch.randperm(p.numel(), generator=gen)[:k].tolist())]
    return picks
