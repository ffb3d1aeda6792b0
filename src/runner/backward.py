"""`loss.backward()` for the loop's scalar loss, at the autograd engine's own entry point.

`Tensor.backward` reaches the engine through `torch.autograd.backward`, whose Python checks
(argument forms, tensor subclasses, the shape of a seed it builds with `ones_like`, logging
hooks) cost ~40 µs a call on a small CPU: a fifth of the post's whole step. For a plain
scalar loss those checks cannot fail, so the loop seeds the engine with a cached 1 and calls
it directly; the gradients are the engine's, bit for bit the same. Anything else (a tensor
subclass, a loss with no graph, a torch whose engine answers differently) takes the public
path.
"""

from __future__ import annotations

import torch

_ONES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_engine: object | None = None  # the engine once it has answered a probe; False: never


def backward(loss: torch.Tensor) -> None:
    """Accumulate d(loss)/d(leaf) into every leaf's `.grad`, as `loss.backward()` does."""
    engine = _engine if _engine is not None else _probe()
    if engine and type(loss) is torch.Tensor and loss.grad_fn is not None and loss.dim() == 0:
        key = (loss.dtype, loss.device)
        one = _ONES.get(key)
        if one is None:
            one = _ONES[key] = torch.ones((), dtype=loss.dtype, device=loss.device)
        engine.run_backward((loss,), (one,), False, False, (), True, True)  # type: ignore[attr-defined]
    else:
        loss.backward()


def _probe() -> object:
    """The engine, if a call in the form used above gives d(2a)/da = 2; else False."""
    global _engine
    engine = getattr(torch.autograd.graph.Variable, "_execution_engine", None)
    try:
        leaf = torch.zeros((), requires_grad=True)
        engine.run_backward((leaf * 2,), (torch.ones(()),), False, False, (), True, True)  # type: ignore[union-attr]
        _engine = engine if leaf.grad is not None and leaf.grad.item() == 2.0 else False
    except Exception:
        _engine = False
    return _engine
