"""An Optuna search space from Hydra's override grammar: `hydra.sweeper.params` and the sweeps
of the command line become Optuna distributions, every other override is passed to each
trial as it was written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from runner.config.check import ConfigError


@dataclass
class Space:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # overrides every trial gets, as written
    texts: dict[str, dict[Any, str]] = field(default_factory=dict)  # a choice's values, as typed

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's job overrides: what the sampler chose, then the fixed ones."""
        chosen = [
            f"{k}={self.texts.get(k, {}).get(v) or Transformer.str(v)}" for k, v in params.items()
        ]
        return [*chosen, *self.fixed]


def search_space(params: Mapping[str, Any], arguments: Sequence[str]) -> Space:
    """`params` first, then the command line's overrides: a later one for a key wins."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    parsed = OverridesParser.create().parse_overrides(lines)
    by_key = {override.get_key_element(): override for override in parsed}
    space = Space()
    for key, override in by_key.items():
        if not override.is_sweep_override():
            assert override.input_line is not None
            space.fixed.append(override.input_line)
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            originals = value.list if isinstance(value, ChoiceSweep) else _values(override)
            choices = [Transformer.encode(v) for v in originals]
            space.distributions[key] = CategoricalDistribution(choices)
            space.texts[key] = {c: Transformer.str(v) for c, v in zip(choices, originals)}
        elif isinstance(value, RangeSweep):
            space.distributions[key] = _stepped(key, _values(override), abs(value.step))
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags  # interval bounds are floats in Hydra's grammar
            space.distributions[key] = FloatDistribution(value.start, value.end, log=log)
        else:
            raise ConfigError(
                f"hydra.sweeper.params: {override.input_line} is not a search the Optuna "
                "sweeper knows; use interval(a, b), tag(log, interval(a, b)), choice(...), "
                "range(a, b[, step]) or a plain value"
            )
    return space


def _stepped(key: str, values: list[Any], step: float) -> BaseDistribution:
    """range(a, b, step) holds what a grid sweep of it runs: a, a + step, ... below b."""
    if not values:
        raise ConfigError(f"hydra.sweeper.params: {key}=range(...) holds no value")
    if all(isinstance(v, int) for v in values):
        return IntDistribution(values[0], values[-1], step=int(step))
    return FloatDistribution(values[0], values[-1], step=step)


def _values(override: Override) -> list[Any]:
    return sorted(override.sweep_iterator())  # sorted: shuffle(...) iterates in a random order
