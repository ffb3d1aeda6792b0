"""What the default insight logging costs: sine_mlp with TensorBoard logging as shipped
(graph stats, saved bytes, histograms, update ratios, figures, layout, model graph)
against the same run with logging off. Run by hand from the repo root:

    python benchmarks/insight_overhead.py              # 5 repeats of each, alternating
    python benchmarks/insight_overhead.py --repeats 9 --threads 1

Each configuration runs once first to pay one-time imports (tensorboard, matplotlib),
then the two alternate so that machine noise hits both alike; the medians of the
wall-clock time of `run()` (build, train, figures, metrics.json, close) are compared.
Exits non-zero when the ratio is 1.10 or more.
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
from runner.run import run

LIMIT = 1.10
OFF = (
    "logger=none",
    "logger.graph_every_n_steps=1000000000",  # the graph only at step 0
    "logger.histogram_every_n_steps=null",
)


def timed(overrides: list[str]) -> float:
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        metrics = run(cfg, Path(run_dir))
        elapsed = time.perf_counter() - started
    assert metrics["status"] == "completed", metrics
    return elapsed


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
    times: dict[str, list[float]] = {name: [] for name in configs}
    for overrides in configs.values():
        timed(overrides)  # warm-up: one-time imports
    for _ in range(args.repeats):
        for name, overrides in configs.items():
            times[name].append(timed(overrides))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:18s} median {medians[name]:.3f}s  runs {', '.join(f'{x:.3f}' for x in t)}")
    ratio = medians["insight (default)"] / medians["logging off"]
    print(f"ratio {ratio:.3f} (limit {LIMIT:.2f}) on {torch.get_num_threads()} torch thread(s)")
    return 0 if ratio < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
