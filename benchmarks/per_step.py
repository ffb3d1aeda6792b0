"""Per step, in one process: `runner.train.loop.train` on a built experiment against a plain loop.

    python benchmarks/per_step.py [--epochs 1500] [--repeats 7] [--wall] [--device cuda] [--compile]

Two workloads, each against the loop a person would write for it:
  - linear_fit (the post): 50 points, full batch, the post's manual update. Its steps are a
    dozen tiny ops (~0.2 ms), so this is the harshest measure of the runner's own overhead.
  - sine_mlp: 1000 points in minibatches of 64, an MLP (64, 64, tanh) with Adam; the plain
    loop batches by index slices of a randperm, as the runner does.
The runner does what `runner.run.run` does around the loop (build, the fixed observers of
`runner.run.observers`, the layout, the model graph, the first figure; `train`; close the
logger), and is timed by one more observer that reads the clock at every epoch's end, so
the one-off work before the first step and after the last (building the experiment, the
first figure, the model graph, the end figures) is left out of the per-step time; each
workload prints it as "one-off ms". Logging
runs at the trainer's default cadence (`log_every_n_steps=50`; sine_mlp's own 25), as
linear_fit is configured (every step), and off (`logger=none`). Times are CPU seconds of
the whole process (the TensorBoard writer thread included), which a shared machine's load
moves far less than wall time; `--wall` times wall seconds instead. The two can disagree:
torch's OpenMP workers spin while they wait for the next parallel op, and that spinning is
CPU time that anything which makes them sleep instead (a second thread that ran torch ops)
removes from the CPU column while it adds wall time.

`--device cuda` runs every loop on the GPU and times wall seconds instead (CPU time means
little when the CPU waits for the GPU), with a `torch.cuda.synchronize()` before each end
reading. `--compile` adds the runner with `trainer.compile=true` (torch.compile's inductor);
its one-off time includes the compile, which happens while the experiment is built.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import Ticks, composed, machine, median, table, verdict
from torch import nn

from runner.build import build
from runner.observe import dashboard
from runner.observe.figures import Figures
from runner.run import observers
from runner.train.loop import train
from runner.train.state import State

TARGET = 1.15  # per step with default logging: at most this times the plain loop
DEVICE = torch.device("cpu")  # --device
clock = time.process_time  # --wall or --device cuda: time.perf_counter
SINE = ("experiment=sine_mlp", "dataset.val_fraction=0.0", "trainer.batch_size=64")
SINE_STEPS = 16  # ceil(1000 / 64) steps an epoch
# --wide: where a step has real work (on a GPU), so compiling it can pay for its overhead
WIDE = ("experiment=sine_mlp", "dataset.val_fraction=0.0", "dataset.n=32768")
WIDE += ("trainer.batch_size=8192", "model.hidden=[1024,1024]")
WIDE_STEPS = 4


def post(epochs: int) -> tuple[float, float]:
    """The post's loop, verbatim: (seconds per step after the first, seconds in all)."""
    torch.manual_seed(42)
    x_data = torch.linspace(0, 1, 50)
    y_data = 2 * x_data + 1 + 0.1 * torch.randn(50)
    x_data, y_data = x_data.to(DEVICE), y_data.to(DEVICE)
    w = torch.tensor(0.0, requires_grad=True, device=DEVICE)
    b = torch.tensor(0.0, requires_grad=True, device=DEVICE)
    lr = 0.1
    start = clock()
    first = start
    for epoch in range(epochs):
        if epoch == 1:
            first = clock()
        y_pred = w * x_data + b
        loss = ((y_pred - y_data) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    end = finished()
    return (end - first) / (epochs - 1), end - start


def sine(
    epochs: int, n: int = 1000, batch: int = 64, width: int = 64, compiled: bool = False
) -> tuple[float, float]:
    """sine_mlp as a plain loop: index slices of a randperm, the same MLP and Adam
    (`compiled`: the model through torch.compile, as a plain loop would do it)."""
    torch.manual_seed(0)
    x = torch.rand(n)
    y = torch.sin(2 * torch.pi * x) + 0.1 * torch.randn(n)
    x, y = x.to(DEVICE), y.to(DEVICE)
    model = nn.Sequential(
        nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    ).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    if compiled:
        model = torch.compile(model)
    start = clock()
    first = start
    for epoch in range(epochs):
        if epoch == 1:
            first = clock()
        for idx in torch.randperm(n, device=DEVICE).split(batch):
            optimizer.zero_grad()
            loss = ((model(x[idx].unsqueeze(-1)).squeeze(-1) - y[idx]) ** 2).mean()
            loss.backward()
            optimizer.step()
    end = finished()
    return (end - first) / (epochs - 1) / math.ceil(n / batch), end - start


def finished() -> float:
    """The clock once the device has done what it was given."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return clock()


def runner(epochs: int, steps_per_epoch: int, *overrides: str) -> tuple[float, float]:
    """(seconds per step after the first epoch, seconds in all) of `run`'s work: build, the
    one-off views, `train`, close; the steps are timed without a sync (the log steps sync)."""
    cfg = composed(*overrides, f"trainer.epochs={epochs}", f"trainer.device={DEVICE}")
    start = clock()
    b = build(cfg, Path(tempfile.mkdtemp(prefix="bench-step-")))
    watching, ticks = observers(b, State()), Ticks(clock, b.logger.flush, epochs)
    try:
        b.logger.layout(dashboard.layout(b))
        next(o for o in watching if isinstance(o, Figures)).start()
        train(b, State(), [*watching, ticks], None)
        dashboard.add_model_graph(b, b.logger)  # as run does: after the last step
    finally:
        b.logger.close()
    end = finished()
    times = ticks.times
    return (times[-1] - times[0]) / (len(times) - 1) / steps_per_epoch, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500, help="linear_fit epochs (= steps)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--wall", action="store_true", help="wall seconds instead of CPU")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (wall time on cuda)")
    parser.add_argument("--compile", action="store_true", help="add trainer.compile=true")
    parser.add_argument("--wide", action="store_true", help="add an MLP of width 1024 (GPU)")
    args = parser.parse_args()
    global DEVICE, clock
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"No CUDA device here: --device {args.device} needs one")
    if DEVICE.type == "cuda" or args.wall:
        clock = time.perf_counter
    n = args.epochs
    m = max(n // 40, 3)  # sine_mlp epochs: about as many steps as linear_fit's
    lin = ("experiment=linear_fit",)
    workloads: dict[str, dict[str, Callable[[], tuple[float, float]]]] = {
        "linear_fit": {
            "plain loop (the post)": lambda: post(n),
            "runner, default logging": lambda: runner(n, 1, *lin, "trainer.log_every_n_steps=50"),
            "runner, as configured (logs every step)": lambda: runner(n, 1, *lin),
            "runner, logger=none": lambda: runner(
                n, 1, *lin, "logger=none", "trainer.log_every_n_steps=50"
            ),
        },
        "sine_mlp": {
            "plain loop (index slices)": lambda: sine(m),
            "runner, default logging": lambda: runner(m, SINE_STEPS, *SINE),
            "runner, no histograms": lambda: runner(
                m, SINE_STEPS, *SINE, "logger.histogram_every_n_steps=null"
            ),
            "runner, logger=none": lambda: runner(m, SINE_STEPS, *SINE, "logger=none"),
        },
    }
    steps = {"linear_fit": n, "sine_mlp": m * SINE_STEPS}
    if args.wide:
        w = max(n // 4 // WIDE_STEPS, 3)
        workloads["sine_mlp, width 1024, batch 8192"] = {
            "plain loop (index slices)": lambda: sine(w, 32768, 8192, 1024),
            "runner, default logging": lambda: runner(w, WIDE_STEPS, *WIDE),
            "runner, logger=none": lambda: runner(w, WIDE_STEPS, *WIDE, "logger=none"),
            "runner, no histograms": lambda: runner(
                w, WIDE_STEPS, *WIDE, "logger.histogram_every_n_steps=null"
            ),
        }
        steps["sine_mlp, width 1024, batch 8192"] = w * WIDE_STEPS
    if args.compile:
        workloads["linear_fit"]["runner, trainer.compile=true"] = lambda: runner(
            n, 1, *lin, "trainer.log_every_n_steps=50", "trainer.compile=true"
        )
        workloads["sine_mlp"]["runner, trainer.compile=true"] = lambda: runner(
            m, SINE_STEPS, *SINE, "trainer.compile=true"
        )
        workloads["sine_mlp"]["plain loop, torch.compile(model)"] = lambda: sine(m, compiled=True)
        if args.wide:
            wide = workloads["sine_mlp, width 1024, batch 8192"]
            wide["runner, trainer.compile=true"] = lambda: runner(
                w, WIDE_STEPS, *WIDE, "trainer.compile=true"
            )
            wide["plain loop, torch.compile(model)"] = lambda: sine(w, 32768, 8192, 1024, True)
    context = machine()  # the load average before the runs
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(args.repeats + 1):  # round 0 warms up and is dropped
        for workload, loops in workloads.items():
            for name, fn in loops.items():
                value = fn()
                if r > 0:
                    results.setdefault((workload, name), []).append(value)
        print(f"  round {r + 1}/{args.repeats + 1} done", flush=True)

    kind = "wall time" if clock is time.perf_counter else "CPU time"
    print(f"\nPer step on {DEVICE}, {kind}, median of {args.repeats}; {context}\n")
    rows = []
    verdicts = []
    for workload, loops in workloads.items():
        plain = results[workload, next(iter(loops))]
        plain_step = median([s for s, _ in plain])
        for name in loops:
            runs = results[workload, name]
            per_step = median([s for s, _ in runs])
            ratio = per_step / plain_step
            per_round = median([s / p for (s, _), (p, _) in zip(runs, plain, strict=True)])
            once = median([total - s * steps[workload] for s, total in runs])
            rows.append(
                [workload, name, f"{per_step * 1e6:.0f}", f"{ratio:.2f}x", f"{per_round:.2f}x"]
                + [f"{once * 1e3:.0f}"]
            )
            if name == "runner, default logging":
                verdicts.append(f"{workload}: {ratio:.2f}x, {verdict(ratio <= TARGET)}")
    header = ["workload", "loop", "µs per step", "vs plain (of medians)", "vs plain (per round)"]
    print(table([*header, "one-off ms"], rows))
    print(
        f"\nTarget: default logging <= {TARGET}x the plain loop (ratio of medians): "
        + "; ".join(verdicts)
    )


if __name__ == "__main__":
    main()
