"""Datasets as whole tensors: generated from a formula, read from a CSV file, or none.

Data lives on the device as tensors and is batched by index slices, so there is no
per-sample Python and no DataLoader in the loop.
"""

from __future__ import annotations

import csv as csvlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from runner.config.check import ConfigError
from runner.config.formula import FormulaError, parse

SAMPLINGS = ("linspace", "uniform")


@dataclass(frozen=True)
class Data:
    """Training (and optional validation) tensors; `x` is (n,) for one input, (n, k) for k."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def features(self) -> int:
        return 1 if self.x.dim() == 1 else self.x.shape[1]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names formulas use for the x columns: `x`, or `x1..xk`."""
        return ("x",) if self.features == 1 else tuple(f"x{i + 1}" for i in range(self.features))

    def to(self, device: torch.device) -> Data:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self, x=move(self.x), y=move(self.y), x_val=move(self.x_val), y_val=move(self.y_val)
        )


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, key: str) -> Data:
    """Hold out a seeded random share of the points for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"{key}.val_fraction={val_fraction} must be in [0, 1)")
    if val_fraction == 0.0:
        return Data(x, y)
    n_val = round(x.shape[0] * val_fraction)
    if n_val == 0 or n_val == x.shape[0]:
        raise ConfigError(
            f"{key}.val_fraction={val_fraction} leaves {n_val} of {x.shape[0]} points for "
            "validation; use more points or another fraction"
        )
    perm = torch.randperm(x.shape[0])
    val, train = perm[:n_val], perm[n_val:]
    return Data(x[train], y[train], x[val], y[val])


def synthetic(
    formula: str,
    n: int = 50,
    low: float = 0.0,
    high: float = 1.0,
    noise: float = 0.1,
    sampling: str = "linspace",
    val_fraction: float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """y = formula(x) + noise * randn(n), in the post's order so seed 42 gives its data."""
    if n < 1:
        raise ConfigError(f"dataset.n={n} must be a positive integer")
    if noise < 0:
        raise ConfigError(f"dataset.noise={noise} must be zero or positive")
    if not high > low:
        raise ConfigError(f"dataset.high={high} must be greater than dataset.low={low}")
    if sampling not in SAMPLINGS:
        raise ConfigError(
            f"dataset.sampling={sampling!r} is not allowed; use {' or '.join(SAMPLINGS)}"
        )
    try:
        f = parse(formula)
    except FormulaError as e:
        raise ConfigError(f"dataset.formula: {e}") from e
    if not f.names <= {"x"}:
        extra = ", ".join(sorted(f.names - {"x"}))
        raise ConfigError(
            f"dataset.formula={formula!r} uses unknown name(s) {extra}; "
            "a dataset formula is a function of x alone"
        )
    # drawn in float32 whatever trainer.dtype is, so float64 runs see the same data
    if sampling == "linspace":
        x = torch.linspace(low, high, n)
    else:
        x = low + (high - low) * torch.rand(n)
    clean = torch.as_tensor(f({"x": x}), dtype=x.dtype)
    if clean.shape != x.shape:
        clean = clean.expand_as(x).clone()
    y = clean + noise * torch.randn(n)
    return split(x.to(dtype), y.to(dtype), val_fraction, "dataset")


def csv(
    path: str,
    x: str | list[str] = "x",
    y: str = "y",
    val_fraction: float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Columns of a CSV file with a header row; several x columns become x1..xk."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"dataset.path={path!r}: no such file (looked in {file.resolve().parent}); "
            "paths are read relative to where the command was started"
        )
    columns = [x] if isinstance(x, str) else list(x)
    with file.open(newline="") as fh:
        reader = csvlib.reader(fh)
        header = next(reader, None)
        if not header:
            raise ConfigError(f"dataset.path={path!r} is empty; expected a header row of names")
        header = [h.strip() for h in header]
        index = {}
        for key, name in [("x", c) for c in columns] + [("y", y)]:
            if name not in header:
                raise ConfigError(
                    f"dataset.{key}={name!r} is not a column of {path}; "
                    f"columns: {', '.join(header)}"
                )
            index[name] = header.index(name)
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(
                    f"dataset.path={path!r} line {line} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            try:
                values = [float(row[index[c]]) for c in [*columns, y]]
            except ValueError as e:
                raise ConfigError(f"dataset.path={path!r} line {line}: {e}") from e
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"dataset.path={path!r} line {line}: a value is not finite")
            rows.append(values)
    if not rows:
        raise ConfigError(f"dataset.path={path!r} has a header but no rows")
    table = torch.tensor(rows, dtype=dtype)
    xs = table[:, 0] if len(columns) == 1 else table[:, : len(columns)]
    return split(xs.contiguous(), table[:, -1].contiguous(), val_fraction, "dataset")


def none(*, dtype: torch.dtype = torch.float32) -> None:
    """No data: the loss is a function of the parameters alone."""
    return None


def blobs(
    n: int = 200,
    classes: int = 2,
    features: int = 2,
    spread: float = 1.0,
    distance: float = 4.0,
    val_fraction: float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Gaussian blobs, one per class, for classification: y holds class indices as floats.

    Centres sit evenly on a circle of diameter `distance` (in the first two features; on a
    line for one feature), so `spread / distance` says how much the classes overlap.
    Floats suit `bce` (0 or 1) as they are; `cross_entropy` reads them as indices.
    """
    if n < classes:
        raise ConfigError(f"dataset.n={n} must be at least dataset.classes={classes}")
    if classes < 2:
        raise ConfigError(f"dataset.classes={classes} must be at least 2")
    if features < 1:
        raise ConfigError(f"dataset.features={features} must be a positive integer")
    if not spread > 0:
        raise ConfigError(f"dataset.spread={spread} must be positive")
    if not distance >= 0:
        raise ConfigError(f"dataset.distance={distance} must be zero or positive")
    centres = torch.zeros(classes, features, dtype=dtype)
    if features == 1:
        centres[:, 0] = torch.linspace(-distance / 2, distance / 2, classes, dtype=dtype)
    else:
        angle = 2 * math.pi * torch.arange(classes, dtype=dtype) / classes
        centres[:, 0] = distance / 2 * torch.cos(angle)
        centres[:, 1] = distance / 2 * torch.sin(angle)
    labels = torch.arange(n) % classes  # balanced classes, interleaved
    x = centres[labels] + spread * torch.randn(n, features, dtype=dtype)
    x = x[:, 0].contiguous() if features == 1 else x
    return split(x, labels.to(dtype), val_fraction, "dataset")
