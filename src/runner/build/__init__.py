"""Config -> components: the only place that calls `instantiate`. Device, dtype and seed are
resolved here once, so the loop never branches on them."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.build import losses, models
from runner.build.checks import (
    check_batch_norm,
    check_data,
    check_loss,
    check_shapes,
    first_call,
    labelled,
)
from runner.build.data import Data
from runner.build.models import Forward
from runner.build.optim import GD, Constant
from runner.config.check import (
    Checked,
    ConfigError,
    TrainerConfig,
    arguments,
    check,
    check_choice,
    locate,
)
from runner.log.tensorboard import Logger, Null


@dataclass
class Built:
    """Everything the loop needs, as plain objects."""

    checked: Checked
    device: torch.device
    data: Data | None
    model: nn.Module | None
    forward: Forward | None
    loss_fn: Callable[..., torch.Tensor]
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer | GD
    scheduler: Any
    logger: Logger
    hparams: dict[str, Any]
    amp: torch.dtype | None = None  # trainer.amp: the step's autocast dtype
    scaler: torch.amp.GradScaler | None = None  # trainer.amp=float16's gradient scaler

    def loss_on(self, idx: torch.Tensor | None) -> torch.Tensor:
        """Forward and loss on the points `idx` (None: all of them), or the objective."""
        if self.data is None or self.forward is None:
            return self.loss_fn()
        x, y = (self.data.x, self.data.y) if idx is None else (self.data.x[idx], self.data.y[idx])
        return self.loss_fn(self.forward(x), y)

    def describe(self) -> str:
        """What was learned, as the post prints it (`y = 1.924x + 1.050`), else the parameters."""
        if isinstance(self.model, models.Expression) and self.data is not None:
            text = self.model.describe(self.data.inputs)
            if text is not None:  # then the loss's own parameters, if it has any
                own = {id(p) for p in self.model.parameters()}
                rest = [f"{n} = {_rounded(p)}" for n, p in self.params.items() if id(p) not in own]
                return ", ".join([f"y = {text}", *rest])
        count = sum(p.numel() for p in self.params.values())
        objective = isinstance(self.loss_fn, losses.Expression) and self.loss_fn.objective_only
        if count <= 8 or objective:  # 8 numbers: one line's worth
            return ", ".join(f"{name} = {_rounded(p)}" for name, p in self.params.items())
        return f"{count} parameters in {len(self.params)} tensors"


def _rounded(value: Any) -> str:
    """A number, or a tensor as nested lists, to 3 decimals."""
    if isinstance(value, torch.Tensor):
        return f"{value.item():.3f}" if value.numel() == 1 else _rounded(value.tolist())
    if isinstance(value, list):
        return "[" + ", ".join(_rounded(v) for v in value) + "]"
    return f"{value:.3f}"


def resolve_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; asking for what is absent is a config error."""
    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next((d for d, there in present.items() if there), "cpu"))
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(
            f"unknown device {name!r}; set trainer.device to auto, cpu, cuda, cuda:N or mps"
        )
    device = torch.device(name)
    if device.type != "cpu" and not present[device.type]:
        raise ConfigError(
            f"trainer.device={name!r} but no {'CUDA' if device.type == 'cuda' else 'Apple MPS'} "
            "device is available here; use trainer.device=cpu or auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={name!r} but this machine has {torch.cuda.device_count()} "
            f"CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def precision(
    amp: str | None, device: torch.device, optimizer: Any
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """`trainer.amp`'s autocast dtype, and for float16 a GradScaler (small gradients underflow)."""
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


def _instantiate(group: str, node: Any, **runtime: Any) -> Any:
    """instantiate, with failures reported against the config group that caused them."""
    try:
        # _convert_="all": `params: {x: [1, 2, 3]}` arrives as a list, not a ListConfig
        return instantiate(node, _convert_="all", **runtime)
    except ConfigError:
        raise
    except Exception as e:
        cause = e
        while isinstance(cause.__cause__, Exception) and type(cause).__module__.startswith(
            ("hydra", "omegaconf")
        ):
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from e
        hint = ""
        partial = group in ("loss", "optimizer", "scheduler") and not node.get("_partial_")
        if partial and "required positional argument" in str(cause):  # `params`, `optimizer`
            hint = f"; the runner passes the {group} those itself: add _partial_: true to it"
        if isinstance(cause, MemoryError) or "not enough memory" in str(cause):
            size = " (dataset.n)" if group == "dataset" else ""
            hint = f"; the {group} does not fit in this machine's memory: make it smaller{size}"
        raise ConfigError(
            f"{group}: building {node.get('_target_')!r} failed: {cause}{hint}"
        ) from e


def named_parameters(model: nn.Module | None, loss: Any) -> dict[str, nn.Parameter]:
    """Parameters by the names users wrote (`w`, `b`, `0.weight`); loss formulas may own some."""
    params: dict[str, nn.Parameter] = {}
    for owner in (model, loss):
        if isinstance(owner, nn.Module):
            for name, p in owner.named_parameters():
                if name in params:
                    raise ConfigError(
                        f"the parameter {name!r} is in both the model and the loss formula; "
                        "rename one of them"
                    )
                params[name] = p
    return params


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> {"optimizer.lr": 0.1, ...} with values TensorBoard's HParams can show."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k not in ("_partial_", "_recursive_", "_convert_"):
                flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool | int | float | str):
        out[prefix] = value
    else:
        out[prefix] = "null" if value is None else str(value)
    return out


def build(cfg: DictConfig, run_dir: Path | None) -> Built:
    """Check the config, then build data, model, loss, optimizer, scheduler and logger."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    # each group's option as Hydra picked it, for messages (none when composed outside a run)
    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    checked = check(plain, chosen)
    opts, trainer = checked.options, checked.trainer
    device = resolve_device(trainer.device)
    dtype = getattr(torch, trainer.dtype)  # float32 or float64, as checked

    for group, kind in (("model", models.Expression), ("loss", losses.Expression)):
        option = opts[group] or {}  # a formula is refused before any data is made
        if option.get("_target_") == f"{kind.__module__}.{kind.__name__}" and "formula" in option:
            models.parse_formula(group, option["formula"])

    # seeded first: the dataset draws its noise right after
    random.seed(plain["seed"])
    np.random.seed(plain["seed"])
    torch.manual_seed(plain["seed"])  # also seeds every CUDA device
    data = _instantiate("dataset", opts["dataset"], dtype=dtype)
    if data is not None:
        if not isinstance(data, Data):
            raise ConfigError(
                f"dataset._target_={opts['dataset']['_target_']!r} returned {type(data).__name__}; "
                "it must return runner.build.data.Data (x, y tensors) or None"
            )
        check_data(data, opts["dataset"].get("formula"), dtype)
        data = data.to(device)

    if trainer.objective == "val_loss" and (data is None or data.x_val is None):
        raise ConfigError(
            "trainer.objective=val_loss but the dataset holds no points out for validation; "
            "set dataset.val_fraction (such as 0.2) or another trainer.objective"
        )
    if trainer.objective == "val_loss" and trainer.epochs == 0:
        raise ConfigError(
            "trainer.objective=val_loss with trainer.epochs=0: a look at one pass validates "
            "nothing; set trainer.epochs or another trainer.objective"
        )

    model_cfg = dict(opts["model"])
    no_model = f"{models.none.__module__}.{models.none.__name__}"
    if data is None and model_cfg.get("_target_") != no_model:  # before an MLP wants in_features
        raise ConfigError("dataset=none needs model=none: the loss formula holds the parameters")
    if "in_features" in model_cfg and model_cfg["in_features"] is None and data is not None:
        model_cfg["in_features"] = data.features
    elif data is not None and model_cfg.get("in_features") not in (None, data.features):
        raise ConfigError(
            f"model.in_features={model_cfg['in_features']} but the data has {data.features} "
            "input column(s); set model.in_features=null to take the data's"
        )
    model = _instantiate("model", model_cfg)
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(
            f"model._target_={model_cfg['_target_']!r} returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    if data is not None and model is None:
        raise ConfigError("model=none needs dataset=none; pick a model to fit the data")

    loss_cfg = opts["loss"]
    if data is None:
        takes = arguments(locate("loss", loss_cfg["_target_"]), ())
        if takes is None or "objective_only" not in takes[0]:
            raise ConfigError(
                "dataset=none needs a loss formula of the parameters alone: "
                "loss=expression with loss.formula, or an option file such as loss=rosenbrock"
            )
        loss_fn = _instantiate("loss", loss_cfg, objective_only=True)
    else:
        loss_fn = _instantiate("loss", loss_cfg)
        if isinstance(loss_fn, functools.partial):
            # Hydra's partial re-checks its target on every call, and the loss runs every step
            loss_fn = functools.partial(loss_fn.func, *loss_fn.args, **loss_fn.keywords)
            if isinstance(loss_fn.func, type) and issubclass(loss_fn.func, nn.Module):
                loss_fn = loss_fn()  # a loss module (torch.nn.MSELoss), made, then called

    for module in (model, loss_fn):
        if isinstance(module, nn.Module):
            module.to(device=device, dtype=dtype)
    params = named_parameters(model, loss_fn)
    if not params:
        raise ConfigError(
            "the experiment has no parameters to learn: the model (or a loss formula) must "
            "hold at least one torch.nn.Parameter"
        )
    if not any(p.requires_grad for p in params.values()):
        raise ConfigError(
            "every parameter of the experiment has requires_grad=False (frozen), so there is "
            "nothing to train; leave at least one trainable"
        )
    forward = None if model is None else models.forward_fn(model)
    loss_label = labelled("loss", loss_cfg)
    if data is None or forward is None:
        check_loss(loss_fn, label=loss_label)
    else:
        with models.evaluating(model, grad=True):  # no batch norm statistics moved
            trains = any(p.requires_grad for p in model.parameters())  # else the loss's
            check_shapes(forward, loss_fn, data, model_cfg, loss_label, dtype, trains)
        check_batch_norm(model, data.n, trainer.batch_size)
    if trainer.compile is not False:
        forward = compiled(forward, data, trainer, model)

    make_optimizer = _instantiate("optimizer", opts["optimizer"])
    # torch checks some settings only here (SGD's momentum, Adam's betas)
    building = f"optimizer: building {opts['optimizer']['_target_']}"
    optimizer = first_call(building, make_optimizer, list(params.values()))
    saves = trainer.checkpoint_every is not None or trainer.resume is not None
    check_optimizer(optimizer, opts["optimizer"]["_target_"], saves)
    if isinstance(optimizer, torch.optim.LBFGS):  # torch checks its line search at the first step
        defaults = optimizer.defaults
        check_choice("optimizer.line_search_fn", defaults["line_search_fn"], (None, "strong_wolfe"))
        if defaults["max_iter"] < 1:  # torch takes it, and its steps update nothing
            raise ConfigError(f"optimizer.max_iter={defaults['max_iter']} must be at least 1")
        if trainer.accumulate > 1:
            raise ConfigError(
                "optimizer=lbfgs re-evaluates the loss itself; set trainer.accumulate=1"
            )
    make_scheduler = _instantiate("scheduler", opts["scheduler"])
    schedule = getattr(make_scheduler, "func", make_scheduler)  # the class a partial builds
    if isinstance(optimizer, GD) and schedule is not Constant:
        # torch's schedulers take only torch's optimizers: GD's group runs as momentum-free SGD
        optimizer = torch.optim.SGD(optimizer.param_groups)
    building = f"scheduler: building {opts['scheduler']['_target_']}"
    scheduler = first_call(building, make_scheduler, optimizer)
    takes = arguments(type(scheduler).step, ())  # the loop steps it once an epoch, no argument
    if takes is not None and "metrics" in takes[0]:
        raise ConfigError(
            f"scheduler._target_={opts['scheduler']['_target_']!r} steps on a metric, and the "
            "runner steps the schedule once an epoch without one; use scheduler=step, "
            "exponential or cosine, or a schedule of epochs (LambdaLR, OneCycleLR, ...)"
        )
    amp, scaler = precision(trainer.amp, device, optimizer)
    # run_dir None: a DDP rank other than 0, which writes nothing
    logger = Null() if run_dir is None else _instantiate("logger", opts["logger"])(log_dir=run_dir)
    return Built(
        checked=checked,
        device=device,
        data=data,
        model=model,
        forward=forward,
        loss_fn=loss_fn,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        logger=logger,
        hparams=flatten("", {k: plain[k] for k in ("seed", "trainer", *opts)}, {}),
        amp=amp,
        scaler=scaler,
    )


def check_optimizer(optimizer: Any, target: str, saves: bool) -> None:
    """What the loop, logs and (if `saves`) checkpoints call on an optimizer, before any step."""
    needs = ("step", "zero_grad", "param_groups")
    needs += ("state_dict", "load_state_dict") if saves else ()
    missing = [name for name in needs if not hasattr(optimizer, name)]
    groups = getattr(optimizer, "param_groups", None)
    if not missing and not (isinstance(groups, list) and groups and isinstance(groups[0], dict)):
        missing = ["param_groups (a list of dicts)"]
    if missing:
        raise ConfigError(
            f"optimizer._target_={target!r} has no {', '.join(missing)}; the runner uses "
            f"{', '.join(needs)}{' (the last two for checkpoints)' if saves else ''}, as "
            "torch.optim.Optimizer has them: subclass it"
        )


def compiled(
    forward: Forward | None, data: Data | None, trainer: TrainerConfig, model: nn.Module | None
) -> Forward:
    """`trainer.compile`, tried here on one batch: a backend that fails is a config error."""
    if forward is None or model is None or data is None:
        raise ConfigError(
            "trainer.compile compiles the model, and an objective-only experiment "
            "(dataset=none) has none; set trainer.compile=false"
        )
    backend = trainer.compile
    fast = torch.compile(forward, backend="inductor" if backend is True else backend)
    buffers = [t.clone() for t in model.buffers()]
    try:
        fast(data.x[: trainer.batch_size])  # None: the whole batch; in training mode, as steps
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        first = " ".join(lines[:2]) if lines[0].endswith("raised:") else lines[0]  # and why
        raise ConfigError(
            f"trainer.compile={backend!r}: torch.compile failed ({first[:200]}); "
            "set trainer.compile=false to run the model as it is"
        ) from e
    with torch.no_grad():  # batch norm's statistics as they were: the batch is not seen twice
        for t, saved in zip(model.buffers(), buffers):
            t.copy_(saved)
    return fast
