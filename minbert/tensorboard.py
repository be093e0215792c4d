"""TensorBoard scalars of a run's log records (`train.tensorboard = true`): the losses, lr,
speed and padding of each step window, and each epoch's metrics."""
from __future__ import annotations

from pathlib import Path


class TensorBoard:
    def __init__(self, folder: Path, selection: str = "dev"):
        self.folder, self.selection = folder, selection
        self.writer = None  # made on the first record

    def write(self, record: dict) -> None:
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("train.tensorboard needs the tensorboard package: "
                                 "pip install 'minbert[tensorboard]'") from None
            self.writer = SummaryWriter(str(self.folder))
        if record["type"] == "step":
            for name, value in record["loss"].items():
                self.writer.add_scalar(f"loss/{name}", value, record["updates"])
            for key in ("lr", "examples_per_s", "padding_share"):
                self.writer.add_scalar(key, record[key], record["updates"])
        elif record["type"] == "epoch":
            for split in ("train", self.selection):
                for name, value in record[split].items():
                    self.writer.add_scalar(f"{split}/{name}", value, record["epoch"])
