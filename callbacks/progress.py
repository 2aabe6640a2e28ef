"""Progress bars of training and testing: Rich's bar on a terminal, plain lines in a log file.

The CLI installs one of them (unless the config names a progress bar callback or sets
`trainer.enable_progress_bar: false`): `TerminalProgressBar` when stdout is a terminal, `LineProgressBar` when it
is not (nohup, SLURM, CI logs), both set by the `progress` options (`--progress.every_n_steps 50`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from msathinker.progress import ProgressLines


@dataclasses.dataclass(frozen=True)
class ProgressOptions:
    """How the CLI shows progress (the `progress` section of a config): Rich's bar on a terminal; when stdout is not
    a terminal (nohup, SLURM, CI logs), one line every `every_n_steps` training steps and validation/test batches
    with the step, the `metrics`, it/s and the ETA."""

    every_n_steps: int = 10
    """When stdout is not a terminal: one line every N training steps (and every N validation/test/predict
    batches), with the step, the metrics below, it/s and the ETA."""
    metrics: tuple[str, ...] = ("train/loss", "train/reward")
    """Logged metrics shown with the progress (in the lines and next to the terminal bar), those the run logs."""


def default_progress_bar(options: ProgressOptions, stream: IO[str] | None = None) -> ProgressBar:
    """`TerminalProgressBar` when `stream` (default stdout) is a terminal, else `LineProgressBar`."""
    if (stream or sys.stdout).isatty():
        return TerminalProgressBar(metrics=options.metrics)
    return LineProgressBar(every_n_steps=options.every_n_steps, metrics=options.metrics)


def _shown(trainer: L.Trainer, names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The logged values of `names` the run has, as floats."""
    return {name: float(trainer.callback_metrics[name]) for name in names if name in trainer.callback_metrics}


class TerminalProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, with the epoch header fixed and the chosen metrics shown.

    Lightning's header is "Epoch <e>/<max_epochs - 1>", which reads "Epoch 0/-2" when `max_steps` bounds the run
    (max_epochs is then -1); this one shows "Epoch <e>" alone in that case.

    Args:
        metrics: logged metrics shown next to the bar when the run logs them (e.g. train/reward of Hint-GRPO,
            which is not a progress-bar metric).
    """

    def __init__(self, metrics: tuple[str, ...] | list[str] = ProgressOptions.metrics, **kwargs: Any):
        super().__init__(**kwargs)
        self.metrics = tuple(metrics)

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:  # unbounded epochs: no count to show
            description = f"{f'Epoch {current_epoch}':{len(description)}}"
        return description

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {**_shown(trainer, self.metrics), **super().get_metrics(trainer, pl_module)}


class LineProgressBar(ProgressBar):
    """Progress for log files: a plain line every `every_n_steps` training steps, and every `every_n_steps`
    batches of validation, test and predict, plus a closing line for each, printed to stdout on rank 0:

        train step 40/400 | train/loss 6.467 | 0.448 it/s | ETA 0:13:23
        validation batch 4/4 | done in 0:00:12

    The step is the optimizer step (trainer.global_step; a resumed run continues its count); the ETA is to
    max_steps (or the estimated steps of max_epochs) at the rate since the previous line.

    Args:
        every_n_steps: print a line every N training steps / evaluation batches.
        metrics: logged metrics each training line shows, those the run logs.
    """

    def __init__(self, every_n_steps: int = 10, metrics: tuple[str, ...] | list[str] = ProgressOptions.metrics):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"progress.every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.metrics = tuple(metrics)
        self._enabled = True
        self._lines: ProgressLines | None = None
        self._paused: ProgressLines | None = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _start(self, desc: str, total: float, initial: int = 0) -> None:
        self._lines = ProgressLines(desc, total, "it", self.every_n_steps, initial) if self._enabled else None

    def _close(self, metrics: dict[str, float] | None = None) -> None:
        if self._lines is not None:
            self._lines.close(metrics)
            self._lines = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self._start("train step", total, initial=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        lines = self._lines
        if lines is not None and trainer.global_step > lines.n:  # an optimizer step (not an accumulation batch)
            lines.update(trainer.global_step - lines.n, _shown(trainer, self.metrics))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(_shown(trainer, self.metrics))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused, self._lines = self._lines, None  # validation inside fit: the training count resumes after it
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._start("sanity check batch" if trainer.sanity_checking else "validation batch", sum(batches))

    def _advance(self, *args: Any, **kwargs: Any) -> None:
        if self._lines is not None:
            self._lines.update()

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _advance

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        self._lines, self._paused = self._paused, None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test batch", sum(trainer.num_test_batches))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("predict batch", sum(trainer.num_predict_batches))

    def _end(self, *args: Any) -> None:
        self._close()

    on_test_end = on_predict_end = _end
