"""Shared helpers for the benchmarks: medians, subprocess timing, the machine, tables.

Every benchmark interleaves its variants round by round (A, B, C, A, B, C, ...), so a
machine that gets busier or quieter during the run affects each variant alike, and
prints ratios computed from medians measured in that same run.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository: `python -m runner` runs here
PYTHON = sys.executable


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """`nproc`, the CPU model, Python and torch versions: the table's context."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{os.cpu_count()} CPUs ({model}){gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average {load:.1f} at the start"
    )


def timed_process(args: Sequence[str], cwd: Path = ROOT) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, children included) of one process."""
    # Python caches compiled modules by default; a sandbox's PYTHONDONTWRITEBYTECODE=1 would
    # make every run recompile the runner's own modules, which no user's run does.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{output}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def rounds(
    variants: dict[str, Callable[[int], tuple[float, ...]]], repeats: int, warmup: int = 1
) -> dict[str, list[tuple[float, ...]]]:
    """Call every variant once per round, `repeats` rounds after `warmup` discarded ones."""
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            value = fn(r)
            if r >= warmup:
                results[name].append(value)
        print(f"  round {r + 1}/{warmup + repeats} done", file=sys.stderr, flush=True)
    return results


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


class Ticks:
    """An observer that only reads `clock` at every epoch's end (after the others), so the
    one-off work before the first step and after the last is not in the epoch times. At
    the end of epoch `last` it first calls `settle` (the logger's `flush`), so the logging
    handed to the writer thread and not yet written is in the epoch times too."""

    def __init__(
        self, clock: Callable[[], float], settle: Callable[[], None] | None = None, last: int = 0
    ) -> None:
        self.clock, self.times, self.settle, self.last = clock, [], settle, last

    def log(self, look: object) -> None:
        pass

    def epoch(self, state: Any) -> None:
        if self.settle is not None and state.epoch == self.last:
            self.settle()
        self.times.append(self.clock())

    def end(self, state: object) -> None:
        pass


def composed(*overrides: str) -> Any:
    """The config `python -m runner` composes for these overrides (Hydra and the runner are
    imported here, so a benchmark that only starts processes never loads them)."""
    from hydra import compose, initialize_config_dir

    from runner.__main__ import CONFIGS

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", list(overrides))


def built(prefix: str, *overrides: str) -> Any:
    """The experiment built as a run builds it, into a fresh temporary run directory."""
    from runner.build import build

    return build(composed(*overrides), Path(tempfile.mkdtemp(prefix=prefix)))


def sine(n: int, batch: int, epochs: int, device: object) -> tuple[str, ...]:
    """`sine_mlp` on `n` points, all of them for training, in batches of `batch`."""
    return (
        "experiment=sine_mlp",
        f"dataset.n={n}",
        "dataset.val_fraction=0.0",
        f"trainer.batch_size={batch}",
        f"trainer.epochs={epochs}",
        f"trainer.device={device}",
    )
