"""TensorBoard event files in the run directory, or nowhere; a `SummaryWriter` on a writer thread
writes them, so a log step costs the training thread a copy and a list append."""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.config.check import ConfigError

HParam = int | float | str | bool
log = logging.getLogger(__name__)
CLOSE = "close"  # what `close` asks of the writer thread


class Null:
    """`logger=none`, and the methods every logger has: each writes nowhere."""

    writes = False  # whether anything reaches a file: figures are drawn only for one that does

    def __init__(self, log_dir: str | Path | None = None) -> None: ...
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...
    def histograms(self, step: int, tensors: Mapping[str, torch.Tensor]) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def image(self, step: int, tag: str, pixels: np.ndarray) -> None: ...
    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None: ...
    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None: ...
    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], step: int, status: str
    ) -> None: ...
    def resumed(self, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


Logger = Null  # the type observers write to


class TensorBoard(Null):
    """Event files straight in `log_dir`, written by a daemon thread; a failure there never
    reaches training: the first is a warning at `close`."""

    writes = True

    def __init__(
        self, log_dir: str | Path, flush_secs: float = 10.0, handoff_secs: float = 1.0
    ) -> None:
        for key, secs in (("flush_secs", flush_secs), ("handoff_secs", handoff_secs)):
            if not (isinstance(secs, int | float) and 0 < secs < math.inf):
                raise ConfigError(f"logger.{key}={secs!r} must be a positive number of seconds")
        self.log_dir = Path(log_dir)
        self._flush_secs = flush_secs
        # the writer holds the GIL training needs: it wakes each handoff, not at every log step
        self._handoff_secs = handoff_secs
        self._lock = threading.Lock()  # the writer takes `_batch` and `_step_scalars` too
        self._batch: list[Callable[[], object]] = []  # logged, not taken by the writer yet
        # every file opens with a session start (one for a purge_step): TensorBoard's loader
        # purges only at a run's later starts, so a fresh run starts one at step 0 too
        self._purge_step = 0
        self._writer: Any = None  # the SummaryWriter, touched on the writer thread only
        self._error: Exception | None = None
        self._closed = False
        self._step_scalars: tuple[int, dict[str, float]] | None = None  # the last job's, open
        self._requests: queue.Queue[threading.Event | str] = queue.Queue()  # flush, close
        self._thread = threading.Thread(target=self._work, name="runner-tensorboard", daemon=True)
        self._thread.start()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """A step's scalars, from every observer, go out as one event (one record to write)."""
        if self._closed:
            return
        with self._lock:
            pending = self._step_scalars
            if pending is None or pending[0] != step:
                pending = self._step_scalars = (step, {})
                self._batch.append(partial(self._add_scalars, step, time.time(), pending[1]))
            pending[1].update((tag, float(v)) for tag, v in values.items())

    def _add_scalars(self, step: int, wall: float, items: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in items.items()]
        self._open().file_writer.add_summary(Summary(value=values), step, wall)

    def histograms(self, step: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """A step's histograms as one event, binned here: on the writer thread, binning would
        hold the GIL that the training thread waits for after each backward."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = []
        for tag, tensor in tensors.items():
            try:
                values += histogram(tag, tensor).value
            except Exception as e:  # an empty or non-finite tensor: reported at `close`
                self._error = self._error or e
        if values:
            summary, wall = Summary(value=values), time.time()
            self._put(lambda w: w.file_writer.add_summary(summary, step, wall))

    def text(self, step: int, tag: str, text: str) -> None:
        # Markdown would reflow a tree; four leading spaces keep it a code block.
        content, wall = "\n".join("    " + line for line in text.splitlines()), time.time()
        self._put(lambda w: w.add_text(tag, content, step, wall))

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        """An RGB picture, (height, width, 3) uint8."""
        wall, rgb = time.time(), np.array(pixels, dtype=np.uint8)  # a canvas reuses its buffer
        self._put(lambda w: w.add_image(tag, rgb, step, wall, dataformats="HWC"))

    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """The Custom Scalars dashboard: {category: {chart title: ["Multiline", [tag regexes]]}}."""
        charts = {c: {t: list(chart) for t, chart in cs.items()} for c, cs in layout.items()}
        self._put(lambda w: w.add_custom_scalars(charts))

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model for the Graphs dashboard, traced from an eval-mode copy off the training
        thread; one that cannot be traced costs only that dashboard (logged at debug level)."""
        twin, x = copy.deepcopy(model).eval(), example.detach().clone()

        def add(w: Any) -> None:
            # tracer warnings are about tracing, not the run (catch_warnings is not thread-safe)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="The input to trace is already a Script")
            try:
                # traced without add_graph's check, which imports much of torch (torch.testing)
                w.add_graph(torch.jit.trace(twin, x, check_trace=False), x)
            except Exception as e:
                log.debug(f"no model graph for TensorBoard (tracing failed: {e})")

        self._put(add)

    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], step: int, status: str
    ) -> None:
        """One HParams row in this event file (not add_hparams' sub-directory), SUCCESS only for
        "completed", metrics also as scalars at `step`; an interrupted run gets no session end:
        TensorBoard keeps a run's first, which would outlast its resumed run's SUCCESS."""
        # torch would make a bool a 0/1 number; as a string it reads true/false
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in hparams.items()}
        values, wall = {tag: float(v) for tag, v in metrics.items()}, time.time()

        def add(w: Any) -> None:
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
            from torch.utils.tensorboard.summary import hparams as summaries

            experiment, start, end = summaries(params, values)
            if status != "completed":  # torch's session end always says SUCCESS
                plugin = end.value[0].metadata.plugin_data
                data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                data.session_end_info.status = api_pb2.STATUS_FAILURE
                plugin.content = data.SerializeToString()
            ended = () if status == "interrupted" else (end,)
            for summary in (experiment, start, *ended):
                w.file_writer.add_summary(summary, step, wall)
            for tag, v in values.items():
                w.add_scalar(tag, v, step, wall)

        self._put(add)

    def resumed(self, step: int) -> None:
        """A run going on from `step`: what was logged here from `step` on is purged."""

        def purge_from() -> None:
            if self._writer is not None:  # already writing: the next write opens a new file
                self._writer.close()
                self._writer = None
            self._purge_step = step

        self._queue(purge_from)

    def flush(self) -> None:
        """Wait until everything logged so far is in the file."""
        if self._put(lambda w: w.flush()):
            done = threading.Event()  # set even if the flush fails
            self._requests.put(done)
            done.wait()

    def close(self) -> None:
        """Safe to call twice; values logged after this are dropped."""
        if not self._put(lambda w: w.close()):
            return
        self._closed = True
        self._requests.put(CLOSE)
        self._thread.join()
        if self._error is not None:
            log.warning(
                f"TensorBoard: some values were not written to {self.log_dir}: "
                f"{type(self._error).__name__}: {self._error}"
            )

    def _put(self, job: Callable[[Any], object]) -> bool:
        """Leave `job(writer)` for the writer thread; False once closed."""
        return self._queue(lambda: job(self._open()))

    def _queue(self, job: Callable[[], object]) -> bool:
        if self._closed:
            return False
        with self._lock:
            self._step_scalars = None  # what comes next follows them
            self._batch.append(job)
        return True

    def _open(self) -> Any:
        """The SummaryWriter, created at the first write: its import is slow, and it takes
        `purge_step` only when created."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(self.log_dir), purge_step=self._purge_step, flush_secs=self._flush_secs
            )
        return self._writer

    def _work(self) -> None:
        """Once a second, or when asked: everything logged since, in order."""
        while True:
            try:
                request = self._requests.get(timeout=self._handoff_secs)
            except queue.Empty:
                request = None
            with self._lock:
                self._step_scalars = None  # taken: later scalars are another event
                jobs, self._batch = self._batch, []
            for job in jobs:
                try:
                    job()
                except Exception as e:  # a full disk or an odd value must not stop training
                    self._error = self._error or e
            if request == CLOSE:
                return
            if isinstance(request, threading.Event):
                request.set()


def histogram(tag: str, values: torch.Tensor, bins: int = 30) -> Any:
    """The Summary `add_histogram` writes, binned by torch rather than NumPy (far cheaper):
    `bins` equal buckets from min to max, one unit wide around a constant as NumPy does."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    v = values.detach().flatten().to("cpu", torch.float64)  # a host sync on an accelerator
    if v.numel() == 0:
        raise ValueError(f"{tag}: an empty tensor has no histogram")
    low, high, total, squares = torch.stack([v.min(), v.max(), v.sum(), v.dot(v)]).tolist()
    if not math.isfinite(high - low):
        raise ValueError(f"{tag}: a value is not finite, so it has no histogram")
    left, right = (low, high) if low < high else (low - 0.5, high + 0.5)
    counts = torch.histc(v, bins, left, right).tolist()
    histo = HistogramProto(
        min=low,
        max=high,
        num=v.numel(),
        sum=total,
        sum_squares=squares,
        # bucket i ends at limit i: an empty first bucket ends at the left edge
        bucket_limit=torch.linspace(left, right, bins + 1, dtype=torch.float64).tolist(),
        bucket=[0.0, *counts],
    )
    return Summary(value=[Summary.Value(tag=tag, histo=histo)])
