"""Per step, in one process: `runner.loop.train` on a built experiment against the plain loop.

    python benchmarks/per_step.py [--steps 2000] [--repeats 5]

The plain loop is the post's (DESIGN.md), run for the same number of steps. The runner's
time is `train()` plus closing the logger, so the background TensorBoard writer's work is
counted. Variants: linear_fit as configured (it logs every step), with the trainer's default
logging cadence (`trainer.log_every_n_steps=50`), and with `logger=none`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import machine, median, rounds, table, verdict
from hydra import compose, initialize_config_dir

from runner.__main__ import CONFIGS
from runner.build import build
from runner.loop import train

TARGET = 1.15  # per step with default logging: at most this times the plain loop
# CPU time of this process (all threads: the TensorBoard writer's work counts): on a shared
# machine it moves far less with other processes' load than wall time does.
clock = time.process_time


def plain(steps: int) -> tuple[float, float]:
    """The post's loop, verbatim: (seconds per step after the first, seconds in all)."""
    torch.manual_seed(42)
    x_data = torch.linspace(0, 1, 50)
    y_data = 2 * x_data + 1 + 0.1 * torch.randn(50)
    w = torch.tensor(0.0, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    lr = 0.1
    start = clock()
    first = 0.0
    for step in range(steps):
        if step == 1:
            first = clock()
        y_pred = w * x_data + b
        loss = ((y_pred - y_data) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    end = clock()
    return (end - first) / (steps - 1), end - start


def runner(steps: int, *overrides: str) -> tuple[float, float]:
    """(seconds per step after the first, seconds in all) of `train` and `logger.close`.

    linear_fit is full batch, so its scheduler steps once per step: timing those calls
    gives the steady per-step cost, without the one-off work before the first step and
    after the last (the first figure, the model graph, the autograd text, the end figures).
    """
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", ["experiment=linear_fit", f"trainer.epochs={steps}", *overrides])
    built = build(cfg, Path(tempfile.mkdtemp(prefix="bench-step-")))
    ticks: list[float] = []
    scheduler_step = built.scheduler.step

    def tick() -> None:
        ticks.append(clock())
        scheduler_step()

    built.scheduler.step = tick
    start = clock()
    try:
        train(built)
    finally:
        built.logger.close()
    end = clock()
    return (ticks[-1] - ticks[0]) / (len(ticks) - 1), end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.steps
    no_figures = "logger.figure_every_n_epochs=null"
    variants = {
        "plain loop (the post)": lambda r: plain(n),
        "runner, default logging (log_every_n_steps=50)": lambda r: runner(
            n, "trainer.log_every_n_steps=50"
        ),
        "runner, default logging, no per-epoch figures": lambda r: runner(
            n, "trainer.log_every_n_steps=50", no_figures
        ),
        "runner, linear_fit as configured (logs every step)": lambda r: runner(n),
        "runner, logging off (logger=none)": lambda r: runner(
            n, "logger=none", "trainer.log_every_n_steps=50"
        ),
    }
    results = rounds(variants, args.repeats)
    base = median([r[0] for r in results["plain loop (the post)"]])
    base_total = median([r[1] for r in results["plain loop (the post)"]])
    rows = []
    for name, values in results.items():
        t, total = median([v[0] for v in values]), median([v[1] for v in values])
        once = total - t * n  # before the first step and after the last
        rows.append(
            [
                name,
                f"{t * 1e6:.1f}",
                f"{t / base:.2f}x",
                f"{once * 1e3:.0f}",
                f"{total / base_total:.2f}x",
            ]
        )
    print(f"\nPer step, linear_fit, {n} steps, median of {args.repeats}; {machine()}\n")
    header = ["loop", "µs per step", "vs plain", "one-off ms per run", "whole train() vs plain"]
    print(table(header, rows))
    default = median([v[0] for v in results["runner, default logging (log_every_n_steps=50)"]])
    print(
        f"\nTarget: default logging <= {TARGET}x the plain loop: {default / base:.2f}x, "
        f"{verdict(default / base <= TARGET)}"
    )


if __name__ == "__main__":
    main()
