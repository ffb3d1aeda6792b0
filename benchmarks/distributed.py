"""One run over several processes (DDP), and on a GPU mixed precision and compile.

    python benchmarks/distributed.py [--repeats 5] [--epochs 30]   # CPU: 1 against 2 processes
    python benchmarks/distributed.py --cuda [--repeats 3]         # GPU: runner against a hand loop

CPU: `experiment=sine_mlp logger=none` as one process, as `trainer.devices=2` (the runner
starts 2 gloo processes through PyTorch's elastic launcher) and under `torchrun
--nproc-per-node=2`, each a fresh process per round, the variants alternating. Wall and CPU
seconds are the whole command's (every process it started included); `run s` is rank 0's
own `duration_s` in metrics.json (build, train, write: no interpreter or torch start).
torchrun and `trainer.devices` give each process one thread unless OMP_NUM_THREADS is set,
so one process is also timed with one thread: tiny matrices run faster on one.
sine_mlp is small: two processes split 64 points a step and pay a gradient all-reduce and a
loss all-reduce for it, so this measures what DDP costs, not what it gains.

`--cuda`: one epoch of 1M points (sine, batch 8192, the sine_mlp MLP, Adam) in the runner's
loop (`logger=none`, an observer reading the clock after a synchronize at each epoch's end)
against the same loop by hand, plain, with `torch.compile` and with bfloat16 autocast; the
first epoch is a warm-up (and the compile). Skips without CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import PYTHON, Ticks, built, machine, median, rounds, sine, table, timed_process

N, BATCH = 1_000_000, 8192  # --cuda: the epoch
DEVICE = "cuda"


def cpu(repeats: int, epochs: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    args = ["experiment=sine_mlp", "logger=none", f"trainer.epochs={epochs}"]
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]

    def command(prefix: list[str], *extra: str):
        def one(r: int) -> tuple[float, float, float]:
            run_dir = out / f"{len(list(out.iterdir()))}"
            wall, cpu_s = timed_process(
                [*prefix, "-m", "runner", *args, *extra, f"hydra.run.dir={run_dir}"]
            )
            return wall, cpu_s, json.loads((run_dir / "metrics.json").read_text())["duration_s"]

        return one

    variants = {
        "1 process": command([PYTHON]),
        "1 process, OMP_NUM_THREADS=1": command(["env", "OMP_NUM_THREADS=1", PYTHON]),
        "trainer.devices=2": command([PYTHON], "trainer.devices=2"),
        "torchrun --nproc-per-node=2": command(torchrun),
    }
    context = machine()
    results = rounds(variants, repeats)
    rows = []
    base = [median([r[i] for r in results["1 process"]]) for i in range(3)]
    for name, runs in results.items():
        m = [median([r[i] for r in runs]) for i in range(3)]
        rows.append([name, *(f"{v:.2f}" for v in m), *(f"{v / b:.2f}x" for v, b in zip(m, base))])
    print(f"\nsine_mlp, {epochs} epochs, logger=none, median of {repeats}; {context}\n")
    header = ["command", "wall s", "CPU s", "run s", "wall", "CPU", "run"]
    print(table(header, rows))


def cuda(repeats: int) -> None:
    import torch
    from torch import nn

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark is skipped")
        return

    from runner.run import observers
    from runner.train.loop import train
    from runner.train.state import State

    def clock() -> float:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def runner(*overrides: str) -> float:
        b = built("bench-ddp-", *sine(N, BATCH, 2, DEVICE), "logger=none", *overrides)
        ticks = Ticks(clock)
        train(b, State(), [*observers(b, State()), ticks], None)
        return ticks.times[1] - ticks.times[0]

    def by_hand(compiled: bool = False, amp: bool = False) -> float:
        torch.manual_seed(0)
        x = torch.rand(N, device=DEVICE)
        y = torch.sin(2 * torch.pi * x) + 0.1 * torch.randn(N, device=DEVICE)
        model = nn.Sequential(
            nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        ).to(DEVICE)
        forward = torch.compile(model) if compiled else model
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        times = []
        for _ in range(2):
            start = clock()
            for idx in torch.randperm(N, device=DEVICE).split(BATCH):
                optimizer.zero_grad()
                with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
                    loss = ((forward(x[idx].unsqueeze(-1)).squeeze(-1) - y[idx]) ** 2).mean()
                loss.backward()
                optimizer.step()
            times.append(clock() - start)
        return times[1]

    pairs = {
        "plain": (lambda r: (runner(),), lambda r: (by_hand(),)),
        "compile": (lambda r: (runner("trainer.compile=true"),), lambda r: (by_hand(True),)),
        "bfloat16": (lambda r: (runner("trainer.amp=bfloat16"),), lambda r: (by_hand(amp=True),)),
        "compile + bfloat16": (
            lambda r: (runner("trainer.compile=true", "trainer.amp=bfloat16"),),
            lambda r: (by_hand(True, True),),
        ),
    }
    variants = {
        f"{k} {who}": f for k, fs in pairs.items() for who, f in zip(("runner", "hand"), fs)
    }
    context = machine()
    results = rounds(variants, repeats, warmup=0)
    rows = []
    for name in pairs:
        ours, hand = (
            median([r[0] for r in results[f"{name} {who}"]]) for who in ("runner", "hand")
        )
        rows.append([name, f"{ours:.3f}", f"{hand:.3f}", f"{ours / hand:.2f}x"])
    print(f"\nOne epoch of {N:,} points, batch {BATCH}, median of {repeats}; {context}\n")
    print(table(["variant", "runner s", "by hand s", "runner / hand (target <= 1.05x)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()
    cuda(args.repeats) if args.cuda else cpu(args.repeats, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
