"""Sweep: 8 linear_fit jobs with Hydra's basic launcher against `hydra/launcher=joblib`.

    python benchmarks/sweep.py [--repeats 3] [--epochs 3000 200]

Both are one `python -m runner -m ...` process over `optimizer.lr` (8 values). The basic
launcher runs the jobs one after another in that process; joblib runs them in worker
processes (as many as there are CPUs), each of which starts Python and imports torch once
(~2-3 s of CPU) before its first job. Each job length given runs both launchers, so the
table shows from which job length on the workers' start-up is won back: with 3000 epochs
a job takes ~2 s (the "short job" of the target), with 200 epochs ~0.3 s.
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
    parser.add_argument("--epochs", type=int, nargs="+", default=[3000, 200])
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
            speedup = median([b[0] / v[0] for b, v in zip(basic, values, strict=True)])
            per_job = median([b[0] for b in basic]) / 8
            rows.append([epochs, launcher, f"{wall:.2f}", f"{speedup:.2f}x", f"{cpu:.2f}"])
        ok = verdict(speedup >= SPEEDUP)
        verdicts.append(f"{epochs} epochs (basic: {per_job:.2f} s a job): {speedup:.2f}x, {ok}")
    print(f"\nSweep of 8 linear_fit jobs, median of {args.repeats}; {machine()}\n")
    print(table(["epochs", "launcher", "wall s", "speed-up vs basic", "CPU s"], rows))
    print(f"\nTarget: joblib >= {SPEEDUP}x faster than basic; " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
