"""Whole process: `python -m runner experiment=linear_fit` against the plain post script and
against the same fit in PyTorch Lightning, each a fresh `python` process.

    python benchmarks/startup.py [--repeats 7]

Rows below the three compared ones say where the runner's time goes: Python with torch
imported and nothing else, Hydra printing the composed config (`--cfg job`: Hydra's start-up
without torch), the runner with `logger=none`, and the runner with TensorBoard on but its
matplotlib figures patched out (as if matplotlib were not installed). Lightning rows are
skipped when it is not installed (`pip install lightning`, for this benchmark only).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

from common import PYTHON, machine, median, rounds, table, timed_process, verdict

BENCH = Path(__file__).resolve().parent
# A diagnostic only: the runner as it is, but for the figures drawn with matplotlib (as on a
# machine without matplotlib), to show what they cost.
NO_FIGURES = (
    "import runpy, sys, runner.figures as f; f._matplotlib_available = lambda: False; "
    "f.plotter.PLOTTER.tried = True; "  # and no plotter process, as without matplotlib
    "sys.argv = ['runner', *sys.argv[1:]]; runpy.run_module('runner', run_name='__main__')"
)
RUNNER_TARGET = 1.3  # the runner at most this times the plain script
LIGHTNING_TARGET = 0.5  # ... and at most this times Lightning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-startup-"))

    def runner(*overrides: str):
        def run(r: int) -> tuple[float, float]:
            run_dir = out / f"{len(overrides)}-{r}-{len(list(out.iterdir()))}"
            return timed_process(
                [PYTHON, "-m", "runner", "experiment=linear_fit", f"hydra.run.dir={run_dir}"]
                + list(overrides)
            )

        return run

    variants = {
        "plain script (benchmarks/post.py)": lambda r: timed_process(
            [PYTHON, str(BENCH / "post.py")]
        ),
        "runner, TensorBoard on (default)": runner(),
    }
    has_lightning = importlib.util.find_spec("lightning") is not None
    if has_lightning:
        variants["PyTorch Lightning (benchmarks/lightning_fit.py)"] = lambda r: timed_process(
            [PYTHON, str(BENCH / "lightning_fit.py"), str(out / f"lightning-{r}")]
        )
    variants |= {
        "python -c 'import torch'": lambda r: timed_process([PYTHON, "-c", "import torch"]),
        "hydra alone (--cfg job)": lambda r: timed_process(
            [PYTHON, "-m", "runner", "experiment=linear_fit", "--cfg", "job"]
        ),
        "runner, logger=none": runner("logger=none"),
        "runner, TensorBoard on, matplotlib figures off (patched)": lambda r: timed_process(
            [PYTHON, "-c", NO_FIGURES, "experiment=linear_fit", f"hydra.run.dir={out / f'nf-{r}'}"]
        ),
    }
    results = rounds(variants, args.repeats)
    plain_cpu = median([c for _, c in results["plain script (benchmarks/post.py)"]])
    plain_runs = results["plain script (benchmarks/post.py)"]

    def paired(name: str, other: list[tuple[float, ...]] = plain_runs) -> float:
        """The median of per-round ratios: each pair ran back to back, under the same load."""
        return median([a[0] / b[0] for a, b in zip(results[name], other, strict=True)])

    rows = []
    for name, values in results.items():
        wall, cpu = median([w for w, _ in values]), median([c for _, c in values])
        rows.append(
            [name, f"{wall:.2f}", f"{paired(name):.2f}x", f"{cpu:.2f}", f"{cpu / plain_cpu:.2f}x"]
        )
    print(f"\nWhole process, linear_fit, median of {args.repeats}; {machine()}\n")
    print(table(["command", "wall s", "vs plain (per round)", "CPU s", "CPU vs plain"], rows))

    ours = paired("runner, TensorBoard on (default)")
    print(
        f"\nTarget: runner <= {RUNNER_TARGET}x the plain script: {ours:.2f}x, "
        f"{verdict(ours <= RUNNER_TARGET)}"
    )
    if has_lightning:
        lightning = results["PyTorch Lightning (benchmarks/lightning_fit.py)"]
        vs = paired("runner, TensorBoard on (default)", lightning)
        print(
            f"Target: runner <= {LIGHTNING_TARGET}x Lightning: {vs:.2f}x, "
            f"{verdict(vs <= LIGHTNING_TARGET)}"
        )


if __name__ == "__main__":
    main()
