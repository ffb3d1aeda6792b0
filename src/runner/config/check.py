"""The config's checks, after Hydra composed it and before any work. OmegaConf cannot type a
group whose options differ (and accepts `nan` for a float), so each option is checked here:
trainer and logger against dataclasses, a `_target_` against the signature of what it builds.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parents[1] / "configs"  # the shipped options of each group
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "trainer", "logger")
# scheduler settings the learning rate needs positive: (an integer?, zero allowed?)
SCHEDULE = {"step_size": (True, False), "T_max": (True, False)}  # torch divides by them
SCHEDULE |= {"gamma": (False, False), "eta_min": (False, True)}  # the lr stays > 0 (>= 0)
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
RUNTIME_ARGS = {  # what each builder passes its `_target_` itself, not from the config
    "dataset": ("dtype",),
    "model": (),
    "loss": ("input", "target", "objective_only"),
    "optimizer": ("params",),
    "scheduler": ("optimizer",),
    "logger": ("log_dir",),
}
NOT_GLOBAL = (  # an experiment's keys that landed under `experiment.`: `{group}={option}`
    "{0}={1}: its file's first line must be '# @package _global_' "
    "(an {0} sets keys of the whole config, as the shipped ones do)"
)


class ConfigError(ValueError):
    """A bad config value, reported to the user without a traceback."""


@dataclass
class TrainerConfig:
    """`trainer.*`: how the loop runs."""

    epochs: int = 100
    batch_size: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    grad_clip: float | None = None
    accumulate: int = 1
    log_every_n_steps: int = 50
    check_grads: bool = False
    checkpoint_every: int | None = None
    resume: str | None = None
    early_stop: dict[str, float] | None = None
    objective: str = "final_loss"
    compile: bool | str = False  # true: torch.compile the model (inductor); or a backend's name
    devices: int = 1  # processes on each node: one run over them with DDP
    num_nodes: int = 1
    amp: str | None = None  # autocast to bfloat16 or float16


@dataclass
class LoggerCadence:
    """The logger keys the loop reads: how often to do the costlier kinds of logging."""

    graph_every_n_steps: int | None = None
    histogram_every_n_steps: int | None = 100
    figure_every_n_epochs: int | None = 50


CADENCE = [f.name for f in fields(LoggerCadence)]  # read by the loop, not the logger


@dataclass
class EarlyStop:
    patience: int = 10
    min_delta: float = 0.0


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one short line, with its kind (and no terminal colours); of
    torch's weights-only refusal, the part that names what it refused, not its preamble."""
    text = str(e)
    if text.startswith("Weights only load failed"):
        told = [p for p in text.split("\n\n")[1:] if p.strip() and "documentation" not in p]
        text = told[0] if told else text
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(text.split()))
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    """The closest choice, ignoring case (`BFloat16` is bfloat16, not float16)."""
    by_case = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_case), n=1, cutoff=0.6)
    return f" (did you mean '{by_case[close[0]]}'?)" if close else ""


def check_choice(key: str, value: Any, allowed: typing.Sequence[Any]) -> None:
    """One of a few values, or a message that lists them: `use null, bfloat16 or float16`."""
    if value not in allowed:
        names = ["null" if a is None else str(a) for a in allowed]
        listed = ", ".join(names[:-1]) + " or " + names[-1]
        raise ConfigError(
            f"{key}={shown(value)} is not allowed; use {listed}{did_you_mean(str(value), names)}"
        )


def check_keys(where: str, given: Mapping[str, Any], allowed: Collection[str]) -> None:
    for key in given:
        if key not in allowed:
            name = key if where == "config" else f"{where}.{key}"
            takes = f"takes: {', '.join(allowed)}" if allowed else "takes no keys"
            raise ConfigError(f"unknown key '{name}'{did_you_mean(key, allowed)}; {where} {takes}")


def _type_ok(value: Any, annotation: Any) -> bool:
    """A shallow check of `value` against a simple annotation; unknown shapes (and Any) pass."""
    base = typing.get_origin(annotation) or annotation
    if base in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in _members(annotation))
    if isinstance(value, bool) and base in (int, float):
        return False  # bool is an int subclass, but no number in a config
    if base is float:
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if base in (list, tuple):
        args = typing.get_args(annotation)
        if base is tuple and args and Ellipsis not in args:  # `tuple[float, float]`: Adam's betas
            ok = isinstance(value, list | tuple) and len(value) == len(args)
            return ok and all(_type_ok(v, a) for v, a in zip(value, args, strict=False))
        return isinstance(value, list | tuple)
    if base in (type(None), bool, int, str, dict):
        return isinstance(value, base)
    return True


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    if annotation in names:
        return names[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        return "a dict ('key={a: 1, b: 2}', in shell quotes)"
    if origin is tuple and Ellipsis not in args:
        each = ", ".join(_type_name(a).removeprefix("a ") for a in args)
        return f"a list of {len(args)} ({each})"
    members = [a for a in _members(annotation) if a is not type(None)]
    if len(members) == 1:
        return f"{_type_name(members[0])}{' or null' if type(None) in args else ''}"
    if members and all(m in names for m in members):  # `bool | str`: true or false, or a string
        return ", or ".join(names[m] for m in members) + (", or null" if type(None) in args else "")
    return getattr(annotation, "__name__", str(annotation))


def _members(annotation: Any) -> list[Any]:
    """A union's types but torch's (`float | Tensor`): no config value is a torch object."""
    args = typing.get_args(annotation)
    return [a for a in args if not getattr(a, "__module__", "").startswith("torch")] or list(args)


def shown(value: Any) -> str:
    """A value as the config writes it: null and false, not None and False."""
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    )


def check_value(key: str, value: Any, annotation: Any) -> None:
    if not _type_ok(value, annotation):
        raise ConfigError(f"{key}={shown(value)} is not {_type_name(annotation)}")


def _check_dataclass(
    where: str, given: Mapping[str, Any], schema: type, at_least: Mapping[str, int]
) -> Any:
    """`given` against `schema`'s fields and their types, and the lower bounds in `at_least`."""
    hints = typing.get_type_hints(schema)  # the fields, in order, with their types
    check_keys(where, given, hints)
    for key, value in given.items():
        check_value(f"{where}.{key}", value, hints[key])
    checked = schema(**given)
    for key, low in at_least.items():
        if (value := getattr(checked, key)) is not None and value < low:
            null = type(None) in typing.get_args(hints[key])  # counts: batch_size, the cadence
            bound = "a positive integer or null" if null else f"at least {low}"
            raise ConfigError(f"{where}.{key}={value} must be {bound}")
    return checked


def check_trainer(given: Mapping[str, Any]) -> TrainerConfig:
    at_least = {"epochs": 0, "accumulate": 1, "log_every_n_steps": 1, "devices": 1, "num_nodes": 1}
    at_least |= {"batch_size": 1, "checkpoint_every": 1}
    for key, off, means in (("amp", None, "full precision"), ("compile", False, "no compiling")):
        if key in given and given[key] is not off and given[key] in (None, False, "float32"):
            raise ConfigError(
                f"trainer.{key}={shown(given[key])} is not allowed: {means} is "
                f"trainer.{key}={shown(off)}, the default"
            )
    check_choice("trainer.amp", given.get("amp"), (None, "bfloat16", "float16"))
    t = _check_dataclass("trainer", given, TrainerConfig, at_least)
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"trainer.grad_clip={t.grad_clip} must be positive or null")
    if t.dtype in ("bfloat16", "float16", "half"):  # not "did you mean float64"
        raise ConfigError(
            f"trainer.dtype={t.dtype} is not allowed: parameters are float32 or float64; "
            "to compute in half precision set trainer.amp=bfloat16 or trainer.amp=float16"
        )
    check_choice("trainer.dtype", t.dtype, ("float32", "float64"))
    if t.amp is not None and t.dtype != "float32":
        raise ConfigError(
            f"trainer.amp={t.amp} computes in less than float32, and trainer.dtype={t.dtype} "
            "asks for more; set trainer.dtype=float32 or trainer.amp=null"
        )
    check_choice("trainer.objective", t.objective, ("final_loss", "best_loss", "val_loss"))
    if isinstance(t.compile, str):
        check_backend(t.compile)
    if t.early_stop is not None:
        at_least = {"patience": 1, "min_delta": 0}
        _check_dataclass("trainer.early_stop", t.early_stop, EarlyStop, at_least)
    return t


def check_backend(name: str) -> None:
    """A `trainer.compile` backend torch.compile knows (imports its compiler, so only if named)."""
    from torch.compiler import list_backends

    known = [b for b in list_backends(exclude_tags=()) if not b.endswith("TESTING_ONLY")]
    if name not in known:
        raise ConfigError(
            f"trainer.compile={name!r} is no torch.compile backend{did_you_mean(name, known)}; "
            f"use true, false or one of: {', '.join(sorted(known))}"
        )


def locate(group: str, target: Any) -> Callable[..., Any]:
    """Import a `_target_` dotted path, with a message that names the group."""
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"{group}._target_={target!r} must be a dotted path such as 'pkg.mod.Name'"
        )
    module_name, _, attr = target.rpartition(".")
    parts, hint = target.split("."), ""
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(name)
        except Exception as e:  # the path itself not found, or a failure inside the module
            missing = isinstance(e, ModuleNotFoundError)
            if missing and (e.name is None or name == e.name or name.startswith(e.name + ".")):
                continue  # the path itself: a shorter one may be the module
            raise ConfigError(f"{group}._target_={target!r}: importing it failed: {e}") from e
        try:
            return functools.reduce(getattr, parts[cut:], module)
        except AttributeError:  # the module is there: a name of it, misspelt?
            owner = functools.reduce(lambda o, a: getattr(o, a, None), parts[cut:-1], module)
            hint = did_you_mean(parts[-1], [n for n in dir(owner) if not n.startswith("_")])
            break
    raise ConfigError(
        f"{group}._target_={target!r} cannot be imported{hint}; check the module path "
        f"'{module_name or target}' and the name '{attr or target}' (run from the project root "
        "so that experiments/ is importable; code elsewhere needs its folder on PYTHONPATH)"
    )


def check_target(group: str, given: Mapping[str, Any], option: str | None = None) -> None:
    """An option's keys and simple types against its `_target_`'s signature, less RUNTIME_ARGS."""
    target = locate(group, given.get("_target_"))
    if (taken := arguments(target, RUNTIME_ARGS[group])) is None:
        return  # a builtin without a signature: instantiate will tell
    named, accepts_any = taken
    named = [*CADENCE, *named] if group == "logger" else named  # the loop reads the cadence
    keys = {k: v for k, v in given.items() if k not in HYDRA_KEYS}
    if not accepts_any:
        try:
            check_keys(group, keys, named)
        except ConfigError as e:
            raise ConfigError(f"{e}{left_over(group, option, keys, named)}") from None
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations in third-party code: skip the type check
        hints = {}
    for key, value in keys.items():
        filled = group == "model" and key == "in_features" and value is None  # the data's
        if key in hints and not filled:
            check_value(f"{group}.{key}", value, hints[key])
    if "lr" in keys:
        check_value(f"{group}.lr", keys["lr"], float)
        if not keys["lr"] > 0:
            raise ConfigError(f"{group}.lr={keys['lr']} must be a positive number")


def left_over(group: str, option: str | None, keys: typing.Iterable[str], taken: list[str]) -> str:
    """A hint for keys the chosen shipped option set under a `_target_` set over it (an
    experiment's inline `model: {_target_: ...}` over the default `model: expression`)."""
    import yaml

    unknown = [k for k in keys if k not in taken]
    path = CONFIGS / group / f"{option}.yaml"
    if option is None or not path.is_file():  # check_keys found an unknown key
        return ""
    if not all(k in (yaml.safe_load(path.read_text()) or {}) for k in unknown):
        return ""  # the user's own keys
    fix = f"delete {'them' if len(unknown) > 1 else 'it'} with ~{group}.{unknown[0]}"
    if (CONFIGS / group / "none.yaml").is_file():
        fix = f"start from {group}=none (`override /{group}: none` in an experiment's defaults)"
    return (
        f" ({', '.join(unknown)} {'come' if len(unknown) > 1 else 'comes'} from the option "
        f"{group}={option}, which a _target_ set over it does not remove: {fix})"
    )


def arguments(target: Any, runtime: typing.Iterable[str]) -> tuple[list[str], bool] | None:
    """The keyword arguments a `_target_` takes from the config, and whether it takes any
    (`**kwargs`); None without a signature."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in named and p.name not in (*runtime, "self")]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def missing(value: Any, key: str = "") -> str | None:
    """The first key left at OmegaConf's mandatory `???` (`dataset=csv` without a path)."""
    if value == "???":
        return key
    if isinstance(value, Mapping):
        for k, v in value.items():
            if (found := missing(v, f"{key}.{k}" if key else str(k))) is not None:
                return found
    return None


@dataclass
class Checked:
    """What validation hands on: the plain settings the loop reads."""

    trainer: TrainerConfig
    cadence: LoggerCadence
    options: dict[str, dict[str, Any]]


def check(cfg: Mapping[str, Any], chosen: Mapping[str, Any] | None = None) -> Checked:
    """Check the whole composed config (plain containers); raise ConfigError on the first fault.
    `chosen`: each group's option as Hydra picked it (`optimizer: sgd`), where known."""
    chosen = chosen or {}
    for key in cfg:  # `experiment=mine` whose keys landed under `experiment.`
        if key not in (*GROUPS, "hydra") and isinstance(chosen.get(key), str):
            raise ConfigError(NOT_GLOBAL.format(key, chosen[key]))
    check_keys("config", {k: v for k, v in cfg.items() if k != "hydra"}, ("seed", *GROUPS))
    if (key := missing(cfg)) is not None:
        raise ConfigError(f"{key} has no value (??? in the config); set it: {key}=...")
    seed = cfg.get("seed")
    if not _type_ok(seed, int) or not 0 <= seed < 2**32:  # NumPy's seeds, which it also seeds
        raise ConfigError(f"seed={seed!r} must be an integer from 0 to 2**32 - 1")
    options: dict[str, dict[str, Any]] = {}
    for group in RUNTIME_ARGS:
        given = cfg.get(group)
        if not isinstance(given, Mapping) or "_target_" not in given:
            shipped = sorted(f.stem for f in (CONFIGS / group).glob("*.yaml"))
            off = f" ({group}=none turns it off)" if "none" in shipped else ""
            raise ConfigError(
                f"{group}={shown(given)} is not an option with a _target_; pick one of the files "
                f"in configs/{group}/: {group}={', '.join(shipped)}{off}"
            )
        if group == "logger":  # the cadence keys are the loop's, the rest its `_target_`'s
            ours = {k: v for k, v in given.items() if k in CADENCE}
            cadence = _check_dataclass("logger", ours, LoggerCadence, dict.fromkeys(CADENCE, 1))
            given = {k: v for k, v in given.items() if k not in CADENCE}
        options[group] = dict(given)
        check_target(group, options[group], chosen.get(group))
    trainer = check_trainer(dict(cfg.get("trainer") or {}))
    for key, (whole, zero) in SCHEDULE.items() if trainer.epochs > 0 else ():
        value = options["scheduler"].get(key, 1)
        if not (_type_ok(value, int if whole else float) and (value > 0 or zero and value == 0)):
            kind = f"{'zero or ' if zero else ''}a positive {'integer' if whole else 'number'}"
            raise ConfigError(f"scheduler.{key}={value!r} must be {kind}")
    return Checked(trainer=trainer, cadence=cadence, options=options)
