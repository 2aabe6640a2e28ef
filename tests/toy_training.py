"""A minimal LightningModule for the tests of generic training machinery (checkpoint writing, the hang watchdog,
progress lines), and the process drivers that must run outside pytest:

    python -m tests.toy_training kill-during-save ROOT KILLS [fsdp2]   # kill -9 a fit KILLS times during a save
    python -m tests.toy_training hang ROOT                     # a fit whose step 6 hangs, under HangWatchdog
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from msathinker.checkpoints import WRITE_DELAY_ENV, AtomicCheckpointIO
from msathinker.sharding import ModelParallelStrategy


class ToyRegression(L.LightningModule):
    """A linear regression on 64 fixed random samples, batch 4 (16 steps an epoch). `hang(step)` is called at the
    start of every training step: a test makes one step hang there."""

    def __init__(self, hang: Callable[[int], None] | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.hang = hang

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.hang is not None:
            self.hang(self.global_step)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def configure_model(self) -> None:
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2, as the thinker is sharded
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.layer, mesh=self.device_mesh["data_parallel"])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=generator)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def toy_trainer(
    root: Path, max_steps: int, callbacks: list | None = None, every_n_train_steps: int = 1, **kwargs
) -> L.Trainer:
    """A CPU trainer writing `<root>/checkpoints/last.ckpt` every `every_n_train_steps` steps with the project's
    checkpoint writer."""
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=every_n_train_steps, enable_version_counter=False)  # fmt: skip
    defaults = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(root), plugins=[AtomicCheckpointIO()])  # fmt: skip
    return L.Trainer(callbacks=[checkpoint, *(callbacks or [])], **{**defaults, **kwargs})


def saved_step(path: Path) -> int:
    """The global step of a checkpoint file or distributed checkpoint directory, loaded as a resume would
    (weights_only)."""
    return torch.load(path / "meta.pt" if path.is_dir() else path, weights_only=True)["global_step"]


def kill_during_save(root: Path, kills: int, fsdp2: bool = False, delay: float = 0.5) -> list[dict]:
    """Run a fit KILLS + 1 times, each resuming from last.ckpt. Runs 1..KILLS are killed with SIGKILL during their
    second checkpoint save (WRITE_DELAY_ENV pauses there: halfway through writing the file, or, with `fsdp2`
    (msathinker.sharding.ModelParallelStrategy, one process), with the distributed checkpoint written beside
    last.ckpt and not yet swapped in), so each completes one step and one save; the last run is not killed and
    trains to the end. Returns one record per run: the step it resumed from, the step in last.ckpt afterwards,
    the exit status, and the temporary files or directories left.

    Each run is a fork of this process (which imported torch and Lightning once, and ran no parallel torch op):
    starting a fresh interpreter per run would take most of the test's time."""
    last = root / "checkpoints" / "last.ckpt"
    max_steps = kills + 2
    records = []
    for run in range(kills + 1):
        killed = run < kills
        resumed_from = saved_step(last) if last.exists() else 0
        os.environ[WRITE_DELAY_ENV] = str(delay if killed else 0)
        leftovers = {p.name for p in last.parent.glob(".last.ckpt.*.tmp")}  # the torn file of the previous kill
        pid = os.fork()
        if pid == 0:  # the child: one fit, then leave without running the parent's exit handlers
            status = 1
            try:
                torch.set_num_threads(1)
                strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if fsdp2 else "auto"
                trainer = toy_trainer(root, max_steps, strategy=strategy)
                trainer.fit(ToyRegression(), ckpt_path="last" if last.exists() else None)
                status = 0
            finally:
                os._exit(status)
        seen: set[str] = set()
        while killed and len(seen) < 2:
            seen |= {p.name for p in last.parent.glob(".last.ckpt.*.tmp")} - leftovers
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise RuntimeError(f"run {run} ended before its second save")
            time.sleep(0.005)
        if killed:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        records.append({
            "run": run, "resumed_from": resumed_from, "saved_step": saved_step(last),
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "torn_files": sorted(p.name for p in last.parent.glob(".last.ckpt.*.tmp")),
        })  # fmt: skip
    return records


def hang(root: Path) -> None:
    """A fit under HangWatchdog(on_hang=checkpoint_and_exit) whose step 6 sleeps for 10 minutes: the watchdog
    ends the process (with its exit code) long before. Periodic checkpoints are every 4 steps, so a last.ckpt of
    step 6 is the watchdog's."""
    from callbacks import HangWatchdog

    def sleep_at_six(step: int) -> None:
        if step == 6:
            time.sleep(600)

    watchdog = HangWatchdog(factor=5, min_seconds=1, warmup_steps=3, on_hang="checkpoint_and_exit", poll_seconds=0.05)
    toy_trainer(root, 10, [watchdog], every_n_train_steps=4).fit(ToyRegression(sleep_at_six))


if __name__ == "__main__":
    command, root = sys.argv[1], Path(sys.argv[2])
    if command == "kill-during-save":
        print(json.dumps(kill_during_save(root, int(sys.argv[3]), fsdp2=sys.argv[4:] == ["fsdp2"])))
    elif command == "hang":
        hang(root)
