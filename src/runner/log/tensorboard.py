"""Where logged values go: TensorBoard event files in the run directory, or nowhere.

Loggers only write what they are given (plain floats, host tensors, strings); the loop
decides what and when. The TensorBoard logger encodes its events itself (`runner.events`)
and writes them from a background thread, so a log step costs the training thread a queue
put; `torch.utils.tensorboard` is imported only for the model graph (`graph`).
"""

from __future__ import annotations

import collections
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from runner.log import events
from runner.priority import spare_time_only

HParam = int | float | str | bool
log = logging.getLogger(__name__)


class Logger(Protocol):
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...
    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def figure(self, step: int, tag: str, figure: Any) -> None: ...
    def image(self, step: int, tag: str, pixels: np.ndarray) -> None: ...
    def png(self, step: int, tag: str, data: bytes, height: int, width: int) -> None: ...
    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None: ...
    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None: ...
    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], status: str = ...
    ) -> None: ...
    def resumed(self, step: int) -> None: ...
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

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        pass

    def png(self, step: int, tag: str, data: bytes, height: int, width: int) -> None:
        pass

    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None:
        pass

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def hparams(
        self, hparams: Mapping[str, HParam], metrics: Mapping[str, float], status: str = "completed"
    ) -> None:
        pass

    def resumed(self, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


Encode = Callable[[], bytes | tuple[bytes, ...]]  # builds an Event (or a few); on the writer thread
Item = Encode | threading.Event | None  # an event to write, a flush to confirm, or the end


class TensorBoard:
    """Event files straight in the run directory, so `tensorboard --logdir outputs` lists runs.

    Every method takes what it needs from its arguments at once (a histogram copies the
    tensor, a figure is rendered) and queues the rest: encoding, framing and file writes
    happen on one writer thread, in call order, in the cores' spare time
    (`runner.priority`). Where there is none (every core busy with training), the queue
    would only grow, so a call that finds its oldest item queued over `flush_secs` ago
    writes the queue itself: the file is never further behind than its flushes allow.
    `flush` waits until everything is written; `close` drains and joins the thread, and is
    safe to call twice. Values logged after `close` are dropped.
    """

    def __init__(self, log_dir: str | Path, flush_secs: float = 10.0) -> None:
        directory = Path(log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / events.file_name()
        self._file = self.path.open("wb")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._items: collections.deque[tuple[float, Item]] = collections.deque()  # (put at, item)
        self._ready = threading.Condition()  # guards _items; notified on each put
        self._write_lock = threading.Lock()  # one writer at a time: items go out in order
        self._ended = False  # the writer thread took the end (None)
        self._error: BaseException | None = None
        self._bins: np.ndarray | None = None
        self._edges: dict[torch.device, torch.Tensor] = {}  # the bins on each device used
        self._thread: threading.Thread | None = threading.Thread(
            target=self._write_all, name="runner-tensorboard", daemon=True
        )
        self._thread.start()
        # never stall the training's parallel ops; False where the system has no SCHED_IDLE
        self.spare_time = spare_time_only(self._thread.native_id)
        wall = time.time()
        self._put(lambda: events.file_version(wall))
        self.flush()  # like SummaryWriter: a readable (empty) run exists from the start

    def resumed(self, step: int) -> None:
        """The run goes on from a checkpoint taken at `step`: whatever an earlier file logged
        from `step` on (after the checkpoint, before the run stopped) is superseded."""
        wall = time.time()
        self._put(lambda: events.restart(wall, step))

    # -- what the loop logs --

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One Event per call holding every value, read back as one scalar per tag."""
        wall, items = time.time(), list(values.items())
        self._put(lambda: self._summary(wall, step, [events.scalar(t, float(v)) for t, v in items]))

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        """On a CUDA device the values are binned there, and ~12 kB of counts cross to the
        host instead of the tensor; otherwise they are copied and binned on the writer thread
        (MPS has no float64 to bin in)."""
        wall, bins = time.time(), self._default_bins()
        if values.device.type == "cuda":
            stats = events.histogram_stats(values, self._edges_on(values.device))
            stats = stats.cpu().numpy()  # note: a sync, at a log step
            encode = functools.partial(events.histogram_from_stats, tag, stats[:5], stats[5:], bins)
        else:
            values = values.detach().cpu()
            if values.dtype == torch.bfloat16:  # numpy has no bfloat16
                values = values.to(torch.float16)
            array = values.numpy().astype(float)  # a copy: the next update may change it
            encode = functools.partial(events.histogram, tag, array, bins)
        self._put(lambda: self._summary(wall, step, [encode()]))

    def text(self, step: int, tag: str, text: str) -> None:
        # Markdown would reflow the tree; four leading spaces keep it a code block.
        content = "\n".join("    " + line for line in text.splitlines())
        wall = time.time()
        self._put(lambda: self._summary(wall, step, [events.text(tag, content)]))

    def figure(self, step: int, tag: str, figure: Any) -> None:
        """A matplotlib figure as a PNG image, drawn on the Agg canvas without pyplot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        width, height = canvas.get_width_height()
        rgb = np.asarray(canvas.buffer_rgba()).reshape(height, width, 4)[:, :, :3].copy()
        if "matplotlib.pyplot" in sys.modules:  # a pyplot figure would stay open otherwise
            sys.modules["matplotlib.pyplot"].close(figure)
        self.image(step, tag, rgb)

    def image(self, step: int, tag: str, pixels: np.ndarray) -> None:
        """An RGB picture, (height, width, 3) uint8, PNG-encoded on the writer thread."""
        rgb = np.array(pixels, dtype=np.uint8)  # a copy: a canvas reuses its buffer
        wall = time.time()

        def encode() -> bytes:
            from runner.observe.plotter import png

            picture = png(rgb)
            return self._png(wall, step, tag, picture.data, picture.height, picture.width)

        self._put(encode)

    def png(self, step: int, tag: str, data: bytes, height: int, width: int) -> None:
        """An RGB picture already encoded as PNG (as the plotter process sends them)."""
        wall = time.time()
        self._put(lambda: self._png(wall, step, tag, data, height, width))

    def _png(self, wall: float, step: int, tag: str, data: bytes, height: int, width: int) -> bytes:
        return self._summary(wall, step, [events.image(tag, height, width, 3, data)])

    def layout(self, layout: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """The Custom Scalars dashboard: {category: {chart: ["Multiline", [tag regexes]]}}."""
        value = events.layout(layout)
        wall = time.time()
        self._put(lambda: self._summary(wall, 0, [value]))

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model traced on `example` for the Graphs dashboard; raises if tracing fails.

        Traced here, before training, in eval mode as `add_graph` does, but without its
        re-run check, which costs seconds of imports. The trace is turned into TensorBoard's
        protos on the writer thread: that reads the traced graph's structure only, and
        needs `torch.utils.tensorboard`, whose import (~0.2 s, most of it absl and protobuf)
        then runs beside the first steps instead of before them.
        """
        training = model.training
        model.train(False)
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        finally:
            model.train(training)
        trace_graph = traced.graph
        torch._C._jit_pass_inline(trace_graph)
        wall = time.time()

        def encode() -> tuple[bytes, ...]:
            from tensorboard.compat.proto.config_pb2 import RunMetadata
            from tensorboard.compat.proto.graph_pb2 import GraphDef
            from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
            from tensorboard.compat.proto.versions_pb2 import VersionDef
            from torch.utils.tensorboard._pytorch_graph import parse

            try:  # what torch.utils.tensorboard._pytorch_graph.graph does after its trace
                nodes = parse(trace_graph, traced, example)
            except Exception as e:  # traced, but not in a form TensorBoard can show
                log.debug(f"no model graph for TensorBoard ({type(e).__name__}: {e})")
                return ()
            graph_def = GraphDef(node=nodes, versions=VersionDef(producer=22))
            device = DeviceStepStats(device="/device:CPU:0")
            stats = RunMetadata(step_stats=StepStats(dev_stats=[device]))
            return (
                events.event(wall, 0, events.graph_def(graph_def.SerializeToString())),
                events.event(wall, 0, events.run_metadata("step1", stats.SerializeToString())),
            )

        self._put(encode)

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
        params, values = dict(hparams), dict(metrics)
        end = events.STATUS["success" if status == "completed" else "failure"]
        wall = time.time()
        self._put(lambda: self._summary(wall, 0, [events.session_start(params)]))
        self._put(lambda: self._summary(wall, 0, [events.session_end(end, wall)]))
        self.scalars(0, values)

    def flush(self) -> None:
        """Wait until everything logged so far is in the file."""
        done = threading.Event()
        if self._put(done):
            self._catch_up()  # the writer thread may have no spare time to do it
            while not done.wait(0.1) and self._thread is not None and self._thread.is_alive():
                pass

    def close(self) -> None:
        """Safe to call twice: a `finally` and a signal handler may both close."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._catch_up()
        with self._ready:
            self._items.append((time.monotonic(), None))
            self._ready.notify()
        thread.join()
        self._file.close()
        if self._error is not None:
            log.warning(f"TensorBoard: some events were not written to {self.path}: {self._error}")

    # -- the writer thread --

    def _put(self, item: Encode | threading.Event) -> bool:
        if self._thread is None:
            return False
        now = time.monotonic()
        with self._ready:
            self._items.append((now, item))
            behind = now - self._items[0][0] > self._flush_secs
            self._ready.notify()
        if behind:
            self._catch_up()
        return True

    def _catch_up(self) -> None:
        """Write everything queued on the calling thread. A writer thread caught in the middle
        of an item holds the lock: waiting for it leaves a core idle, where it finishes."""
        with self._write_lock:
            while self._write_next(end_ok=False):
                pass

    def _summary(self, wall: float, step: int, values: list[bytes]) -> bytes:
        return events.event(wall, step, events.summary(values))

    def _edges_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._edges:
            self._edges[device] = torch.from_numpy(self._default_bins()).to(device)
        return self._edges[device]

    def _default_bins(self) -> np.ndarray:
        if self._bins is None:
            self._bins = np.array(events.default_bins())
        return self._bins

    def _write_all(self) -> None:
        """The writer thread: write queued items in order until the end; flush the file
        when idle and every flush_secs."""
        while not self._ended:
            with self._ready:
                if not self._items:
                    self._ready.wait(self._flush_secs)
                idle = not self._items
            with self._write_lock:
                if idle:
                    self._flush_file()
                else:
                    self._write_next(end_ok=True)
        self._flush_file()

    def _write_next(self, end_ok: bool) -> bool:
        """Under the write lock: write the oldest item. False when none is queued or the next
        is the end, which only the writer thread takes (`end_ok`)."""
        with self._ready:
            if not self._items or (self._items[0][1] is None and not end_ok):
                return False
            _, item = self._items.popleft()
        if item is None:
            self._ended = True
            return False
        if isinstance(item, threading.Event):
            self._flush_file()
            item.set()
            return True
        try:
            encoded = item()  # one Event, or a few in a tuple
            for event in encoded if isinstance(encoded, tuple) else (encoded,):
                self._file.write(events.record(event))
        except Exception as e:  # a full disk or a bad value must not stop training
            self._error = self._error or e
        if time.monotonic() - self._last_flush > self._flush_secs:
            self._flush_file()
        return True

    def _flush_file(self) -> None:
        try:
            self._file.flush()
        except OSError as e:
            self._error = self._error or e
        self._last_flush = time.monotonic()
