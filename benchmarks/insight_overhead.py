"""What the default insight logging costs: sine_mlp with TensorBoard logging as shipped
(graph stats, saved bytes, histograms, update ratios, figures, layout, model graph)
against the same run with logging off. Run by hand from the repo root:

    python benchmarks/insight_overhead.py              # 5 repeats of each, alternating
    python benchmarks/insight_overhead.py --repeats 9 --threads 1

Each run is `runner.run.run`, in this process. Each configuration runs once first to pay
one-time imports (tensorboard, matplotlib), then the two alternate so that machine noise
hits both alike.

Two spans of each run are timed, in wall clock (what the user waits for) and in CPU time
of the process (the training thread plus the TensorBoard writer thread; the figures are
drawn in the training thread, at the end):
  - training: from the end of the first epoch to the end of the last, so every step's
    logging, the epochs' figures and validation, and the writer thread's work meanwhile;
  - the whole `run()`: build, the model graph and first figure, training, the last
    figures, metrics.json and closing the event file.
The median of the per-round ratios is reported for each; the run's one-off cost (whole
minus training) is reported in milliseconds. Exits non-zero when the training ratio is
1.10 or more in wall or CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import composed

import runner.run
from runner.build import Built
from runner.observe import Look, Observer
from runner.train.state import State

LIMIT = 1.10
OFF = (
    "logger=none",
    "logger.graph_every_n_steps=1000000000",  # the graph only at step 0
    "logger.histogram_every_n_steps=null",
)


TICKS: list[tuple[float, float]] = []  # (wall, cpu) at the end of each epoch


class Ticks:
    """An observer that only reads the clocks at every epoch's end (after the others); at
    the last one, once what was handed to the TensorBoard writer is written."""

    def __init__(self, b: Built) -> None:
        self.b = b

    def log(self, look: Look) -> None:
        pass

    def epoch(self, state: State) -> None:
        if state.epoch == self.b.checked.trainer.epochs:
            self.b.logger.flush()
        TICKS.append((time.perf_counter(), time.process_time()))

    def end(self, state: State) -> None:
        pass


# run() takes its observers from runner.run.observers, a fixed list: a timing run adds one
# at the end by wrapping that function here, in this process only.
_observers = runner.run.observers


def _ticked_observers(b: Built, *args: Any, **kwargs: Any) -> list[Observer]:
    return [*_observers(b, *args, **kwargs), Ticks(b)]


runner.run.observers = _ticked_observers


def timed(overrides: list[str]) -> tuple[float, float, float, float]:
    """(training wall, training CPU, whole-run wall, whole-run CPU) seconds of one run."""
    cfg = composed(*overrides)
    TICKS.clear()
    with tempfile.TemporaryDirectory() as run_dir:
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = runner.run.run(cfg, Path(run_dir))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert metrics["status"] == "completed", metrics
    assert len(TICKS) >= 3, "the experiment needs a few epochs"
    (first_wall, first_cpu), (last_wall, last_cpu) = TICKS[0], TICKS[-1]
    return last_wall - first_wall, last_cpu - first_cpu, wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sine_mlp")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("overrides", nargs="*", help="extra overrides for both runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = [f"experiment={args.experiment}", "trainer.device=cpu", *args.overrides]
    configs = {"insight (default)": base, "logging off": [*base, *OFF]}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for overrides in configs.values():
        timed(overrides)  # warm-up: one-time imports
    for _ in range(args.repeats):
        for name, overrides in configs.items():
            times[name].append(timed(overrides))
    names = ("training wall", "training CPU", "whole run wall", "whole run CPU")
    on, off = times["insight (default)"], times["logging off"]
    ratios = {}
    for which, clock in enumerate(names):
        for name, runs in times.items():
            shown = ", ".join(f"{t[which]:.3f}" for t in runs)
            median = statistics.median(t[which] for t in runs)
            print(f"{clock:14s} {name:18s} median {median:.3f}s  runs {shown}")
        # each round's two runs are next to each other: their ratio is what the machine's
        # drift affects least
        ratios[clock] = statistics.median(a[which] / b[which] for a, b in zip(on, off))
    once = [(a[2] - a[0]) - (b[2] - b[0]) for a, b in zip(on, off, strict=True)]
    print(
        f"\nmedian of per-round ratios, {args.experiment}, {torch.get_num_threads()} torch "
        f"thread(s), {args.repeats} rounds:"
    )
    for clock, ratio in ratios.items():
        print(f"  {clock:14s} {ratio:.3f}")
    once_ms = statistics.median(once) * 1e3
    print(f"  one-off cost of insight (whole run minus training): {once_ms:.0f} ms")
    limit = max(ratios["training wall"], ratios["training CPU"])
    print(f"training: {limit:.3f} against the limit {LIMIT:.2f}")
    return 0 if limit < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
