"""`python -m runner experiment=linear_fit`, written by hand: the post's loop, TensorBoard
scalars every step, and the runner's figures drawn with matplotlib, in one plain script.

    python benchmarks/by_hand.py [log_dir]      # then: tensorboard --logdir <log_dir>

What startup.py holds the runner to. It writes what a person would want from the run:
the loss, w and b, their gradients, the gradient norm and the learning rate at every step;
the data with the fitted line at the start, every 50 epochs and the end; the loss landscape
with the path the parameters took. The runner writes more, which this script leaves out:
the update ratios (`ratio/*`), the autograd graph's statistics every step (`graph/*`, with
graph.txt and graph.dot), the model in the Graphs dashboard, the Custom Scalars layout, an
HParams row, metrics.json and Hydra's config files.
"""

import sys
import tempfile

import matplotlib
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

matplotlib.use("Agg")  # pictures into arrays, no window
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

torch.manual_seed(42)
x_data = torch.linspace(0, 1, 50)
y_data = 2 * x_data + 1 + 0.1 * torch.randn(50)
w = torch.tensor(0.0, requires_grad=True)
b = torch.tensor(0.0, requires_grad=True)
lr = 0.1
epochs = 200
writer = SummaryWriter(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="by-hand-"))


def pixels(fig: plt.Figure) -> np.ndarray:
    """The figure as RGB pixels (height, width, 3), and the figure closed."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return rgb


def fit_image(title: str) -> np.ndarray:
    """The data and the line the parameters draw now."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x_data, y_data, ".", label="train")
    ax.plot(x_data, (w * x_data + b).detach(), "k", lw=2, label="model")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(loc="upper left")
    return pixels(fig)


def landscape_image(path: np.ndarray) -> np.ndarray:
    """The loss over a 60x60 grid of (b, w) around the path, and the path on it."""
    pad = 0.5
    bs = np.linspace(path[:, 0].min() - pad, path[:, 0].max() + pad, 60)
    ws = np.linspace(path[:, 1].min() - pad, path[:, 1].max() + pad, 60)
    B, W = np.meshgrid(bs, ws)
    x, y = x_data.numpy(), y_data.numpy()
    loss = ((W[..., None] * x + B[..., None] - y) ** 2).mean(-1)
    fig, ax = plt.subplots(figsize=(6, 5))
    filled = ax.contourf(B, W, np.log10(loss), levels=30)
    fig.colorbar(filled, ax=ax, label="log10 loss")
    ax.plot(path[:, 0], path[:, 1], "w.-", ms=3)
    ax.plot(*path[0], "wo", mec="k", label="start")
    ax.plot(*path[-1], "r*", ms=12, mec="k", label="end")
    ax.legend(loc="upper right")
    ax.set(xlabel="b", ylabel="w", title="loss landscape and the path")
    return pixels(fig)


path = [(b.item(), w.item())]
for epoch in range(epochs):
    if epoch % 50 == 0:
        writer.add_image("figure/fit", fit_image(f"epoch {epoch}"), epoch, dataformats="HWC")
    y_pred = w * x_data + b
    loss = ((y_pred - y_data) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
        b -= lr * b.grad
    writer.add_scalar("loss/train", loss.item(), epoch)
    writer.add_scalar("param/w", w.item(), epoch)
    writer.add_scalar("param/b", b.item(), epoch)
    writer.add_scalar("grad/w", w.grad.item(), epoch)
    writer.add_scalar("grad/b", b.grad.item(), epoch)
    writer.add_scalar("grad/total_norm", torch.hypot(w.grad, b.grad).item(), epoch)
    writer.add_scalar("lr", lr, epoch)
    path.append((b.item(), w.item()))
    w.grad.zero_()
    b.grad.zero_()

writer.add_image("figure/fit", fit_image("end"), epochs, dataformats="HWC")
writer.add_image("figure/landscape", landscape_image(np.array(path)), epochs, dataformats="HWC")
writer.close()
print(f"Learned: y = {w.item():.3f}x + {b.item():.3f}")  # Learned: y = 1.924x + 1.050
