"""The post's fit written with PyTorch Lightning, logging to TensorBoard like the runner.

    pip install lightning   # for this benchmark only; it is no dependency of the runner
    python benchmarks/lightning_fit.py [save_dir]

Idiomatic Lightning: a LightningModule, a DataLoader over a TensorDataset (one full batch
of the 50 points), `self.log` every step into a TensorBoardLogger. The progress bar and
checkpointing are off, as the runner's are by default when its output is not a terminal.
"""

import sys
import tempfile

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset


class LinearFit(L.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.0))
        self.b = torch.nn.Parameter(torch.tensor(0.0))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.w * x + self.b - y) ** 2).mean()
        self.log("loss/train", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)  # plain SGD is the post's update


def main() -> None:
    save_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bench-lightning-")
    torch.manual_seed(42)
    x = torch.linspace(0, 1, 50)
    y = 2 * x + 1 + 0.1 * torch.randn(50)
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    model = LinearFit()
    trainer = L.Trainer(
        max_epochs=200,
        logger=TensorBoardLogger(save_dir),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader)
    print(f"Learned: y = {model.w.item():.3f}x + {model.b.item():.3f}")


if __name__ == "__main__":
    main()
