"""Artifacts of a run: the completions table of every evaluation and the trained adapter, logged to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger

if TYPE_CHECKING:
    from msathinker.hint_grpo import HintGRPOModule
    from msathinker.module import OmniPolicyModule

log = logging.getLogger(__name__)


def _mlflow(trainer: L.Trainer) -> MLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


class CompletionsTable(L.Callback):
    """Logs the completions of each validation/test pass (id, completion, parsed polarity/score, label) as an MLflow
    table artifact `completions/<stage>_<dataset>_step<N>.json`; rank 0 logs its own share of the clips. Reads the
    module's `evaluator` and `data_info` (msathinker.module.OmniPolicyModule).

    Args:
        max_rows: most rows per table (the first clips of the split).
    """

    def __init__(self, max_rows: int = 200):
        self.max_rows = max_rows

    def _log(self, trainer: L.Trainer, pl_module: OmniPolicyModule, stage: str) -> None:
        logger = _mlflow(trainer)
        evaluator = pl_module.evaluator
        if logger is None or evaluator is None or not evaluator.rows or trainer.sanity_checking:
            return
        if trainer.global_rank != 0:
            return
        rows = evaluator.rows[: self.max_rows]
        table = {key: [row[key] for row in rows] for key in rows[0]}
        name = f"completions/{stage}_{pl_module.data_info.dataset}_step{trainer.global_step:06d}.json"
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=name)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: OmniPolicyModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: OmniPolicyModule) -> None:
        self._log(trainer, pl_module, "test")


class ExportAdapter(L.Callback):
    """At the end of fit, writes the LoRA adapter in peft format to `<default_root_dir>/<dirname>` and logs it to
    MLflow as the `adapter` artifact directory; nothing when the module trains no adapter (its `has_adapter`).

    Args:
        dirname: directory name under the trainer's default_root_dir.
    """

    def __init__(self, dirname: str = "adapter"):
        self.dirname = dirname

    def on_train_end(self, trainer: L.Trainer, pl_module: OmniPolicyModule) -> None:
        if not pl_module.has_adapter:
            return
        directory = Path(trainer.default_root_dir) / self.dirname
        pl_module.save_adapter(directory)  # every rank: a sharded model is gathered first
        if trainer.is_global_zero:
            log.info("adapter written to %s", directory)
            logger = _mlflow(trainer)
            if logger is not None:
                logger.experiment.log_artifacts(logger.run_id, str(directory), artifact_path="adapter")
        trainer.strategy.barrier()


class RolloutTable(L.Callback):
    """Logs sample Hint-GRPO rollouts (step, clip id, completion, hinted or not, the prefix the hint forced, label,
    reward and each reward term) as an MLflow table artifact `rollouts/step<N>.json` every `every_n_steps` optimizer
    steps, from the module's `last_rollout` (msathinker.rollouts.Rollout). A hinted row's completion starts with its
    forced prefix (placement "prefix"); "forced_prefix" repeats it apart ("" for unhinted rows and prompt hints).

    Args:
        every_n_steps: logging interval in optimizer steps.
        max_rows: most rollouts per table.
    """

    def __init__(self, every_n_steps: int = 50, max_rows: int = 64):
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows
        self._last_logged = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from msathinker.hint_grpo import HintGRPOModule

        if not isinstance(pl_module, HintGRPOModule):
            raise TypeError(
                f"callbacks.RolloutTable logs Hint-GRPO rollouts, but the model is a {type(pl_module).__name__}: "
                "remove the callback from trainer.callbacks"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: HintGRPOModule, outputs, batch, batch_idx) -> None:
        logger = _mlflow(trainer)
        rollout = pl_module.last_rollout
        step = trainer.global_step
        if logger is None or rollout is None or not trainer.is_global_zero or step == self._last_logged:
            return
        if step % self.every_n_steps:
            return
        self._last_logged = step
        n = min(self.max_rows, len(rollout.samples))
        samples = rollout.samples[:n]
        table = {
            "step": [step] * n,
            "id": [s.clip_id for s in samples],
            "completion": [s.completion for s in samples],
            "hinted": [s.hinted for s in samples],
            "forced_prefix": rollout.prefixes[:n],
            "label": [s.label for s in samples],
            "reward": rollout.rewards[:n].tolist(),
            **{name: rollout.per_reward[:n, k].tolist() for k, name in enumerate(rollout.reward_names)},
        }
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"rollouts/step{step:06d}.json")
