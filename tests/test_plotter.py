"""The figures' worker process: the same pixels as drawing in process, no torch in it, a
fallback when it is dead or missing, and no worker left behind."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, cli, compose_config, event_accumulator

from runner import cli as runner_cli
from runner.observe import plotter
from runner import priority
from runner import workers
from runner.observe.plotter import Plotter

RNG = np.random.default_rng(0)
X = np.linspace(0, 1, 50, dtype=np.float32)
GRID = np.linspace(0, 1.2, 200, dtype=np.float32)
FIT = {
    "x": X,
    "y": (2 * X + 1 + 0.1 * RNG.standard_normal(50)).astype(np.float32),
    "x_val": X[:10] + 1.1,
    "y_val": 2 * X[:10] + 3.2,
    "grid": GRID,
    "curves": np.stack([a * GRID + 1 for a in (0.0, 1.0, 1.9)]).astype(np.float32),
}
WHENS = ["start", "epoch 2", "end"]
FIRST, SECOND = np.linspace(-0.5, 2.0, 60), np.linspace(-0.5, 2.5, 60)
LANDSCAPE = {
    "first": FIRST,
    "second": SECOND,
    "surface": np.add.outer((SECOND - 2) ** 2, (FIRST - 1) ** 2) + 0.01,
    "path": np.stack([np.linspace(0, 1, 30), np.linspace(0, 2, 30)], 1),
}
FAILED = "figures are drawn in this process: the plotter"


def worker_env() -> dict[str, str]:
    return workers.runner_env()


@pytest.fixture(scope="module")
def worker() -> Iterator[Plotter]:
    started = Plotter()
    started.start()
    yield started
    started.close()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[Plotter]:
    """This process's plotter replaced by a new one (not started), closed afterwards."""
    new = Plotter()
    monkeypatch.setattr(plotter, "PLOTTER", new)
    yield new
    new.close()


def decoded(picture: plotter.Png) -> np.ndarray:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(picture.data)).convert("RGB"))
    assert pixels.shape == (picture.height, picture.width, 3)
    return pixels


def test_worker_draws_the_same_pictures_as_this_process(worker, caplog):
    fit = worker.draw("fit", FIT, whens=WHENS)
    (landscape,) = worker.draw("landscape", LANDSCAPE, names=["b", "w"])
    assert worker.process is not None and worker.process.poll() is None  # no fallback
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [decoded(p).shape for p in fit] == [(400, 600, 3)] * 3
    assert decoded(landscape).shape == (500, 600, 3)
    assert fit == plotter.fit_images(**FIT, whens=WHENS)  # the same PNG bytes
    assert fit[0] != fit[2]  # the curve moved: the pictures differ
    assert landscape == plotter.png(plotter.landscape_image(**LANDSCAPE, names=["b", "w"]))


@pytest.mark.parametrize("escapes", [False, True])
def test_fit_snapshots_drawn_ahead_give_the_pictures_of_one_drawing_at_the_end(
    worker, escapes, monkeypatch
):
    """The data come first with the start's curve, then snapshots one by one; the worker
    draws each ahead (again, when a curve leaves the limits so far). The pictures at the
    end are those of drawing everything then, and the ones drawn ahead are not redrawn."""
    curves = FIT["curves"].copy()
    if escapes:
        curves[2] *= 3  # the end's curve leaves the limits of the data and the others
    data = {k: v for k, v in FIT.items() if k != "curves"}
    worker.prepare("fit", data | {"curves": curves[:1]}, whens=WHENS[:1])
    worker.prepare("fit", {"curves": curves[1:2]}, whens=WHENS[1:2])
    fit = worker.draw("fit", FIT | {"curves": curves}, whens=WHENS)
    assert fit == plotter.fit_images(**FIT | {"curves": curves}, whens=WHENS)
    assert worker.process is not None

    ahead = plotter.FitAhead()
    ahead.add(curves[:2], WHENS[:2], **data)
    canvas = ahead.prepared()["prepared"]
    assert len(canvas.drawn) == 2
    drawn = []
    monkeypatch.setattr(plotter, "png", lambda pixels: drawn.append(1) or plotter.Png(b"", 0, 0))
    plotter.fit_images(**FIT | {"curves": curves}, whens=WHENS, prepared=canvas)
    later = plotter._limits(np.concatenate([FIT["y"], FIT["y_val"]]), curves)
    assert (later == canvas.limits) != escapes
    assert len(drawn) == (3 if escapes else 1)  # only the end's, unless all are redrawn


def test_snapshots_not_drawn_ahead_wait_for_the_next_chance_or_the_end():
    """Without a spare core the worker keeps a snapshot for later (`now=False`): nothing is
    drawn then; the next `add` with `now`, or the draw at the end, draws what waited."""
    data = {k: v for k, v in FIT.items() if k != "curves"}
    ahead = plotter.FitAhead()
    ahead.add(FIT["curves"][:1], WHENS[:1], now=False, **data)
    assert ahead.prepared() == {}
    assert plotter.fit_images(**FIT, whens=WHENS, **ahead.prepared()) == plotter.fit_images(
        **FIT, whens=WHENS
    )
    ahead.add(FIT["curves"][1:2], WHENS[1:2], now=True)
    assert len(ahead.prepared()["prepared"].drawn) == 2  # the one that waited, and this one


def test_idle_cores_are_the_share_of_idle_clock_ticks(monkeypatch):
    """/proc/stat's first line counts every core's ticks; idle and iowait are the idle ones."""
    ticks = iter([(100, 1000), (100, 1005), (160, 1100), (160, 1105), (160, 1108), (165, 1200)])
    monkeypatch.setattr(priority, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(priority.os, "cpu_count", lambda: 4)
    idle = priority.IdleCores()
    assert idle.since_last() is None  # 5 ticks, under MIN_JIFFIES, and nothing known yet
    assert idle.since_last() == pytest.approx(2.4)  # from the first look: 4 cores * 60 / 100
    assert idle.since_last() == pytest.approx(2.4)  # too short again: the last answer stands
    assert idle.since_last() == pytest.approx(2.4)
    assert idle.since_last() == pytest.approx(0.2)  # from (160, 1100), kept open: 4 * 5 / 100
    if Path("/proc/stat").exists():
        monkeypatch.undo()
        idle_ticks, all_ticks = priority._cpu_times()
        assert 0 <= idle_ticks <= all_ticks


def test_worker_does_not_import_torch(tmp_path):
    """The real worker, asked for both kinds of picture, with Python's import log on."""
    command = [sys.executable, "-X", "importtime", "-m", "runner.plotter"]
    with (tmp_path / "imports.txt").open("w+b") as log:  # a file: a full pipe would block it
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=worker_env()
        )
        for kind, arrays, options in (
            ("fit", FIT, {"whens": WHENS}),
            ("landscape", LANDSCAPE, {"names": ["b", "w"]}),
        ):
            plotter.send(process.stdin, {"kind": kind, "options": options}, arrays)
            answer, pictures = plotter.receive(process.stdout)
            assert len(answer["sizes"]) == len(pictures) == len(options.get("whens", [0]))
        process.communicate(timeout=30)  # closes stdin: the worker ends
        log.seek(0)
        imported = {line.split(b"|")[-1].strip().decode() for line in log}
    assert process.returncode == 0
    assert "matplotlib.figure" in imported  # the log is read right
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_worker_exits_when_closed():
    p = Plotter()
    p.start()
    process = p.process
    assert process is not None and process.poll() is None
    p.close()
    assert process.returncode == 0  # ended by itself when its stdin closed, not killed
    assert p.process is None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_worker_exits_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from runner.plotter import PLOTTER; PLOTTER.start(); "
            "print(PLOTTER.process.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        env=worker_env(),
    )
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # no atexit: only the closed pipe tells the worker
    parent.wait()
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.add(int(stat.parent.name))
    return found


def wait_until(condition: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_shared_plotter_draws_for_each_worker_in_a_copy_of_its_own(monkeypatch, caplog):
    """A joblib sweep's plotter: the same pictures as drawn here, for two workers at once,
    each served by a copy forked for it, which ends with its worker's connection; the
    plotter itself ends when the sweep process closes it, and leaves no socket behind."""
    shared = workers.SharedPlotter()
    try:
        monkeypatch.setenv(workers.PLOTTER_ADDRESS, shared.address)
        first, second = Plotter(), Plotter()
        first.start()
        second.start()
        assert isinstance(first.process, plotter.Connection)
        assert isinstance(second.process, plotter.Connection)
        drawn: dict[str, list[plotter.Png]] = {}
        names = ["b", "w"]
        asks = [
            threading.Thread(target=lambda: drawn.update(fit=first.draw("fit", FIT, whens=WHENS))),
            threading.Thread(
                target=lambda: drawn.update(land=second.draw("landscape", LANDSCAPE, names=names))
            ),
        ]
        for ask in asks:
            ask.start()
        for ask in asks:
            ask.join(timeout=60)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no fallback
        assert drawn["fit"] == plotter.fit_images(**FIT, whens=WHENS)  # the same PNG bytes
        assert drawn["land"] == [plotter.png(plotter.landscape_image(**LANDSCAPE, names=names))]
        assert len(children(shared.process.pid)) == 2  # a copy for each
        first.close()
        assert wait_until(lambda: len(children(shared.process.pid)) == 1)
        second.close()
        assert wait_until(lambda: not children(shared.process.pid))
    finally:
        shared.close()
    assert shared.process.returncode == 0  # it ended by itself when its stdin closed
    assert not Path(shared.folder).exists()


def test_a_worker_without_its_shared_plotter_draws_itself(fresh, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(plotter, "in_worker", lambda: True)  # a joblib sweep's forked worker
    monkeypatch.setenv(workers.PLOTTER_ADDRESS, str(tmp_path / "gone"))  # the plotter died
    fresh.start()
    assert fresh.process is None
    assert [r.message for r in caplog.records if r.message.startswith(FAILED)]
    assert fresh.draw("fit", FIT, whens=WHENS) == plotter.fit_images(**FIT, whens=WHENS)
    monkeypatch.delenv(workers.PLOTTER_ADDRESS)  # a sweep with no shared plotter at all:
    again = Plotter()  # its workers loaded matplotlib (`runner.preload`) and draw themselves
    again.start()
    assert again.process is None and again.tried


@pytest.mark.parametrize("failure", ["dead", "unstartable"])
def test_run_draws_in_process_when_the_worker_fails(
    failure, fresh, run_experiment, monkeypatch, caplog
):
    if failure == "dead":
        fresh.start()
        fresh.process.kill()
        fresh.process.wait()
    else:
        monkeypatch.setattr(plotter, "COMMAND", [str(ROOT / "no-such-python")])
        fresh.start()
    with caplog.at_level(logging.WARNING, logger="runner"):
        metrics, run_dir = run_experiment("experiment=linear_fit", "trainer.epochs=2")
    assert metrics["status"] == "completed"
    assert [r.message for r in caplog.records if r.message.startswith(FAILED)]
    assert fresh.process is None  # and later runs draw here without trying again
    acc = event_accumulator(run_dir)
    assert [e.step for e in acc.Images("figure/fit")] == [0, 1]  # start and end
    assert [e.step for e in acc.Images("figure/landscape")] == [1]


def test_an_error_answer_falls_back(fresh, caplog):
    fresh.start()
    with pytest.raises(TypeError):  # the same error here: the request itself was wrong
        fresh.draw("fit", FIT, whens=WHENS, colour="red")
    (record,) = [r for r in caplog.records if r.message.startswith(FAILED)]
    assert "TypeError" in record.message and fresh.process is None


def test_messages_refuse_arrays_that_need_pickle():
    head = json.dumps({"arrays": [["a", "|O", [1]]]}).encode()
    stream = io.BytesIO(struct.pack("<Q", len(head)) + head + b"\0" * 8)
    with pytest.raises(ValueError, match="refused array 'a'"):
        plotter.receive(stream)
    stream = io.BytesIO()
    arrays = {"i": np.arange(6, dtype=np.int64).reshape(2, 3), "f": np.float32([[1.5]])}
    plotter.send(stream, {"kind": "k"}, arrays)
    header, back = plotter.receive(io.BytesIO(stream.getvalue()))
    assert header == {"kind": "k"}
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())


@pytest.mark.parametrize("logger, starts", [("tensorboard", True), ("none", False)])
def test_cli_starts_the_plotter_for_tensorboard(logger, starts, monkeypatch):
    started = []
    monkeypatch.setattr(plotter, "PLOTTER", SimpleNamespace(start=lambda: started.append(1)))
    runner_cli.start_plotter(compose_config("experiment=linear_fit", f"logger={logger}"))
    assert started == ([1] if starts else [])


@pytest.mark.slow
def test_command_line_run_draws_with_the_worker(tmp_path):
    run_dir = tmp_path / "run"
    done = cli("experiment=linear_fit", "trainer.epochs=3", f"hydra.run.dir={run_dir}", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert FAILED not in done.stderr + (run_dir / "runner.log").read_text()
    acc = event_accumulator(run_dir)
    assert [e.step for e in acc.Images("figure/fit")] == [0, 2]
    assert [e.step for e in acc.Images("figure/landscape")] == [2]
