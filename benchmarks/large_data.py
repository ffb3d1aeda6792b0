"""Large data: `sine_mlp` with 10k, 100k and 1M points in minibatches of 1024, time per epoch.

    python benchmarks/large_data.py [--sizes 10000 100000 1000000] [--repeats 3] [--device cuda]

Three loops do the same work, an epoch of shuffled minibatches through the same MLP
(1 -> 64 -> 64 -> 1, tanh) with Adam (lr 0.01) on the same data:
  - the runner: `runner.train.loop.train` on `experiment=sine_mlp` with its default logging
    (TensorBoard, a log step every 25 steps, histograms every 100, the model graph after the
    last step), and, to show what they cost, without the histograms and with `logger=none`;
  - a plain loop over `DataLoader(TensorDataset(x, y), batch_size=1024, shuffle=True)`;
  - a plain loop over index slices of a `randperm`, as the runner batches.
`dataset.val_fraction=0` for all three, so an epoch is the same number of points. The
first epoch of each run is a warm-up and is not counted (at 1M points the DataLoader loop
is timed on one epoch, long enough on its own).

With `--device cuda` the runner and the slice loop keep the data on the GPU; the DataLoader
loop keeps it on the host and moves each batch over, as such a loop does. Each plain epoch
ends with a `torch.cuda.synchronize()`, and so does each of the runner's, read by an observer.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Ticks, built, machine, median, sine, table, verdict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runner.observe import dashboard
from runner.observe.figures import Figures
from runner.run import observers
from runner.train.loop import train
from runner.train.state import State

BATCH = 1024
DATALOADER_SPEEDUP = 3.0  # at 1M points the runner's epoch at least this much faster
SLICE_RATIO = 1.1  # ... and at most this times the plain index-slice loop
DEVICE = torch.device("cpu")  # --device


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As the runner's sine dataset draws it: uniform x in [0, 1), sin(2 pi x) + noise."""
    torch.manual_seed(0)
    x = torch.rand(n)
    return x, torch.sin(2 * torch.pi * x) + 0.1 * torch.randn(n)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    ).to(DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def wall_after_sync() -> float:
    synchronize()  # what the epoch queued on the device is done
    return time.perf_counter()


def plain_slices(n: int, epochs: int) -> list[float]:
    x, y = (t.to(DEVICE) for t in data(n))
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(n, device=DEVICE).split(BATCH):
            optimizer.zero_grad()
            loss = ((model(x[idx].unsqueeze(-1)).squeeze(-1) - y[idx]) ** 2).mean()
            loss.backward()
            optimizer.step()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def plain_dataloader(n: int, epochs: int) -> list[float]:
    x, y = data(n)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x.unsqueeze(-1), y), batch_size=BATCH, shuffle=True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(DEVICE, non_blocking=True), yb.to(DEVICE, non_blocking=True)
            optimizer.zero_grad()
            loss = ((model(xb).squeeze(-1) - yb) ** 2).mean()
            loss.backward()
            optimizer.step()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def runner(n: int, epochs: int, *overrides: str) -> list[float]:
    """Epoch times read by an extra observer at each epoch's end, so the one-off work before
    the first step and after the last (figures, the model graph) is not in them."""
    b = built("bench-large-", *sine(n, BATCH, epochs, DEVICE), *overrides)
    watching, ticks = observers(b, State()), Ticks(wall_after_sync)
    try:  # as runner.run.run does around the loop
        b.logger.layout(dashboard.layout(b))
        next(o for o in watching if isinstance(o, Figures)).start()
        train(b, State(), [*watching, ticks], None)
        dashboard.add_model_graph(b, b.logger)  # as run does: after the last step
    finally:
        b.logger.close()
    return [later - earlier for earlier, later in zip(ticks.times, ticks.times[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"No CUDA device here: --device {args.device} needs one")
    loops = {
        "runner (default logging)": runner,
        "runner, no histograms": lambda n, e: runner(n, e, "logger.histogram_every_n_steps=null"),
        "runner, logger=none": lambda n, e: runner(n, e, "logger=none"),
        "plain, index slices": lambda n, e: plain_slices(n, e)[1:],
        "plain, DataLoader(TensorDataset)": lambda n, e: plain_dataloader(n, e)[1:],
    }
    context = machine()  # the load average before the runs
    per_epoch: dict[tuple[str, int], float] = {}
    for n in args.sizes:
        epochs = 3 if n <= 100_000 else 2
        times: dict[str, list[float]] = {name: [] for name in loops}
        for r in range(args.repeats):
            for name, loop in loops.items():
                if name.startswith("plain, DataLoader") and n >= 1_000_000:
                    if r == 0:  # one epoch, no warm-up: an epoch is long enough on its own
                        times[name] += plain_dataloader(n, 1)
                    continue
                times[name] += loop(n, epochs)
            print(f"  n={n}: round {r + 1}/{args.repeats} done", flush=True)
        for name, values in times.items():
            per_epoch[name, n] = median(values)

    rows = []
    base = min(args.sizes)
    for name in loops:
        row = [name]
        for n in args.sizes:
            row.append(f"{per_epoch[name, n]:.3f}")
        row += [f"{per_epoch[name, n] / n * 1e6:.2f}" for n in (base, max(args.sizes))]
        rows.append(row)
    print(f"\nLarge data on {DEVICE}: seconds per epoch (batch {BATCH}); {context}\n")
    header = ["loop", *(f"n={n:,}" for n in args.sizes)]
    header += [f"µs/point n={base:,}", f"µs/point n={max(args.sizes):,}"]
    print(table(header, rows))

    big = max(args.sizes)
    ours = per_epoch["runner (default logging)", big]
    loader = per_epoch["plain, DataLoader(TensorDataset)", big]
    slices = per_epoch["plain, index slices", big]
    print(
        f"\nTarget at n={big:,}: >= {DATALOADER_SPEEDUP}x faster than the DataLoader loop: "
        f"{loader / ours:.1f}x, {verdict(loader / ours >= DATALOADER_SPEEDUP)}"
    )
    print(
        f"Target at n={big:,}: within {SLICE_RATIO}x of the index-slice loop: "
        f"{ours / slices:.2f}x, {verdict(ours / slices <= SLICE_RATIO)}"
    )
    for name in loops:
        growth = [per_epoch[name, n] / n for n in args.sizes]
        print(f"{name}: time per point, largest n vs smallest: {growth[-1] / growth[0]:.2f}x")


if __name__ == "__main__":
    main()
