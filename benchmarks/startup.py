"""Whole process: `python -m runner experiment=linear_fit` against the same work by hand, and
with `logger=none` against the bare post script; each a fresh `python` process.

    python benchmarks/startup.py [--repeats 7]

The four compared commands, run in turn every round:
  (a) `python -m runner experiment=linear_fit`: default logging (TensorBoard, figures on);
  (b) `python benchmarks/by_hand.py`: the same fit, scalars and figures in a plain script;
  (c) `python -m runner experiment=linear_fit logger=none`: metrics.json and the summary;
  (d) `python benchmarks/post.py`: the post's script, nothing logged.
Two more rows give the floor the others stand on: Python importing torch and nothing else,
and Hydra composing and printing the config (`--cfg job`: the runner's start without
torch). Wall seconds are what the user waits for; CPU seconds are user + system of the
process and everything it waited for (its threads, and any child it started).

Every run writes to a fresh temporary directory. PyTorch Lightning (benchmarks/
lightning_fit.py) is added as a row when it is installed; it is no dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import tempfile
from pathlib import Path

from common import PYTHON, machine, median, rounds, table, timed_process, verdict

BENCH = Path(__file__).resolve().parent
RUNNER = "(a) runner, default logging"
BY_HAND = "(b) by hand (benchmarks/by_hand.py)"
NONE = "(c) runner, logger=none"
POST = "(d) post script (benchmarks/post.py)"
# (numerator, denominator, wall target, CPU target or None)
TARGETS = [(RUNNER, BY_HAND, 1.0, 1.1), (NONE, POST, 1.15, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    fresh = (out / str(i) for i in itertools.count())  # a new directory for every run

    def runner(*overrides: str):
        return lambda r: timed_process(
            [PYTHON, "-m", "runner", "experiment=linear_fit", f"hydra.run.dir={next(fresh)}"]
            + list(overrides)
        )

    def script(name: str, log_dir: bool = False):
        return lambda r: timed_process(
            [PYTHON, str(BENCH / name), *([str(next(fresh))] if log_dir else [])]
        )

    variants = {
        RUNNER: runner(),
        BY_HAND: script("by_hand.py", True),
        NONE: runner("logger=none"),
        POST: script("post.py"),
        "python -c 'import torch'": lambda r: timed_process([PYTHON, "-c", "import torch"]),
        "Hydra alone (--cfg job)": lambda r: timed_process(
            [PYTHON, "-m", "runner", "experiment=linear_fit", "--cfg", "job"]
        ),
    }
    if importlib.util.find_spec("lightning") is not None:
        variants["PyTorch Lightning (benchmarks/lightning_fit.py)"] = script(
            "lightning_fit.py", True
        )
    context = machine()  # the load average before the runs
    results = rounds(variants, args.repeats)
    wall = {name: median([w for w, _ in runs]) for name, runs in results.items()}
    cpu = {name: median([c for _, c in runs]) for name, runs in results.items()}

    print(f"\nWhole process, linear_fit, median of {args.repeats}; {context}\n")
    rows = [[name, f"{wall[name]:.2f}", f"{cpu[name]:.2f}"] for name in results]
    print(table(["command", "wall s", "CPU s"], rows))

    print()
    rows, lines = [], []
    for top, bottom, wall_target, cpu_target in TARGETS:
        pairs = list(zip(results[top], results[bottom], strict=True))
        per_round = median([a[0] / b[0] for a, b in pairs])  # each pair ran back to back
        w, c = wall[top] / wall[bottom], cpu[top] / cpu[bottom]
        name = f"{top[:3]}/{bottom[:3]}"
        rows.append([name, f"{w:.2f}x", f"{per_round:.2f}x", f"{c:.2f}x"])
        lines.append(f"{name} wall <= {wall_target}x: {w:.2f}x, {verdict(w <= wall_target)}")
        if cpu_target is not None:
            lines.append(f"{name} CPU <= {cpu_target}x: {c:.2f}x, {verdict(c <= cpu_target)}")
    header = ["ratio", "wall (of medians)", "wall (median per round)", "CPU (of medians)"]
    print(table(header, rows))
    print("\nTargets (ratios of medians):\n" + "\n".join(f"  {line}" for line in lines))


if __name__ == "__main__":
    main()
