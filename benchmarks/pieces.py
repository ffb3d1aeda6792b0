"""The small costs behind the larger tables, each timed on its own in one process.

    python benchmarks/pieces.py [--repeats 5]

A diagnostic, not a target (medians of the repeats, alternating where two things compare):
  1. linear_fit's step, built up from the post's loop to the runner's `train`: the post's
     loop; the same with the runner's formula model and loss (`Built.loss_on`); that inside
     the runner's `GD.step(closure)`; `train` itself with no observers (its only log steps
     the first and the last).
  2. What TensorBoard's writer spends on one log step of linear_fit's 19 scalars: 19
     `SummaryWriter.add_scalar` calls, against one `Summary` holding the 19 values written
     with `writer.file_writer.add_summary` (what `add_scalar` itself does, once).
  3. One `add_histogram` of a 64x64 weight: numpy's default "tensorflow" bins, and 30 bins.
  4. Hydra: importing it, then composing `experiment=linear_fit` twice (`@hydra.main` in
     Hydra 1.3 composes once to learn the run mode, then again for the run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from common import built, machine, median, table

STEPS = 3000  # linear_fit steps per timing
LOG_STEPS = 200  # log steps per timing


def step_costs(repeats: int) -> list[list[str]]:
    import torch

    from runner.train.loop import train
    from runner.train.state import State

    def linear_fit():
        overrides = ["experiment=linear_fit", "logger=none", f"trainer.epochs={STEPS}"]
        overrides += ["trainer.log_every_n_steps=1000000000", "trainer.device=cpu"]
        return built("bench-pieces-", *overrides)

    def post() -> float:
        torch.manual_seed(42)
        x = torch.linspace(0, 1, 50)
        y = 2 * x + 1 + 0.1 * torch.randn(50)
        w, b = (torch.tensor(0.0, requires_grad=True) for _ in range(2))
        start = time.process_time()
        for _ in range(STEPS):
            loss = ((w * x + b - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
                b -= 0.1 * b.grad
            w.grad.zero_()
            b.grad.zero_()
        return (time.process_time() - start) / STEPS

    def with_loss_on() -> float:
        bb = linear_fit()
        w, b = bb.params["w"], bb.params["b"]
        start = time.process_time()
        for _ in range(STEPS):
            loss = bb.loss_on(None)
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
                b -= 0.1 * b.grad
            w.grad.zero_()
            b.grad.zero_()
        return (time.process_time() - start) / STEPS

    def with_gd_closure() -> float:
        bb = linear_fit()

        def closure() -> torch.Tensor:
            bb.optimizer.zero_grad()
            loss = bb.loss_on(None)
            loss.backward()
            return loss.detach()

        start = time.process_time()
        for _ in range(STEPS):
            bb.optimizer.step(closure)
        return (time.process_time() - start) / STEPS

    def runner_train() -> float:
        bb = linear_fit()
        start = time.process_time()
        train(bb, State(), [], None)
        return (time.process_time() - start) / STEPS

    variants: dict[str, Callable[[], float]] = {
        "the post's loop": post,
        "+ the runner's formula model and loss (Built.loss_on)": with_loss_on,
        "+ GD.step(closure), zero_grad in the closure": with_gd_closure,
        "runner.train.loop.train, no observers (log steps: first, last)": runner_train,
    }
    return [[name, f"{t * 1e6:.1f}"] for name, t in timed(variants, repeats).items()]


def writer_costs(repeats: int) -> list[list[str]]:
    import torch
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    writer = SummaryWriter(tempfile.mkdtemp(prefix="bench-pieces-"))
    tags = [f"tag/{i}" for i in range(19)]  # linear_fit: 9 of Scalars, 10 of GraphStats
    weight = torch.randn(64, 64).double().numpy()

    def each() -> float:
        start = time.process_time()
        for step in range(LOG_STEPS):
            for tag in tags:
                writer.add_scalar(tag, 0.5, step, 1.0)
        return (time.process_time() - start) / LOG_STEPS

    def merged() -> float:
        start = time.process_time()
        for step in range(LOG_STEPS):
            values = [v for tag in tags for v in scalar(tag, 0.5, new_style=False).value]
            writer.file_writer.add_summary(Summary(value=values), step, 1.0)
        return (time.process_time() - start) / LOG_STEPS

    def histogram(**bins: object) -> Callable[[], float]:
        def run() -> float:
            start = time.process_time()
            for step in range(LOG_STEPS):
                writer.add_histogram("h", weight, step, **bins)
            return (time.process_time() - start) / LOG_STEPS

        return run

    variants = {
        "19 scalars: 19 add_scalar calls": each,
        "19 scalars: one Summary, file_writer.add_summary": merged,
        "add_histogram, 64x64, default bins": histogram(),
        "add_histogram, 64x64, bins=30": histogram(bins=30),
    }
    rows = [[name, f"{t * 1e3:.3f}"] for name, t in timed(variants, repeats).items()]
    writer.close()
    return rows


def hydra_costs() -> list[list[str]]:
    """In a fresh process: Hydra's import and two compositions (the first one's is higher)."""
    import subprocess

    from common import PYTHON, ROOT

    code = (
        "import time; t0 = time.perf_counter()\n"
        "from hydra import compose, initialize_config_dir\n"
        "from runner.__main__ import CONFIGS\n"
        "t1 = time.perf_counter(); times = []\n"
        "for _ in range(2):\n"
        "    with initialize_config_dir(str(CONFIGS), version_base='1.3'):\n"
        "        compose('config', ['experiment=linear_fit'])\n"
        "    times.append(time.perf_counter())\n"
        "print(t1 - t0, times[0] - t1, times[1] - times[0])\n"
    )
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True)
    imported, first, second = (float(v) for v in out.stdout.split())
    return [
        ["import hydra, runner.__main__", f"{imported:.3f}"],
        ["compose experiment=linear_fit, first", f"{first:.3f}"],
        ["compose experiment=linear_fit, again", f"{second:.3f}"],
    ]


def timed(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            results[name].append(fn())
    return {name: median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"Pieces, median of {args.repeats}; {machine()}\n")
    print(table(["1. linear_fit, one step", "CPU µs"], step_costs(args.repeats)))
    print()
    print(table(["2-3. TensorBoard writer, per log step", "CPU ms"], writer_costs(args.repeats)))
    print()
    print(table(["4. Hydra, in a fresh process", "wall s"], hydra_costs()))


if __name__ == "__main__":
    main()
