"""Where logged values go: TensorBoard event files in the run directory, or nowhere.

Loggers only write what they are given (plain floats, host tensors, strings); the loop
decides what and when. TensorBoard is imported when a logger is made, not at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

HParam = int | float | str | bool


class Logger(Protocol):
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...
    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def figure(self, step: int, tag: str, figure: Any) -> None: ...
    def hparams(self, hparams: Mapping[str, HParam], metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Null:
    """`logger=none`: metrics.json and the terminal summary only."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        pass

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        pass

    def text(self, step: int, tag: str, text: str) -> None:
        pass

    def figure(self, step: int, tag: str, figure: Any) -> None:
        pass

    def hparams(self, hparams: Mapping[str, HParam], metrics: Mapping[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard:
    """Event files straight in the run directory, so `tensorboard --logdir outputs` lists runs."""

    def __init__(self, log_dir: str | Path, flush_secs: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy: imported only when used

        self._writer: Any = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        self._writer.add_histogram(tag, values.detach().cpu(), step)

    def text(self, step: int, tag: str, text: str) -> None:
        # Markdown would reflow the tree; four leading spaces keep it a code block.
        self._writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def figure(self, step: int, tag: str, figure: Any) -> None:
        self._writer.add_figure(tag, figure, step, close=True)

    def hparams(self, hparams: Mapping[str, HParam], metrics: Mapping[str, float]) -> None:
        """One HParams row for this run, written into its own event file (no extra folder).

        `SummaryWriter.add_hparams` would open a new sub-directory per call; writing the
        three summaries ourselves keeps each run's row next to its curves.
        """
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        experiment, start, end = hparams_summary(dict(hparams), dict(metrics))
        file_writer = self._writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, 0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Safe to call twice: a `finally` and a signal handler may both close."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
