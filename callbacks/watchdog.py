"""A watchdog for training steps that hang (a stuck collective, a data loader that never returns, a generation
that does not stop): it says where every thread is, and can hand the job back to the scheduler. Off unless a
config names it:

    trainer:
      callbacks:
        - class_path: callbacks.HangWatchdog
          init_args: {factor: 10, min_seconds: 300, on_hang: checkpoint_and_exit}
"""

from __future__ import annotations

import faulthandler
import logging
import os
import statistics
import sys
import threading
import time
from collections import deque
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

OnHang = Literal["dump", "exit", "checkpoint_and_exit"]


class HangWatchdog(L.Callback):
    """Watches every training step from a background thread. A step (one training batch: forward, backward and,
    at the end of an accumulation, the optimizer step; validation and checkpoint saving are not timed) is hung
    once it has run longer than both `factor` times the median of the recent steps and `min_seconds`. Then the
    watchdog logs the step and its duration, and dumps the stack of every thread of the process to stderr
    (faulthandler), once per hung step, and then:

    - "dump": nothing more; if the step finishes after all, training goes on.
    - "exit": the process exits at once with `exit_code` (os._exit: the hung main thread cannot be unwound), so a
      scheduler can restart it with `--ckpt_path last` from the last periodic checkpoint.
    - "checkpoint_and_exit": first saves a checkpoint to the ModelCheckpoint's `last.ckpt` (a ModelCheckpoint
      callback is required), then exits. The checkpoint holds the weights and optimizer state of the last
      completed optimizer step (unless the hang is in the weight update itself), and a resumed run redoes
      the hung batch. Saving needs every process of a distributed run, so with more than one process the
      watchdog exits without saving and the last periodic checkpoint is what a restart resumes from.

    Every process runs its own watchdog: under DDP/FSDP2 each dumps its own stacks, which shows which rank is
    stuck where. A hang inside C code that holds Python's GIL stops the watchdog too (rare: collectives, I/O and
    sleeps release it).

    Args:
        factor: a step is hung when it has run more than `factor` times the median step...
        min_seconds: ...and more than `min_seconds` (a fast step's median is too small to judge alone).
        warmup_steps: steps timed before the watchdog judges any (the first steps compile and fill caches).
        window: the median is over the last `window` steps.
        on_hang: "dump", "exit" or "checkpoint_and_exit" (above).
        exit_code: the exit status of "exit" and "checkpoint_and_exit" (default 75, EX_TEMPFAIL: try again).
        poll_seconds: how often the watchdog thread looks at the running step.
    """

    def __init__(
        self,
        factor: float = 10.0,
        min_seconds: float = 60.0,
        warmup_steps: int = 5,
        window: int = 100,
        on_hang: OnHang = "dump",
        exit_code: int = 75,
        poll_seconds: float = 1.0,
    ):
        if factor <= 1 or min_seconds < 0 or warmup_steps < 1 or window < 1 or poll_seconds <= 0:
            raise ValueError(
                "HangWatchdog needs factor > 1, min_seconds >= 0, warmup_steps >= 1, window >= 1 and "
                f"poll_seconds > 0; got factor={factor}, min_seconds={min_seconds}, warmup_steps={warmup_steps}, "
                f"window={window}, poll_seconds={poll_seconds}"
            )
        if exit_code == 0:
            raise ValueError("HangWatchdog exit_code must be non-zero: a scheduler restarts only a failed job")
        self.factor, self.min_seconds, self.warmup_steps = factor, min_seconds, warmup_steps
        self.on_hang, self.exit_code, self.poll_seconds = on_hang, exit_code, poll_seconds
        self.hangs: list[dict[str, float]] = []
        """The hung steps seen: step (global step), batch (index in the epoch), seconds (run when seen), median."""
        self._durations: deque[float] = deque(maxlen=window)
        self._running: tuple[float, int, int] | None = None  # start time, global step, batch index
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        needs_checkpoint = stage == "fit" and self.on_hang == "checkpoint_and_exit"
        if needs_checkpoint and not isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            raise ValueError(
                "HangWatchdog(on_hang=checkpoint_and_exit) saves to the ModelCheckpoint callback's last.ckpt, and "
                "this trainer has none: add a lightning.pytorch.callbacks.ModelCheckpoint to trainer.callbacks, "
                "or use on_hang: exit"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(trainer,), name="HangWatchdog", daemon=True)
        self._thread.start()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        with self._lock:
            self._running = (time.perf_counter(), trainer.global_step, batch_idx)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        with self._lock:
            if self._running is not None:
                self._durations.append(time.perf_counter() - self._running[0])
            self._running = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._halt()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _watch(self, trainer: L.Trainer) -> None:
        judged = None  # the step already reported
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                running, durations = self._running, list(self._durations)
            if running is None or running == judged or len(durations) < self.warmup_steps:
                continue
            started, step, batch = running
            median = statistics.median(durations)
            seconds = time.perf_counter() - started
            if seconds > max(self.factor * median, self.min_seconds):
                judged = running
                self._hung(trainer, {"step": step, "batch": batch, "seconds": seconds, "median": median})

    def _hung(self, trainer: L.Trainer, hang: dict[str, float]) -> None:
        self.hangs.append(hang)
        log.error(
            "HangWatchdog: training step %d (batch %d) has run %.1f s, %.1fx the median step of %.3g s "
            "(factor %g, min_seconds %g); the stacks of all threads of process %d (rank %d) follow",
            hang["step"], hang["batch"], hang["seconds"], hang["seconds"] / hang["median"], hang["median"],
            self.factor, self.min_seconds, os.getpid(), trainer.global_rank,
        )  # fmt: skip
        _flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.on_hang == "dump":
            return
        if self.on_hang == "checkpoint_and_exit":
            self._save(trainer)
        log.error("HangWatchdog: exiting with status %d (on_hang=%s)", self.exit_code, self.on_hang)
        _flush()
        os._exit(self.exit_code)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.world_size > 1:
            log.error("HangWatchdog: not saving a checkpoint (it needs all %d processes)", trainer.world_size)
            return
        callback = trainer.checkpoint_callback
        path = os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
        try:
            trainer.save_checkpoint(path, weights_only=False)
            log.error("HangWatchdog: saved %s (global step %d)", path, trainer.global_step)
        except Exception:
            log.exception("HangWatchdog: saving %s failed; the last periodic checkpoint stays", path)


def _flush() -> None:
    for handler in [*logging.getLogger().handlers, *log.handlers]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
