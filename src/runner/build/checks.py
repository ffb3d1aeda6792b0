"""The first pass before training, on a few points: a shape, dtype, task or value that would
fail (or silently train on nothing) is a config error before any work."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from runner.build.data import Data
from runner.build.models import Forward
from runner.config.check import HYDRA_KEYS, ConfigError, shown

log = logging.getLogger(__name__)


def first_call(
    failed: str, fn: Callable[..., Any], *args: Any, hint: str = "", grad: bool = False
) -> Any:
    """Call `fn` once before training, so that its failure is a config error before any work."""
    try:
        with torch.set_grad_enabled(grad):
            return fn(*args)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{failed} failed: {e}{hint}") from e


def check_loss(
    loss_fn: Callable[..., Any], *args: torch.Tensor, hint: str = "", label: str = "loss"
) -> None:
    """The loss on the first batch (or the objective), once: `.backward()` needs a real scalar."""
    what = "computing it on the first batch" if args else "evaluating the objective"
    value = first_call(f"{label}: {what}", loss_fn, *args, hint=hint, grad=True)
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(
            f"loss: it gives {shape}, and .backward() needs a scalar tensor; "
            "make it return one (loss=expression takes loss.reduction=sum or mean)"
        )
    if value.is_complex():  # backward() starts only from a real number
        raise ConfigError(
            f"{label}: {what} gives a complex value ({value.dtype}), and .backward() needs a "
            "real one; compute the loss from real numbers (.real, .abs())"
        )
    if not torch.isfinite(value):
        fix = "look at the formulas and the parameters' starting values"
        floats = [a for a in args if a.is_floating_point() and a.numel()]
        big = max((float(a.detach().abs().max()) for a in floats), default=0.0)
        if floats and big >= torch.finfo(floats[0].dtype).max ** 0.5:  # 3e20 in a float32 run
            dtype = floats[0].dtype
            fix = f"the values reach {big:.3g}, whose squares overflow {dtype}; rescale the data"
        raise ConfigError(
            f"{label}: {what} gives {value.item()} at the starting parameters, before any "
            f"update; {fix}"
        )
    if not value.requires_grad:  # backward() would fail at the first step
        raise ConfigError(
            f"{label}: {what} gives a value that does not depend on the parameters through "
            "autograd (a detached or integer result), so backward() cannot train them; "
            "compute it with torch operations on its inputs"
        )


# classification losses by name (torch's functions and modules, the runner's own)
CLASSIFYING = {"cross_entropy", "bce", "nll_loss", "binary_cross_entropy", "NLLLoss", "BCELoss"}
CLASSIFYING |= {"binary_cross_entropy_with_logits", "CrossEntropyLoss", "BCEWithLogitsLoss"}
REGRESSING = {"mse", "mae", "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss"}
REGRESSING |= {"MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss"}


def labelled(group: str, option: Mapping[str, Any]) -> str:
    """A group with the settings its option was given: `loss (loss.delta=0)`."""
    settings = [f"{group}.{k}={shown(v)}" for k, v in option.items() if k not in HYDRA_KEYS]
    return f"{group} ({', '.join(settings)})" if settings else group


def check_data(data: Data, formula: str | None, dtype: torch.dtype) -> None:
    """Points and targets that pair up, finite (a NaN reads as a divergence), in the run's dtype."""
    if (data.x_val is None) != (data.y_val is None):
        given, absent = ("x_val", "y_val") if data.y_val is None else ("y_val", "x_val")
        raise ConfigError(
            f"dataset: Data.{given} is given and {absent} is not; give both or neither"
        )
    if data.x_val is not None and data.x_val.shape[1:] != data.x.shape[1:]:
        raise ConfigError(
            f"dataset: Data.x_val's points have shape {tuple(data.x_val.shape[1:])} and x's "
            f"{tuple(data.x.shape[1:])}; validation points are points like the training ones"
        )
    for xn, x, yn, y in [("x", data.x, "y", data.y), ("x_val", data.x_val, "y_val", data.y_val)]:
        if x is None or y is None:
            continue
        if x.shape[0] == 0:
            fix = "one at least" if xn == "x" else "leave x_val and y_val None for no validation"
            raise ConfigError(f"dataset: Data.{xn} holds no points ({fix})")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(
                f"dataset: {xn} holds {x.shape[0]} points and {yn} {y.shape[0]}; one target a point"
            )
        for name, t in ((xn, x), (yn, y)):
            # integer inputs (an embedding's token ids) and class indices stay integers
            if t.is_floating_point() and t.dtype != dtype:
                raise ConfigError(
                    f"dataset: {name} holds {t.dtype}, and the run computes in {dtype} "
                    f"(trainer.dtype); make the tensors with the dtype the runner passes"
                )
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                where = f" (dataset.formula={formula!r})" if formula else ""
                raise ConfigError(f"dataset: {name} holds NaN or infinite values{where}")


def check_batch_norm(model: nn.Module | None, n: int, batch_size: int | None) -> None:
    """Batch norm refuses a training batch of one point: said here, not at an epoch's last batch."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    if model is None or not any(isinstance(m, norms) for m in model.modules()):
        return
    size = min(batch_size or n, n)
    last = n % size or size
    if last == 1:
        which = "each batch holds" if size == 1 else "the last batch of each epoch holds"
        raise ConfigError(
            f"model: its batch norm needs two points or more a batch in training, and {which} "
            f"1 point ({n} points in batches of {batch_size or n}); set another trainer.batch_size"
        )


def forward_once(forward: Forward, x: torch.Tensor, dtype: torch.dtype) -> Any:
    """The first forward pass; a dtype clash says that the run cast the whole model."""
    try:
        return first_call("model: the first forward pass", forward, x, grad=True)
    except ConfigError as e:
        if "dtype" not in str(e):
            raise
        name = str(dtype).removeprefix("torch.")
        why = (
            f"the run casts the model's parameters to trainer.dtype={name}; a model that "
            "computes in another dtype needs that trainer.dtype, or casts of its own"
        )
        if not x.is_floating_point():  # left as they are, for a model that embeds them
            why = f"the dataset's x is {x.dtype}, which is kept for a model that takes integers"
        raise ConfigError(f"{e} ({why})") from e.__cause__


def check_shapes(
    forward: Forward,
    loss_fn: Any,
    data: Data,
    model_cfg: Mapping[str, Any],
    loss_label: str = "loss",
    dtype: torch.dtype = torch.float32,
    trains: bool = True,
) -> None:
    """A forward pass on two points (and three), so a shape mismatch is a config error, not a
    broadcast; `dataset.task`, never the loss, says what the output must be."""
    x, y = data.x[:2], data.y[:2]
    pred = forward_once(forward, x, dtype)
    if data.task == "regression" and data.n > 2 and pred.shape == y.shape:
        x, y = data.x[:3], data.y[:3]  # a parameter of two numbers broadcasts over 2 points
        pred = forward_once(forward, x, dtype)
    if trains and not pred.requires_grad:  # forward_fn made it a tensor
        raise ConfigError(
            f"model: its output ({pred.dtype}) does not depend on its parameters through "
            "autograd (a detached or integer tensor), so backward() cannot train them; return "
            "a float tensor computed from them"
        )
    if not bool(torch.isfinite(pred).all()):
        raise ConfigError(
            "model: the first forward pass gives NaN or infinite values at the starting "
            "parameters; look at the model's formula and the parameters' starting values"
        )
    # a user's module may name its width otherwise: then the message says what to return
    has_key = "out_features" in model_cfg
    hint = ""
    loss_name = getattr(getattr(loss_fn, "func", loss_fn), "__name__", type(loss_fn).__name__)
    if data.task == "regression" and loss_name in CLASSIFYING:  # which would run on values
        raise ConfigError(
            f"loss: {loss_name} reads classes, and dataset.task=regression holds values to "
            "fit; pick a regression loss (loss=mse, mae or huber) or a dataset with "
            "dataset.task=classification"
        )
    if data.task == "classification" and loss_name in REGRESSING:
        raise ConfigError(
            f"loss: {loss_name} compares values, and dataset.task=classification holds class "
            "indices; pick loss=cross_entropy (or loss=bce for one binary logit)"
        )
    if data.task == "classification":
        classes = data.classes
        width = 1 if pred.dim() == 1 else pred.shape[-1]
        fits = width == classes or (width == 1 and classes == 2)
        if pred.dim() > 2 or pred.shape[0] != y.shape[0] or not fits:
            fix = f"set model.out_features={classes} (one logit per class)"
            binary = "model.out_features=1"
            if not has_key:
                fix, binary = f"make the model return {classes} logits per point", "one"
            raise ConfigError(
                f"model output has shape {tuple(pred.shape)} for {y.shape[0]} points, but "
                f"dataset.task=classification has {classes} classes; {fix}"
                + (f" or {binary} (one binary logit, for loss=bce)" if classes == 2 else "")
            )
        if width == 1:  # accuracy reads it as a logit (class 1 above 0): probabilities all 1
            with torch.no_grad():
                probe = forward(data.x[:256])  # points enough to tell a probability
            if bool(((probe > 0) & (probe < 1)).all()):
                log.warning(
                    f"model: its one output a point lies between 0 and 1 for all of the first "
                    f"{len(probe)} points, as a probability's would; acc/train and acc/val read "
                    "it as a logit (class 1 when above 0), so return the logit (loss=bce applies "
                    "the sigmoid itself)"
                )
        hint = (
            " (dataset.task=classification: the targets are class indices, and the model "
            f"gives {'one binary logit' if width == 1 else f'{width} logits'} a point: "
            f"{'bce' if width == 1 else 'cross_entropy'} reads that)"
        )
    elif pred.shape != y.shape:
        maybe_classes = pred.dim() == 2 and y.dim() == 1 and pred.shape[0] == y.shape[0]
        if pred.dim() == 1 and tuple(y.shape[1:]) == (1,):  # a column of targets
            raise ConfigError(
                f"dataset: the targets have shape {tuple(data.y.shape)}, and the model gives one "
                "value a point, shape (n,); a dataset's y holds one target a point, shape (n,) "
                "(y.squeeze(-1))"
            )
        raise ConfigError(
            f"model output has shape {tuple(pred.shape)} for {y.shape[0]} points but the "
            f"target has shape {tuple(y.shape)}; make the model return one value per point"
            + (" (model.out_features=1)" if has_key else "")
            + (", or set dataset.task=classification if y holds classes" if maybe_classes else "")
        )
    check_loss(loss_fn, pred, y, hint=hint, label=loss_label)
