"""The progress bar: on a terminal only, moved at log steps so the steps between pay nothing."""

from __future__ import annotations

from tqdm.auto import tqdm

from runner.observe import Look, Observer
from runner.observe.scalars import Scalars
from runner.train.state import State


class Progress(Observer):
    def __init__(self, total: int, start: int, scalars: Scalars, shown: bool = True) -> None:
        self.scalars = scalars  # the loss shown beside the bar
        # shown=False: a DDP rank other than 0, whose bar would repeat rank 0's
        self.bar = tqdm(
            total=total, initial=start, disable=None if shown else True, unit="step", leave=False
        )

    def log(self, look: Look) -> None:
        self.bar.update(look.state.step - self.bar.n)
        if not self.bar.disable:  # the scalars looked first: loss/train is there
            self.bar.set_postfix(loss=f"{self.scalars.latest['loss/train']:.4g}", refresh=False)

    def end(self, state: State) -> None:
        self.bar.update(state.step - self.bar.n)
        self.bar.close()
