"""Models: a formula with named parameters, and small `torch.nn` modules; any other
`torch.nn.Module` works through `_target_`, adapted to the runner's shapes by `forward_fn`."""

from __future__ import annotations

import ast
import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from runner.config.check import ConfigError, check_choice, check_keys
from runner.config.formula import CONSTANTS, Formula, FormulaError, parse

INPUT_NAME = re.compile(r"x\d*")
REDUCTIONS = ("mean", "sum")  # over the points: a loss's, never a model's
Forward = Callable[[torch.Tensor], torch.Tensor]  # data in, predictions out


def initial_value(key: str, spec: Any) -> torch.Tensor:
    """A parameter's start from a number, a nested list or {shape, init, std}; numbers in float64
    (a float64 run starts at 0.1 exactly), random ones in float32 (both dtypes start alike)."""
    if isinstance(spec, int | float | list | tuple) and not isinstance(spec, bool):
        try:
            if any_bool(spec):
                raise TypeError("true/false is not a number")
            return torch.tensor(spec, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}={spec!r} is not a rectangular list of numbers: {e}") from e
    if isinstance(spec, Mapping):
        check_keys(key, spec, ("shape", "init", "std", "low", "high"))
        shape = spec.get("shape", [])
        valid = isinstance(shape, list | tuple) and all(isinstance(s, int) and s > 0 for s in shape)
        if not valid:
            raise ConfigError(f"{key}.shape={shape!r} must be a list of positive integers")
        init = spec.get("init", "zeros")
        check_choice(f"{key}.init", init, ("zeros", "normal", "uniform"))
        for option, used_by in (("std", "normal"), ("low", "uniform"), ("high", "uniform")):
            if option in spec and init != used_by:
                raise ConfigError(f"{key}.{option} is for init: {used_by}, and init is {init}")
        if init == "normal":
            std = float(spec.get("std", 1.0))
            if not std > 0:
                raise ConfigError(f"{key}.std={std} must be positive")
            return torch.randn(shape) * std
        if init == "uniform":
            low, high = float(spec.get("low", -1.0)), float(spec.get("high", 1.0))
            if not low < high:
                raise ConfigError(f"{key}: init: uniform needs low < high, not {low} and {high}")
            return low + (high - low) * torch.rand(shape)
        return torch.zeros(shape)
    raise ConfigError(f"{key}={spec!r} must be a number, a nested list or {{shape, init, std}}")


def any_bool(values: Any) -> bool:
    """Whether a nested list holds true or false, which torch would take as 1 and 0."""
    if isinstance(values, list | tuple):
        return any(any_bool(v) for v in values)
    return isinstance(values, bool)


def add_parameters(
    module: nn.Module,
    key: str,
    formula: Formula,
    inputs: Callable[[str], bool],
    params: Mapping[str, Any],
) -> tuple[str, ...]:
    """Register a parameter per free non-input name (0.0 unless `params` gives it); their names."""
    names = sorted(n for n in formula.names if not inputs(n))
    # Python reads `µ` (micro sign) in a formula as `μ` (mu): the keys of params alike
    params = {unicodedata.normalize("NFKC", str(k)): v for k, v in params.items()}
    for name in params:
        if name in CONSTANTS:
            raise ConfigError(
                f"{key}.params.{name}: {name} is the constant {CONSTANTS[name]:.6g} in formulas "
                f"({', '.join(CONSTANTS)}), not a parameter; give the parameter another name"
            )
        if name not in names:
            data = " (x, x1, x2, ... name the data's input columns)" if inputs(name) else ""
            raise ConfigError(
                f"{key}.params.{name}: the formula {formula.source!r} has no parameter "
                f"{name!r}{data}; its parameters: {', '.join(names) or 'none'}"
            )
    for name in names:
        if hasattr(module, name):
            raise ConfigError(f"{key}: the parameter name {name!r} is reserved; rename it")
        value = initial_value(f"{key}.params.{name}", params.get(name, 0.0))
        module.register_parameter(name, nn.Parameter(value))
    return tuple(names)


def parse_formula(key: str, source: str) -> Formula:
    try:
        return parse(source)
    except FormulaError as e:
        raise ConfigError(f"{key}.formula: {e}") from e


class Expression(nn.Module):
    """y = formula(x; parameters). The post's model is `w * x + b`."""

    def __init__(self, formula: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.formula = parse_formula("model", formula)
        self.names = add_parameters(self, "model", self.formula, INPUT_NAME.fullmatch, params or {})
        if "y" in self.names:  # the model's output is y = formula: a parameter y reads as it
            raise ConfigError(
                f"model.formula={formula!r}: y names what the model predicts, so it cannot be a "
                "parameter too; rename it"
            )
        # `sum(w) * x` reduces a parameter, `sum(w * x)` the points (the source parsed already)
        for node in ast.walk(ast.parse(self.formula.source.lstrip(), mode="eval")):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in REDUCTIONS):
                continue
            if any(isinstance(n, ast.Name) and INPUT_NAME.fullmatch(n.id) for n in ast.walk(node)):
                raise ConfigError(
                    f"model.formula={formula!r}: {node.func.id}(...) reduces over the points, "
                    "so each prediction would depend on the whole batch; a model gives one "
                    f"value a point ({' and '.join(REDUCTIONS)} belong in a loss formula)"
                )
        if not any(INPUT_NAME.fullmatch(n) for n in self.formula.names):
            raise ConfigError(
                f"model.formula={formula!r} uses no input: the data's columns are x, or x1, x2, "
                "... for several (dataset.x's order), whatever their names in a CSV file"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {"x": x} if x.dim() == 1 else {f"x{i + 1}": x[:, i] for i in range(x.shape[1])}
        # attributes, which functional_call swaps for the landscape; not named_parameters()
        env = {name: getattr(self, name) for name in self.names} | inputs
        try:
            out = self.formula(env)
        except FormulaError as e:
            raise ConfigError(  # the checks' first passes run on 2 or 3 points
                f"model.formula: {e} (the data has inputs {', '.join(inputs)}; this pass ran "
                f"on {x.shape[0]} points)"
            ) from e
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return out

    def describe(self, inputs: Collection[str] = ("x",)) -> str | None:
        """The formula with learned values, as the post prints it; None for tensor parameters."""
        if any(p.numel() != 1 for p in self.parameters()):
            return None
        return self.formula.render({n: p.item() for n, p in self.named_parameters()}, inputs)


def linear(in_features: int | None = None, out_features: int = 1) -> nn.Module:
    check_widths(in_features, out_features)
    return nn.Linear(in_features, out_features)


def check_widths(in_features: int | None, out_features: int) -> None:
    if in_features is None:
        raise ConfigError("model.in_features is null and the dataset did not fill it in")
    for key, width in (("in_features", in_features), ("out_features", out_features)):
        if width < 1:  # torch makes an empty layer (0) or fails deep inside (< 0)
            raise ConfigError(f"model.{key}={width} must be a positive integer")


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = dict(
    tanh=nn.Tanh, relu=nn.ReLU, gelu=nn.GELU, sigmoid=nn.Sigmoid, silu=nn.SiLU
)


class MLP(nn.Sequential):
    """Linear -> activation for each hidden width, then a Linear to the outputs."""

    def __init__(
        self,
        hidden: list[int] | tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        in_features: int | None = None,
        out_features: int = 1,
    ) -> None:
        check_choice("model.activation", activation, list(ACTIVATIONS))
        check_widths(in_features, out_features)
        if not all(type(h) is int and h > 0 for h in hidden):  # not a bool, either
            raise ConfigError(f"model.hidden={list(hidden)!r} must be a list of positive integers")
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
        super().__init__(*layers, nn.Linear(widths[-1], out_features))


def none() -> None:
    """No model: objective-only experiments keep their parameters in the loss."""
    return None


def forward_fn(model: nn.Module) -> Forward:
    """Adapt a model to the runner's shapes: (n,) or (n, k) in, (n,) out for one output."""
    if isinstance(model, Expression):
        return model.forward  # no hooks are ever set on it: skip Module.__call__ on each step

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x.unsqueeze(-1) if x.dim() == 1 else x)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"model: its forward returns {type(out).__name__}, and the runner takes a "
                "tensor: the predictions, one value (or one logit per class) a point"
            )
        return out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 else out

    return forward


@contextmanager
def evaluating(model: nn.Module | None, grad: bool = False) -> Iterator[None]:
    """Eval mode for what only looks (checks, validation, figures): no dropout, batch norm kept."""
    training = model is not None and model.training
    if training:
        model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        if training:
            model.train()
