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
        loss = self.scalars.latest.get("loss/train")
        if loss is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def end(self, state: State) -> None:
        self.bar.update(state.step - self.bar.n)
        self.bar.close()
