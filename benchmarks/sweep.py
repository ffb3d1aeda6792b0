"""Sweep: 8 short linear_fit jobs with Hydra's basic launcher against `hydra/launcher=joblib`.

    python benchmarks/sweep.py [--repeats 3] [--epochs 200]

Both are one `python -m runner -m ...` process over `optimizer.lr` (8 values). The basic
launcher runs the jobs one after another in that process; joblib runs them in worker
processes (as many as there are CPUs), each of which imports torch once.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import PYTHON, machine, median, rounds, table, timed_process, verdict

SPEEDUP = 1.5  # joblib at least this much faster than basic on 2 cores
LRS = "0.01,0.02,0.05,0.1,0.15,0.2,0.3,0.4"  # 8 jobs, none diverges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    def sweep(*extra: str):
        def run(r: int) -> tuple[float, float]:
            sweep_dir = out / f"{len(list(out.iterdir()))}"  # a new one for every sweep
            return timed_process(
                [PYTHON, "-m", "runner", "-m", "experiment=linear_fit"]
                + [f"optimizer.lr={LRS}", f"trainer.epochs={args.epochs}"]
                + [f"hydra.sweep.dir={sweep_dir}", *extra]
            )

        return run

    variants = {
        "basic launcher": sweep(),
        "hydra/launcher=joblib": sweep("hydra/launcher=joblib"),
        "basic launcher, logger=none": sweep("logger=none"),
        "hydra/launcher=joblib, logger=none": sweep("hydra/launcher=joblib", "logger=none"),
    }
    results = rounds(variants, args.repeats, warmup=0)
    basic = results["basic launcher"]
    rows = []
    for name, values in results.items():
        wall, cpu = median([w for w, _ in values]), median([c for _, c in values])
        speedup = median([b[0] / v[0] for b, v in zip(basic, values, strict=True)])
        rows.append([name, f"{wall:.2f}", f"{speedup:.2f}x", f"{cpu:.2f}"])
    print(f"\nSweep of 8 linear_fit jobs, median of {args.repeats}; {machine()}\n")
    print(table(["launcher", "wall s", "speed-up vs basic", "CPU s"], rows))
    ours = median(
        [b[0] / j[0] for b, j in zip(basic, results["hydra/launcher=joblib"], strict=True)]
    )
    print(
        f"\nTarget: joblib >= {SPEEDUP}x faster than basic: {ours:.2f}x, {verdict(ours >= SPEEDUP)}"
    )


if __name__ == "__main__":
    main()
