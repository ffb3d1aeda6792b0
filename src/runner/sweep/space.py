"""An Optuna search space from Hydra's override grammar: sweeps become Optuna distributions,
every other override goes to each trial as it was written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
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
    space = Space()
    for key, override in {override.get_key_element(): override for override in parsed}.items():
        if not override.is_sweep_override():
            assert override.input_line is not None
            space.fixed.append(override.input_line)
            continue
        value = override.value()
        # sorted: shuffle(...) iterates in a random order
        values = sorted(override.sweep_iterator()) if isinstance(value, RangeSweep) else []
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            originals = value.list if isinstance(value, ChoiceSweep) else values
            choices = [Transformer.encode(v) for v in originals]
            space.distributions[key] = CategoricalDistribution(choices)
            space.texts[key] = {c: Transformer.str(v) for c, v in zip(choices, originals)}
        elif isinstance(value, RangeSweep):  # what a grid sweep of it runs: a, a + step, ... < b
            step = abs(value.step)
            if not values:
                raise ConfigError(f"hydra.sweeper.params: {key}=range(...) holds no value")
            if all(isinstance(v, int) for v in values):
                space.distributions[key] = IntDistribution(values[0], values[-1], step=int(step))
            else:
                space.distributions[key] = FloatDistribution(values[0], values[-1], step=step)
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags  # interval bounds are floats in Hydra's grammar
            try:
                space.distributions[key] = FloatDistribution(value.start, value.end, log=log)
            except ValueError as e:  # low > high; a log interval from 0
                raise ConfigError(f"{override.input_line}: {e}") from e
        else:
            raise ConfigError(
                f"hydra.sweeper.params: {override.input_line} is not a search the Optuna "
                "sweeper knows; use interval(a, b), tag(log, interval(a, b)), choice(...), "
                "range(a, b[, step]) or a plain value"
            )
    return space
