"""The figures' drawing, in a worker process that starts with the run.

Importing matplotlib and drawing a run's figures take about a second of one CPU core. When
`python -m runner` runs with TensorBoard on, `runner.cli.run_job` starts this worker first
thing, before torch is imported, so matplotlib's import and a warm-up drawing happen on
another core while the training process imports torch and trains; at the end
`Figures.finish` sends the numbers and gets pictures back. Runs started another way
(`runner.run.run` called in a process, as the tests do) draw in their own process. The
workers of a joblib sweep share one plotter instead (`serve_shared`, started by
`runner.workers.SharedPlotter`), which forks a copy of itself for each worker.

The drawing functions take numpy arrays, numbers and strings only; the worker and the
training process call the same ones, and the same PNG encoding, so a picture is the same
bytes wherever it was drawn. At the start of a run the worker is sent the fit's data
(`prepare`), then snapshots; it draws them while the run trains only when a core is spare
(`runner.priority.IdleCores`), else at the end.
If the worker cannot start, dies or answers with an error, the picture is drawn in the
training process instead: a picture is never worth a failed run.

Messages are a length-prefixed JSON header and raw array bytes: nothing is unpickled. The
worker imports matplotlib and numpy, never torch, and ends when its stdin closes: the
training process closes it at exit, or the kernel does when that process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, NamedTuple

import numpy as np

from runner.priority import NICE, IdleCores
from runner.workers import PLOTTER_ADDRESS, in_worker, runner_env

log = logging.getLogger(__name__)

COMMAND = [sys.executable, "-m", "runner.plotter"]
TIMEOUT_S = 60.0  # a worker slower than this is stuck: killed, and the picture drawn here
SAFE_KINDS = "biuf"  # the array dtypes a message may hold: bool, integers, floats


# -- drawing: numpy in, PNG pictures out --


def fit_images(
    x: np.ndarray,
    y: np.ndarray,
    grid: np.ndarray,
    curves: np.ndarray,
    whens: list[str],
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    prepared: FitCanvas | None = None,
) -> list[Png]:
    """The data as dots and each snapshot's curve (a row of `curves`, titled by `whens`).

    All pictures share one background and the same axes limits (so flipping through them in
    TensorBoard shows only the curve move). A `prepared` canvas, drawn earlier for the same
    data, is used when the curves fit its limits: its background and the snapshots it has
    already drawn are reused, so only the rest are left to draw.
    """
    canvas = fit_canvas(x, y, grid, curves, x_val, y_val, prepared)
    return [canvas.picture(curve, when) for curve, when in zip(curves, whens, strict=True)]


def fit_canvas(
    x: np.ndarray,
    y: np.ndarray,
    grid: np.ndarray,
    curves: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    prepared: FitCanvas | None = None,
) -> FitCanvas:
    """`prepared` if it was drawn for these data and the limits these curves need; else a
    new canvas."""
    limits = _limits(y if y_val is None else np.concatenate([y, y_val]), curves)
    if prepared is not None and prepared.fits(x, y, grid, x_val, y_val, limits):
        return prepared
    return FitCanvas(x, y, grid, limits, x_val, y_val)


class FitCanvas:
    """The data, axes, title and legend drawn once (~0.1 s); a snapshot's curve and label
    are then blitted onto a copy of that background and encoded (milliseconds), and kept,
    so a snapshot drawn ahead of time is not drawn again."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        grid: np.ndarray,
        limits: tuple[float, float],
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> None:
        self.data, self.limits = (x, y, grid, x_val, y_val), limits
        self.drawn: dict[tuple[str, bytes], Png] = {}
        figure = self.figure = _new_figure()
        ax = self.ax = figure.add_subplot()
        for xs, ys, label, colour in (
            (x, y, "train", "tab:blue"),
            (x_val, y_val, "validation", "tab:orange"),
        ):
            if xs is not None and ys is not None:
                # plot's markers draw several times faster than scatter's
                ax.plot(xs, ys, ".", ms=4, alpha=0.6, color=colour, label=label)
        (self.line,) = ax.plot(grid, np.full_like(grid, np.nan), color="black", lw=2, label="model")
        self.line.set_animated(True)  # left out of the background, drawn per snapshot
        ax.set_ylim(*limits)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title("data and fitted curve", loc="left")
        ax.legend(loc="upper left")  # "best" would test every data point for overlap
        # the snapshot's name, right of the title: a plain text, which (unlike a title)
        # is placed without measuring the tick labels each time it changes
        self.label = ax.text(1.0, 1.01, "", transform=ax.transAxes, ha="right", va="bottom")
        self.label.set_animated(True)
        figure.canvas.draw()
        self.background = figure.canvas.copy_from_bbox(figure.bbox)

    def fits(
        self,
        x: np.ndarray,
        y: np.ndarray,
        grid: np.ndarray,
        x_val: np.ndarray | None,
        y_val: np.ndarray | None,
        limits: tuple[float, float],
    ) -> bool:
        """Drawn for these data and these limits: the pictures would be the same pixels."""
        given = (x, y, grid, x_val, y_val)
        same = all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in zip(self.data, given, strict=True)
        )
        return same and self.limits == limits

    def picture(self, curve: np.ndarray, when: str) -> Png:
        key = (when, np.ascontiguousarray(curve).tobytes())
        if key not in self.drawn:
            canvas = self.figure.canvas
            canvas.restore_region(self.background)
            self.line.set_ydata(curve)
            self.label.set_text(f"({when})")
            self.ax.draw_artist(self.line)
            self.ax.draw_artist(self.label)
            self.drawn[key] = png(_pixels(canvas))
        return self.drawn[key]


def _limits(data_y: np.ndarray, curves: np.ndarray) -> tuple[float, float]:
    """y limits that show the data and the curves, but never let a wild curve (an untrained
    model far off) squash the data into a line."""
    low, high = float(data_y.min()), float(data_y.max())
    span = max(high - low, 1e-6)
    finite = curves[np.isfinite(curves)]
    c_low, c_high = (float(finite.min()), float(finite.max())) if finite.size else (low, high)
    low, high = max(min(low, c_low), low - span), min(max(high, c_high), high + span)
    margin = 0.05 * (high - low)
    return low - margin, high + margin


def landscape_image(
    first: np.ndarray, second: np.ndarray, surface: np.ndarray, path: np.ndarray, names: list[str]
) -> np.ndarray:
    """Contours of the loss (`surface[i, j]` at `first[j], second[i]`) with the optimizer's
    path (one row per logged step) on top."""
    finite = surface[np.isfinite(surface)]
    figure = _new_figure(6.0, 5.0)
    ax = figure.add_subplot()
    if finite.size and float(finite.min()) > 0:  # a log scale shows the valley's floor
        shown, label = np.log10(np.maximum(surface, finite.min())), "log10 loss"
    else:
        shown, label = surface, "loss"
    filled = ax.contourf(first, second, shown, levels=30, cmap="viridis")
    figure.colorbar(filled, ax=ax, label=label)
    ax.plot(path[:, 0], path[:, 1], color="white", linewidth=1.5, marker=".", markersize=3)
    ax.plot(*path[0], marker="o", color="white", markeredgecolor="black", label="start")
    ax.plot(*path[-1], marker="*", markersize=12, color="red", markeredgecolor="black", label="end")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("loss landscape and the optimizer's path")
    ax.legend(loc="upper right")
    figure.canvas.draw()
    return _pixels(figure.canvas)


DRAW: dict[str, Callable[..., list[Png]]] = {
    "fit": fit_images,
    "landscape": lambda **request: [png(landscape_image(**request))],
}


class FitAhead:
    """The worker's side of `Plotter.prepare("fit", ...)`: the data come once, at the start,
    then the snapshots one by one as the run takes them. With `now`, everything so far is
    drawn at once (and the background again, if a curve leaves the limits so far); else
    it waits for the next `add` with `now`, or for the draw at the end."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.curves: list[np.ndarray] = []
        self.whens: list[str] = []
        self.canvas: FitCanvas | None = None

    def add(self, curves: np.ndarray, whens: list[str], now: bool = True, **data: Any) -> None:
        self.data |= data
        self.curves += list(curves)
        self.whens += whens
        if now and self.curves:
            self.canvas = fit_canvas(
                **self.data, curves=np.stack(self.curves), prepared=self.canvas
            )
            for curve, when in zip(self.curves, self.whens, strict=True):
                self.canvas.picture(curve, when)

    def prepared(self) -> dict[str, Any]:
        """What `DRAW["fit"]` takes from it."""
        return {} if self.canvas is None else {"prepared": self.canvas}


PREPARE: dict[str, Callable[[], Any]] = {"fit": FitAhead}


def _new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # fixed margins: tight_layout would measure every label (~0.2 s a figure)
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.12, right=0.95, bottom=0.12, top=0.92)
    FigureCanvasAgg(figure)  # draws without pyplot or a GUI backend
    return figure


def _pixels(canvas: Any) -> np.ndarray:
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


class Png(NamedTuple):
    """A picture as TensorBoard stores it: PNG bytes and the size they decode to."""

    data: bytes
    height: int
    width: int


def png(pixels: np.ndarray) -> Png:
    """RGB pixels (height, width, 3) uint8 as PNG, with Pillow (which matplotlib needs)."""
    from PIL import Image

    buffer = io.BytesIO()
    # compress_level=1: ~2x faster than the default 6, files ~10% larger
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return Png(buffer.getvalue(), pixels.shape[0], pixels.shape[1])


# -- messages: an 8-byte length, a JSON header naming each array's dtype and shape, the bytes --


def send(stream: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    listed = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
    head = json.dumps(header | {"arrays": listed}).encode()
    stream.write(struct.pack("<Q", len(head)) + head)
    for a in arrays.values():
        stream.write(a.tobytes())
    stream.flush()


def receive(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (size,) = struct.unpack("<Q", _read(stream, 8))
    header = json.loads(_read(stream, size))
    arrays = {}
    for name, dtype_str, shape in header.pop("arrays"):
        dtype = np.dtype(dtype_str)
        if dtype.kind not in SAFE_KINDS:  # numbers only: an object array would need pickle
            raise ValueError(f"refused array {name!r} of dtype {dtype_str!r}")
        count = math.prod(shape)
        arrays[name] = np.frombuffer(_read(stream, count * dtype.itemsize), dtype).reshape(shape)
    return header, arrays


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the other process closed the pipe")
    return data


# -- the training process's side --


class Plotter:
    """The worker as the training process sees it: started at most once, then asked for
    pictures; whatever goes wrong with it, `draw` draws them here instead."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | Connection | None = None
        self.tried = False

    def start(self) -> None:
        """Start the worker and return at once (a few milliseconds): it loads matplotlib
        while this process goes on. Without matplotlib there are no figures to draw.

        In a joblib sweep's worker (`runner.workers`), connect to the plotter the sweep
        shares among its workers instead; where the sweep has none, draw here, where the
        worker's preloading imported matplotlib."""
        if self.tried or importlib.util.find_spec("matplotlib") is None:
            return
        self.tried = True
        address = os.environ.get(PLOTTER_ADDRESS)
        if address is None and in_worker():
            return
        try:
            self.process = (
                Connection(address)
                if address is not None
                else subprocess.Popen(
                    COMMAND,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=runner_env(),
                )
            )
        except OSError as e:
            log.warning(f"figures are drawn in this process: the plotter did not start ({e})")

    def draw(self, kind: str, arrays: dict[str, np.ndarray | None], **options: Any) -> list[Png]:
        """The pictures of one request (`DRAW[kind]`), from the worker when one runs."""
        given = _present(arrays)
        if self.process is not None:
            try:
                return self._ask(self.process, kind, given, options)
            except BaseException as e:
                self.close()  # the pipes may be out of step (an answer half read): never reuse
                if not isinstance(e, Exception):  # Ctrl-C stops the drawing too
                    raise
                error = f"{type(e).__name__}: {e}"
                log.warning(f"figures are drawn in this process: the plotter failed ({error})")
        return DRAW[kind](**given, **options)

    @property
    def running(self) -> bool:
        return self.process is not None

    def prepare(self, kind: str, arrays: dict[str, np.ndarray | None], **options: Any) -> None:
        """Send part of what a later `draw` of `kind` will need (`PREPARE[kind]`: for the
        fit, the data first, then snapshots as they are taken), for the worker to draw
        while this process trains, when a core is spare. Nothing is waited for: callers
        keep the messages small (tens of kB in all, as figures sample large data), so they
        fit in the pipe's buffer even while the worker is busy. Without a worker, or if this
        fails, `draw` simply draws everything."""
        if self.process is None or self.process.stdin is None:
            return
        try:
            header = {"kind": kind, "prepare": True, "options": options}
            send(self.process.stdin, header, _present(arrays))
        except OSError as e:
            self.close()
            log.warning(f"figures are drawn in this process: the plotter failed ({e})")

    def _ask(
        self,
        process: subprocess.Popen[bytes] | Connection,
        kind: str,
        arrays: dict[str, np.ndarray],
        options: dict[str, Any],
    ) -> list[Png]:
        assert process.stdin is not None and process.stdout is not None
        timer = threading.Timer(TIMEOUT_S, process.kill)  # then the read below ends
        timer.start()
        try:
            send(process.stdin, {"kind": kind, "options": options}, arrays)
            answer, pictures = receive(process.stdout)
        finally:
            timer.cancel()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        sizes = answer["sizes"]
        return [Png(pictures[str(i)].tobytes(), h, w) for i, (h, w) in enumerate(sizes)]

    def close(self) -> None:
        """End the worker: it exits when its stdin closes; one that does not is killed."""
        process, self.process = self.process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a dead worker's pipe may be broken
                    pipe.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Connection:
    """A joblib sweep's shared plotter, as `Plotter` uses a plotter process of its own: a
    stream each way, `kill` (which ends a read in progress) and `wait`."""

    def __init__(self, address: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.connect(address)
        except OSError:
            self.socket.close()
            raise
        self.stdin = self.socket.makefile("wb")
        self.stdout = self.socket.makefile("rb")

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)

    def wait(self, timeout: float | None = None) -> int:
        self.socket.close()
        return 0


def _present(arrays: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """The arrays given (None: left out, as the drawing functions' defaults), contiguous."""
    return {name: np.ascontiguousarray(a) for name, a in arrays.items() if a is not None}


PLOTTER = Plotter()  # one worker per process, shared by every run of a sweep
atexit.register(PLOTTER.close)


# -- the worker's side: `python -m runner.plotter [--shared FD]` --


def serve() -> None:
    """A run's own plotter: warm up, then answer requests until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's; this ends with stdin
    # below the training process: while it trains (with as many torch threads as cores)
    # this draws in the gaps; when it waits for the pictures, the cores are this one's
    with contextlib.suppress(AttributeError, OSError):
        os.nice(NICE)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into an answer
    warm_up()
    answer(sys.stdin.buffer, answers)
    sys.stderr.flush()
    os._exit(0)  # nothing to clean up: skips matplotlib's teardown, which the parent waits for


def serve_shared(listener: socket.socket) -> None:
    """A joblib sweep's plotter (`runner.workers.share_plotter`): warm up, then fork a copy
    for each worker that connects, which answers that worker's requests for as long as it
    lives, so that workers drawing at once draw in parallel, each copy with matplotlib
    loaded. Ends when its stdin closes: the sweep process is gone. It runs at a lower
    priority from its start (`runner.workers.SharedPlotter`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's
    os.dup2(2, 1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the copies
    warm_up()
    stdin = sys.stdin.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(stdin, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj != listener:
                    if not os.read(stdin, 4096):
                        sys.stderr.flush()
                        os._exit(0)
                    continue
                try:
                    connection, _ = listener.accept()
                except OSError:  # the worker gave up already
                    continue
                if os.fork() == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    listener.close()
                    os.close(stdin)
                    with connection, connection.makefile("rb") as r, connection.makefile("wb") as w:
                        answer(r, w)
                    sys.stderr.flush()
                    os._exit(0)
                connection.close()


def answer(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer one training process's requests until it closes its end."""
    ahead: dict[str, Any] = {}  # kind: what PREPARE keeps for the next draw of that kind
    # Drawing ahead pays only on a core the training process leaves idle: with as many torch
    # threads as cores, a time slice taken from one stalls every parallel op at its barrier
    # (sine_mlp on 2 cores trained ~20% slower), so then the snapshots wait for the end.
    idle = IdleCores()
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):  # it is gone
        while True:
            request, arrays = receive(requests)
            kind = request["kind"]
            if request.get("prepare"):  # no answer: the training process does not wait
                spare = idle.since_last()
                now = spare is None or spare >= 1.0
                try:
                    ahead.setdefault(kind, PREPARE[kind]()).add(
                        **arrays, **request["options"], now=now
                    )
                except Exception as e:  # the draw at the end will draw it all
                    print(f"plotter: drawing {kind!r} ahead failed: {e}", file=sys.stderr)
                continue
            try:
                extra = ahead.pop(kind).prepared() if kind in ahead else {}
                pictures = DRAW[kind](**arrays, **request["options"], **extra)
                reply: dict[str, Any] = {"sizes": [[p.height, p.width] for p in pictures]}
            except Exception as e:
                pictures, reply = [], {"error": f"{type(e).__name__}: {e}"}
            encoded = {str(i): np.frombuffer(p.data, np.uint8) for i, p in enumerate(pictures)}
            send(answers, reply, encoded)


def warm_up() -> None:
    """Draw and encode each kind of picture once, small, and throw it away: fonts, caches and
    the drawing code load now, while the training process is busy, not when the pictures
    are wanted."""
    xs = np.linspace(0.0, 1.0, 3)
    fit_images(xs, xs, xs, xs[None], ["warm-up"])
    png(landscape_image(xs, xs, np.add.outer(xs, xs) + 1, np.stack([xs, xs], 1), ["a", "b"]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shared"]:
        serve_shared(socket.socket(fileno=int(sys.argv[2])))
    else:
        serve()
