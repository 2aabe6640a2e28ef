"""A test instrument appended to a recipe's callbacks (`--trainer.callbacks+`): it records the trainable weights at
chosen optimizer steps, so the recipe-parity tests can check that the real recipe's settings move them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class TrainableWeights(L.Callback):
    """Saves {name: fp32 tensor, "_dtypes": {name: dtype name}} of every trainable parameter to `<directory>/<k>.pt`
    when the run first reaches optimizer step k (0: before the first step). Sharded weights are gathered.

    Args:
        directory: where the files go.
        steps: the optimizer steps to record.
    """

    def __init__(self, directory: str, steps: list[int]):
        self.directory = Path(directory)
        self.steps = set(steps)

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step not in self.steps:
            return
        self.steps.discard(step)
        weights: dict = {"_dtypes": {}}
        for name, param in pl_module.model.named_parameters():
            if not param.requires_grad:
                continue
            value = param.detach()
            if hasattr(value, "full_tensor"):  # a DTensor under FSDP2: a collective, every rank gathers
                value = value.full_tensor()
            weights[name] = value.float().cpu().clone()
            weights["_dtypes"][name] = str(param.dtype)
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(weights, self.directory / f"{step}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._record(trainer, pl_module)
