"""Where logged values go: TensorBoard event files in the run directory, or nowhere.

Loggers only write what they are given (plain floats, host tensors, strings); the loop
decides what and when. TensorBoard is imported when a logger is made, not at start-up.
"""

from __future__ import annotations

import time
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
    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None: ...
    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None: ...
    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], status: str = ...
    ) -> None: ...
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

    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None:
        pass

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], status: str = "completed"
    ) -> None:
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

    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """The Custom Scalars dashboard: {category: {chart: ["Multiline", [tag regexes]]}}."""
        self._writer.add_custom_scalars({k: dict(v) for k, v in layout.items()})

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model traced on `example` for the Graphs dashboard; raises if tracing fails.

        Traced here without torch's re-run check, which `add_graph` would do and which costs
        seconds of imports; a traced module is then logged as it is.
        """
        traced = torch.jit.trace(model, example, check_trace=False)
        self._writer.add_graph(traced, example)

    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], status: str = "completed"
    ) -> None:
        """One HParams row for this run, written into its own event file (no extra folder).

        `SummaryWriter.add_hparams` would open a new sub-directory per call. Only the
        session's start (the hyperparameters) and end (success or failure) are written, no
        `experiment` summary: TensorBoard takes the first run's experiment as the columns of
        every run, so a sweep over optimizers would lose the keys only some of them have;
        without one it gathers the columns from all runs and marks those that differ.
        """
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo()
        for name, value in hparams.items():
            field = start.hparams[name]
            if isinstance(value, bool):
                field.bool_value = value
            elif isinstance(value, int | float):
                field.number_value = value
            else:
                field.string_value = str(value)
        ok = status == "completed"
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
            end_time_secs=time.time(),
        )
        file_writer = self._writer._get_file_writer()
        for tag, data in (
            (metadata.SESSION_START_INFO_TAG, {"session_start_info": start}),
            (metadata.SESSION_END_INFO_TAG, {"session_end_info": end}),
        ):
            meta = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
            file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
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
