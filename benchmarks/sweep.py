"""Sweep: 8 linear_fit jobs with Hydra's basic launcher against `hydra/launcher=joblib`.

    python benchmarks/sweep.py [--repeats 3] [--epochs 3000 1000 200]

Both are one `python -m runner -m ...` process over `optimizer.lr` (8 values). The basic
launcher runs the jobs one after another in that process; joblib (hydra-joblib-launcher,
as it ships) runs them in its loky worker processes, as many as there are CPUs, each of
which imports torch and the runner itself. Each job length given runs both launchers:
200 epochs is `linear_fit` as shipped, 3000 epochs (jobs of a few seconds) the one the
target is judged on.

CPU seconds are the sweep process's and its children's (the loky workers are its
children and are reaped when the sweep ends).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import PYTHON, machine, median, rounds, table, timed_process, verdict

SPEEDUP = 1.5  # joblib at least this much faster than basic on 2 cores, for 8 short jobs:
SHORT = 3000  # epochs: jobs of a few seconds; 200 is `linear_fit` as shipped
LRS = "0.01,0.02,0.05,0.1,0.15,0.2,0.3,0.4"  # 8 jobs, none diverges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3000, 1000, 200])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    def sweep(epochs: int, *extra: str):
        def run(r: int) -> tuple[float, float]:
            sweep_dir = out / f"{len(list(out.iterdir()))}"  # a new one for every sweep
            return timed_process(
                [PYTHON, "-m", "runner", "-m", "experiment=linear_fit"]
                + [f"optimizer.lr={LRS}", f"trainer.epochs={epochs}"]
                + [f"hydra.sweep.dir={sweep_dir}", *extra]
            )

        return run

    variants = {}
    for epochs in args.epochs:
        variants[f"{epochs} epochs, basic launcher"] = sweep(epochs)
        variants[f"{epochs} epochs, hydra/launcher=joblib"] = sweep(epochs, "hydra/launcher=joblib")
    results = rounds(variants, args.repeats, warmup=0)
    rows, verdicts = [], []
    for epochs in args.epochs:
        basic = results[f"{epochs} epochs, basic launcher"]
        for launcher in ("basic launcher", "hydra/launcher=joblib"):
            values = results[f"{epochs} epochs, {launcher}"]
            wall, cpu = median([w for w, _ in values]), median([c for _, c in values])
            ratios = [b[0] / v[0] for b, v in zip(basic, values, strict=True)]
            speedup = median(ratios)
            if launcher != "basic launcher":
                each = " ".join(f"{r:.2f}" for r in ratios)
                print(f"{epochs} epochs, {launcher}: speed-up per round {each}")
            per_job = median([b[0] for b in basic]) / 8
            rows.append([epochs, launcher, f"{wall:.2f}", f"{speedup:.2f}x", f"{cpu:.2f}"])
        line = f"{epochs} epochs (basic: {per_job:.2f} s a job): {speedup:.2f}x"
        verdicts.append(f"{line}, {verdict(speedup >= SPEEDUP)}" if epochs == SHORT else line)
    print(f"\nSweep of 8 linear_fit jobs, median of {args.repeats}; {machine()}\n")
    print(table(["epochs", "launcher", "wall s", "speed-up vs basic", "CPU s"], rows))
    print(f"\nTarget: joblib >= {SPEEDUP}x faster than basic for jobs of a few seconds")
    print("(each job's start-up and figures bound shorter ones):")
    print("\n".join(f"  {v}" for v in verdicts))


if __name__ == "__main__":
    main()
