"""What the default insight logging costs: sine_mlp with TensorBoard logging as shipped
(graph stats, saved bytes, histograms, update ratios, figures, layout, model graph)
against the same run with logging off. Run by hand from the repo root:

    python benchmarks/insight_overhead.py              # 5 repeats of each, alternating
    python benchmarks/insight_overhead.py --repeats 9 --threads 1

As `python -m runner` does, the plotter process is started first, so the figures are
drawn there while the run trains, and the run waits only for the last pictures. Each
configuration runs once first to pay one-time imports (tensorboard, matplotlib), then the
two alternate so that machine noise hits both alike. Each `run()` (build, train, figures,
metrics.json, close) is timed twice: wall clock, what the user waits for, and the CPU time
of the training process (the training thread plus the TensorBoard writer thread; not the
plotter's). The median of the per-round ratios is reported; exits non-zero when either
is 1.10 or more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from runner.__main__ import CONFIGS
from runner.plotter import PLOTTER
from runner.run import run

LIMIT = 1.10
OFF = (
    "logger=none",
    "logger.graph_every_n_steps=1000000000",  # the graph only at step 0
    "logger.histogram_every_n_steps=null",
)


def timed(overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = run(cfg, Path(run_dir))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert metrics["status"] == "completed", metrics
    return wall, cpu


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
    PLOTTER.start()  # as runner.cli.run_job does before torch is imported
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for overrides in configs.values():
        timed(overrides)  # warm-up: one-time imports
    for _ in range(args.repeats):
        for name, overrides in configs.items():
            times[name].append(timed(overrides))
    ratios = {}
    for clock, which in (("wall", 0), ("cpu", 1)):
        medians = {name: statistics.median(t[which] for t in runs) for name, runs in times.items()}
        for name, runs in times.items():
            shown = ", ".join(f"{t[which]:.3f}" for t in runs)
            print(f"{clock:4s} {name:18s} median {medians[name]:.3f}s  runs {shown}")
        # each round's two runs are next to each other: their ratio is what the machine's
        # drift affects least
        pairs = zip(times["insight (default)"], times["logging off"], strict=True)
        ratios[clock] = statistics.median(on[which] / off[which] for on, off in pairs)
    print(
        f"median of per-round ratios: wall {ratios['wall']:.3f}, cpu {ratios['cpu']:.3f} "
        f"(limit {LIMIT:.2f}) with {torch.get_num_threads()} torch thread(s), {args.experiment}"
    )
    return 0 if max(ratios.values()) < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
