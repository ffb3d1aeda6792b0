"""Where the whole-process time goes: `python -m runner experiment=linear_fit`, phase by
phase, beside benchmarks/by_hand.py, and what each optional part costs the whole process.

    python benchmarks/breakdown.py [--repeats 5]

A diagnostic, not a target: each run is a child process (this file with `--child`) that
runs the runner, or by_hand.py, in-process with a clock read at the start and end of its
phases. To read those clocks it wraps a few of the runner's functions (and matplotlib's
`subplots`/`close`, SummaryWriter's `close`) in timing shims; nothing else changes.

Part 1, phases (wall seconds on the main thread, median of the runs; the runner's
TensorBoard thread works alongside, its CPU time is shown apart). The runner imports torch
inside its task function, after Hydra composed the config; here torch is imported first so
that its import is a phase of its own: the sum is the same. "Exit" is from the last line of
Python to the process's end: the interpreter tearing down every module and object.

Part 2, whole process (wall and CPU, median of the runs, alternating): the runner as it is,
without the model graph (`dashboard.add_model_graph` a no-op), without the figures
(`Figures._draw_fit`/`_draw_landscape` no-ops, so matplotlib is never imported), with
neither, with `logger=none`; the differences are what each part costs the whole process.
"""

from __future__ import annotations

import json
import sys
import time

START = time.time()  # first: the child's own clock starts here

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

BENCH = Path(__file__).resolve().parent
MARK = "BREAKDOWN-MARKS "


def child(kind: str, flags: list[str], overrides: list[str]) -> None:
    marks: list[tuple[str, float]] = [("python started", START)]
    extra: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.append((name, time.time()))

    def timed(owner: object, name: str, label: str, before: str | None = None) -> None:
        """Mark `before` when owner.name starts (if given) and `label` when it returns."""
        fn = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                mark(before)
            try:
                return fn(*args, **kwargs)
            finally:
                mark(label)

        setattr(owner, name, wrapper)

    if kind == "by_hand":
        import torch  # noqa: F401

        mark("import torch")
        from torch.utils.tensorboard import SummaryWriter

        mark("import SummaryWriter (tensorboard, protobuf)")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mark("import matplotlib.pyplot")
        drawing = {"s": 0.0, "since": 0.0}
        subplots, close = plt.subplots, plt.close

        def timed_subplots(*args, **kwargs):
            drawing["since"] = time.perf_counter()
            return subplots(*args, **kwargs)

        def timed_close(*args, **kwargs):
            close(*args, **kwargs)
            drawing["s"] += time.perf_counter() - drawing["since"]

        plt.subplots, plt.close = timed_subplots, timed_close
        timed(SummaryWriter, "close", "writer.close()", before="the script: 200 steps, 6 pictures")
        import runpy

        sys.argv = [str(BENCH / "by_hand.py"), tempfile.mkdtemp(prefix="bench-breakdown-")]
        runpy.run_path(sys.argv[0], run_name="__main__")
        mark("end of script")
        extra["drawing (6 pictures, in 'the script')"] = drawing["s"]
    else:
        import hydra  # noqa: F401
        import omegaconf  # noqa: F401

        import runner.__main__ as entry
        from runner import cli

        mark("import Hydra, OmegaConf, runner.cli")
        import runner.run as run_module

        mark("import torch and the runner's modules")
        from runner.log import tensorboard
        from runner.observe import dashboard, draw, figures

        if "no-graph" in flags:
            dashboard.add_model_graph = lambda b, logger: None
        if "no-figures" in flags:
            figures.Figures._draw_fit = lambda self: None
            figures.Figures._draw_landscape = lambda self, step: None
        timed(cli, "run_job", "the summary lines", before="Hydra: compose (twice), run dir, logs")
        timed(run_module, "build", "build (check, data, model, optimizer, logger)")
        timed(run_module, "train", "train's end", before="observers, layout, model graph, start")
        timed(figures.Figures, "end", "figures.end", before="200 steps (logging every step)")
        timed(draw, "fit_images", "figure/fit: draw 5 (matplotlib import)", before="fit arrays")
        timed(figures, "landscape_arrays", "landscape: loss on 60x60 (vmap)")
        timed(draw, "landscape_image", "landscape: draw")
        for logger in (tensorboard.TensorBoard, tensorboard.Null):
            timed(logger, "close", "results, logger.close (waits for the writer)")
        work = tensorboard.TensorBoard._work

        def timed_work(self):
            work(self)
            extra["TensorBoard writer thread CPU"] = time.thread_time()

        tensorboard.TensorBoard._work = timed_work
        sys.argv = ["runner", *overrides]
        try:
            entry.main()
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
        mark("Hydra's end")
    extra["process CPU at the end"] = time.process_time()
    print(MARK + json.dumps({"marks": marks, "extra": extra}), file=sys.stderr, flush=True)


def run_child(kind: str, flags: list[str], overrides: list[str]) -> dict:
    """One child process: its marks, its end and its CPU (children's rusage)."""
    import resource
    import subprocess

    from common import PYTHON, ROOT

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.time()
    args = [PYTHON, __file__, "--child", kind, *(f"--flag={f}" for f in flags), "--", *overrides]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or MARK not in done.stderr:
        raise RuntimeError(f"{' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    result = json.loads(done.stderr.split(MARK, 1)[1].splitlines()[0])
    result["spawned"], result["ended"] = spawned, ended
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def phases(result: dict) -> dict[str, float]:
    """Seconds between consecutive marks, from the spawn to the process's end."""
    out, previous = {}, result["spawned"]
    for name, t in result["marks"]:
        out[name] = out.get(name, 0.0) + t - previous
        previous = t
    out["exit (interpreter teardown)"] = result["ended"] - previous
    return out


def shown(values: list[float | None]) -> str:
    """The median, or a dash for a phase this variant does not have."""
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.3f}" if present else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["runner", "by_hand"])
    parser.add_argument("--flag", action="append", default=[])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.flag, args.overrides)
        return

    from common import machine, median, rounds, table

    context = machine()
    out = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    fresh = (out / str(i) for i in itertools.count())

    def runner(*flags: str, overrides: tuple[str, ...] = ()):
        return lambda r: run_child(
            "runner",
            list(flags),
            ["experiment=linear_fit", f"hydra.run.dir={next(fresh)}", *overrides],
        )

    variants = {
        "runner, default logging": runner(),
        "by_hand.py": lambda r: run_child("by_hand", [], []),
        "runner, no model graph": runner("no-graph"),
        "runner, no figures": runner("no-figures"),
        "runner, no model graph, no figures": runner("no-graph", "no-figures"),
        "runner, logger=none": runner(overrides=("logger=none",)),
    }
    results = rounds(variants, args.repeats)
    print(f"\nPhases, median of {args.repeats} (wall s, main thread); {context}")
    for names in ([n for n in results if n.startswith("runner")], ["by_hand.py"]):
        order = list(dict.fromkeys(p for n in names for p in phases(results[n][0])))
        extras = list(dict.fromkeys(k for n in names for k in results[n][0]["extra"]))
        rows = []
        for phase in order:
            values = [[phases(r).get(phase) for r in results[n]] for n in names]
            rows.append([phase, *(shown(v) for v in values)])
        for key in extras:
            values = [[r["extra"].get(key) for r in results[n]] for n in names]
            rows.append([f"({key})", *(shown(v) for v in values)])
        for label, of in (
            ("wall", lambda r: r["ended"] - r["spawned"]),
            ("CPU", lambda r: r["cpu"]),
        ):
            rows.append(
                [f"whole process, {label}", *(shown([of(r) for r in results[n]]) for n in names)]
            )
        print()
        print(table(["phase", *names], rows))

    print(f"\nWhole process, median of {args.repeats}; differences from the runner as it is\n")
    wall = {n: median([r["ended"] - r["spawned"] for r in runs]) for n, runs in results.items()}
    cpu = {n: median([r["cpu"] for r in runs]) for n, runs in results.items()}
    base = "runner, default logging"
    rows = [
        [
            n,
            f"{wall[n]:.2f}",
            f"{wall[n] - wall[base]:+.2f}",
            f"{cpu[n]:.2f}",
            f"{cpu[n] - cpu[base]:+.2f}",
        ]
        for n in results
    ]
    print(table(["variant", "wall s", "wall vs runner", "CPU s", "CPU vs runner"], rows))


if __name__ == "__main__":
    main()
