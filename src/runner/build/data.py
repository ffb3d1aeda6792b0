"""Datasets as whole tensors (batched by index slices on the device, no DataLoader): from a
formula, a CSV file, or none. The dataset declares what its targets are (`task`)."""

from __future__ import annotations

import csv as csvlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from runner.build.models import parse_formula
from runner.config.check import ConfigError, check_choice


@dataclass(frozen=True)
class Data:
    """Training (and optional validation) tensors; `x` is (n,) for one input, (n, k) for k.
    `y` holds values to fit, or for `classification` class indices as torch.long."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    task: str = "regression"
    classes: int | None = None

    def __post_init__(self) -> None:
        # here rather than in each builder, so a dataset of the user's own gets the same checks
        for name in ("x", "y", "x_val", "y_val"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                kind = f"{type(value).__module__}.{type(value).__name__}".removeprefix("builtins.")
                raise ConfigError(
                    f"dataset: Data.{name} is a {kind}, and Data holds torch "
                    f"tensors: torch.as_tensor({name}, dtype=dtype), with the dtype the runner "
                    "passes the dataset"
                )
            # one column of shape (n, 1) is `x`, as a 1-column CSV's
            if name in ("x", "x_val") and value is not None and value.shape[1:] == (1,):
                object.__setattr__(self, name, value[:, 0])
        check_choice("dataset.task", self.task, ("regression", "classification"))
        if self.task == "classification":
            # frozen: the labels are set once, here, as the integers they are
            object.__setattr__(self, "classes", class_count(self.y, self.y_val, self.classes))
            object.__setattr__(self, "y", self.y.long())
            if self.y_val is not None:
                object.__setattr__(self, "y_val", self.y_val.long())

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
        tensors = {"x": self.x, "y": self.y, "x_val": self.x_val, "y_val": self.y_val}
        return replace(self, **{k: t if t is None else t.to(device) for k, t in tensors.items()})


def class_count(y: torch.Tensor, y_val: torch.Tensor | None, classes: int | None) -> int:
    """The number of classes of integer labels 0..classes-1 (floats holding integers pass)."""
    if y.dim() != 1 or (y_val is not None and y_val.dim() != 1):
        column = tuple(y.shape[1:]) == (1,)  # one index a point, as a column: squeeze it
        fix = "make y of shape (n,) (y.squeeze(-1))" if column else "set dataset.task=regression"
        raise ConfigError(
            f"dataset.task=classification needs one class index per point (targets of shape "
            f"(n,)), but they have shape {tuple(y.shape)}; {fix}"
        )
    labels = y if y_val is None else torch.cat([y, y_val])
    bad = labels < 0
    if labels.is_floating_point():
        bad |= ~torch.isfinite(labels) | (labels != labels.round())
    if bool(bad.any()):
        raise ConfigError(
            "dataset.task=classification needs class indices 0, 1, 2, ... as targets, "
            f"but one is {labels[bad][0].item()}; number the classes from 0 (-1 and 1 as 0 "
            "and 1), or set dataset.task=regression to fit values"
        )
    low, high = int(labels.min()), int(labels.max())
    if classes is None and low > 0:  # classes 1..K: a width of K + 1 would be asked for
        raise ConfigError(
            f"dataset.task=classification needs class indices 0, 1, 2, ... as targets, but "
            f"they run from {low} to {high}, and no point is class 0; number the classes from 0"
        )
    if classes is None:
        classes = high + 1
    elif high >= classes:
        raise ConfigError(
            f"dataset.classes={classes} but a target is class {high}; "
            "labels must be below the number of classes"
        )
    if classes < 2:
        raise ConfigError(
            f"dataset.task=classification found {classes} class (every target is 0); "
            "it needs labels of at least two classes"
        )
    return classes


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, task: str = "regression") -> Data:
    """Hold out a seeded random share of the points for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction={val_fraction} must be in [0, 1)")
    if val_fraction == 0.0:
        return Data(x, y, task=task)
    n = x.shape[0]
    n_val = round(n * val_fraction)
    if n_val in (0, n):
        raise ConfigError(
            f"dataset.val_fraction={val_fraction} holds out {n_val} of {n} points for "
            f"validation and leaves {n - n_val} to train on; each needs at least one: use more "
            "points or another fraction"
        )
    val, train = torch.randperm(n).split([n_val, n - n_val])
    return Data(x[train], y[train], x[val], y[val], task=task)


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
    check_choice("dataset.sampling", sampling, ("linspace", "uniform"))
    f = parse_formula("dataset", formula)
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
    y = torch.as_tensor(f({"x": x}), dtype=x.dtype).expand_as(x) + noise * torch.randn(n)
    return split(x.to(dtype), y.to(dtype), val_fraction)


def csv(
    path: str,
    x: str | list[str] = "x",
    y: str = "y",
    val_fraction: float = 0.0,
    task: str = "regression",
    delimiter: str = ",",
    *,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Columns of a CSV file with a header row; several x columns become x1..xk."""
    file = Path(path)
    if not file.is_file():
        what = "a directory, not a file" if file.is_dir() else "no such file"
        raise ConfigError(
            f"dataset.path={path!r}: {what} (looked in {file.resolve().parent}); "
            "paths are read relative to where the command was started"
        )
    columns = [x] if isinstance(x, str) else list(x)
    if not columns or y in columns or len(set(columns)) < len(columns):
        raise ConfigError(
            f"dataset.x={x!r} with dataset.y={y!r}: x names one or more columns, each once, "
            "and not the target's"
        )
    delimiter = {"\\t": "\t"}.get(delimiter, delimiter)  # a tab as typed: 'dataset.delimiter="\t"'
    if not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise ConfigError(f"dataset.delimiter={delimiter!r} must be one character, such as ';'")
    try:
        names, rows = _read_csv(path, columns, y, task, delimiter)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"dataset.path={path!r} is not UTF-8 text (it has the byte {e.object[e.start]:#x}); "
            'save it as UTF-8 ("CSV UTF-8" in a spreadsheet)'
        ) from None
    if not rows:
        raise ConfigError(f"dataset.path={path!r} has a header but no rows")
    table = torch.tensor(rows, dtype=dtype)
    if not bool(torch.isfinite(table).all()):  # a finite number too large for the dtype
        row, column = (int(i) for i in (~torch.isfinite(table)).nonzero()[0])
        raise ConfigError(
            f"dataset.path={path!r}, column {names[column]}: {rows[row][column]:g} is beyond "
            f"{dtype} (at most {torch.finfo(dtype).max:.4g}); set trainer.dtype=float64"
        )
    xs = table[:, 0] if len(columns) == 1 else table[:, : len(columns)]
    return split(xs.contiguous(), table[:, -1].contiguous(), val_fraction, task)


def _read_csv(
    path: str, columns: list[str], y: str, task: str, delimiter: str
) -> tuple[list[str], list[list[float]]]:
    """The chosen columns' names and rows of numbers, with one line for what is wrong."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
        reader = csvlib.reader(fh, delimiter=delimiter)
        header = next((row for row in reader if any(c.strip() for c in row)), None)  # blank lines
        if not header:
            raise ConfigError(f"dataset.path={path!r} is empty; expected a header row of names")
        header = [h.strip() for h in header]
        if all(math.isfinite(number(h)) for h in header if h):  # `0,10`: data, not names
            raise ConfigError(
                f"dataset.path={path!r}: its first row ({', '.join(header)}) is numbers, and "
                "the first row is read as the columns' names; add a header row such as x,y"
            )
        # a spreadsheet's unnamed trailing columns are no name given twice
        if twice := sorted({h for h in header if h and header.count(h) > 1}):
            raise ConfigError(f"dataset.path={path!r}: the header names {', '.join(twice)} twice")
        for key, name in [("x", c) for c in columns] + [("y", y)]:
            if name not in header:
                sep = next((c for c in ";\t|" if len(header) == 1 and c in header[0]), None)
                typed = "\\t" if sep == "\t" else sep
                hint = f" (split by {sep!r}? set 'dataset.delimiter=\"{typed}\"')" if sep else ""
                raise ConfigError(
                    f"dataset.{key}={name!r} is not a column of {path}; "
                    f"columns: {', '.join(header)}{hint}"
                )
        index = [header.index(name) for name in [*columns, y]]
        rows: list[list[float]] = []
        names, start = [*columns, y], reader.line_num + 1
        for row in reader:  # `line`: the record's first line in the file (a field may span more)
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(
                    f"dataset.path={path!r} line {line} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            values = [number(row[i]) for i in index]
            for name, i, value in zip(names, index, values):
                classes = task == "classification" and name == y
                # labels judged as written: in float32, 1.00000001 would pass as class 1
                if not math.isfinite(value) or classes and not value.is_integer():
                    raise ConfigError(
                        f"dataset.path={path!r} line {line}, column {name}: {row[i]!r} is "
                        + ("no class index 0, 1, 2, ..." if classes else "not a finite number")
                    )
            rows.append(values)
    return names, rows


def number(cell: str) -> float:
    """A cell's number; NaN for what is none (an empty cell, a word, Python's `1_000`)."""
    try:
        return math.nan if "_" in cell else float(cell)
    except ValueError:
        return math.nan


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
    task: str = "classification",
    *,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Gaussian blobs, one per class, centred evenly on a circle of diameter `distance` (a line
    for one feature), so `spread / distance` says how much the classes overlap."""
    for bad, rule in (
        (n < classes, f"dataset.n={n} must be at least dataset.classes={classes}"),
        (classes < 2, f"dataset.classes={classes} must be at least 2"),
        (features < 1, f"dataset.features={features} must be a positive integer"),
        (not spread > 0, f"dataset.spread={spread} must be positive"),
        (not distance >= 0, f"dataset.distance={distance} must be zero or positive"),
    ):
        if bad:
            raise ConfigError(rule)
    # drawn in float32 whatever trainer.dtype is: the same points in float64
    centres = torch.zeros(classes, features)
    if features == 1:
        centres[:, 0] = torch.linspace(-distance / 2, distance / 2, classes)
    else:
        angle = 2 * math.pi * torch.arange(classes) / classes
        centres[:, :2] = distance / 2 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    labels = torch.arange(n) % classes  # balanced classes, interleaved
    x = (centres[labels] + spread * torch.randn(n, features)).to(dtype)  # Data squeezes (n, 1)
    # every class has a point (n >= classes), so Data counts them as `classes`
    return split(x, labels.to(dtype), val_fraction, task)
