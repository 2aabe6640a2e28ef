"""Stage 1: cold-start SFT of the thinker on Discrimination-Calibration completions.

Causal-LM loss on the assistant tokens only (the DataModule masks prompt, system, media placeholders and padding
with -100). Validation and test generate (greedy by default), parse the completions and report MMSA's metrics
under `<stage>/<dataset>/<metric>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from msathinker.checkpoints import restore_rng_states, save_trainable
from msathinker.evaluation import CompletionEvaluator, GenerationOptions, generate_completions
from msathinker.policy import PolicyOptions, build_policy, validate_policy_options


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops before any checkpoint of that state is written."""


class SFTModule(L.LightningModule):
    """Supervised fine-tuning of a Qwen2.5-Omni thinker (LoRA by default) with generation-based evaluation.

    Args:
        policy: which checkpoint to load and what trains (LoRA, 4-bit base, frozen towers, checkpointing).
        optimizer: optimizer class and arguments (class_path/init_args), called with the trainable parameters.
        scheduler: optional learning-rate scheduler (class_path/init_args), stepped every optimizer step.
        generation: decoding settings of validation/test/predict.
        output_format: completion format the answers are parsed with ("dc" or "plain"); match the data's.
        unparsed_score: the prediction scored for a completion with no parsable number (documented policy).
        prediction_scale: label range the model answers on ("mosei" = [-3, 3], "sims" = [-1, 1]) when evaluating
            on a dataset with another range (cross-domain); answers are mapped linearly. None: the dataset's own.
    """

    def __init__(
        self,
        policy: PolicyOptions = PolicyOptions(),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        generation: GenerationOptions = GenerationOptions(),
        output_format: Literal["dc", "plain"] = "dc",
        unparsed_score: float = 0.0,
        prediction_scale: Literal["mosei", "sims"] | None = None,
    ):
        super().__init__()
        validate_policy_options(policy)
        self.save_hyperparameters()
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.generation = generation
        self.model = None
        self.processor = None
        self.evaluator: CompletionEvaluator | None = None
        self.strict_loading = False  # checkpoints hold the trainable weights only

    def configure_model(self) -> None:
        if self.model is None:
            self.model, self.processor = build_policy(self.policy)
            self.model.train()

    # --- training -----------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch["inputs"]).loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at global step {self.global_step} (batch {batch_idx}, clips "
                f"{batch['meta']['id']}); stopping without saving. Lower the learning rate or check the data; "
                "the last good checkpoint is untouched."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["meta"]["id"]))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

    # --- evaluation ---------------------------------------------------------------------------------------------

    def _start_eval(self) -> None:
        datamodule = self.trainer.datamodule
        self.evaluator = CompletionEvaluator(
            datamodule.scale, self.hparams.output_format, self.hparams.unparsed_score, self.hparams.prediction_scale
        ).to(self.device)
        self.eval_dataset = datamodule.hparams.dataset

    def _eval_step(self, batch: dict[str, Any]) -> list[str]:
        completions = generate_completions(self.model, self.processor, batch["inputs"], self.generation)
        self.evaluator.update(batch["meta"]["id"], completions, batch["meta"]["label"])
        return completions

    def _end_eval(self, stage: str) -> None:
        metrics = self.evaluator.compute()
        self.log_dict({f"{stage}/{self.eval_dataset}/{k}": v for k, v in metrics.items()}, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        before = len(self.evaluator.rows)
        self._eval_step(batch)
        return self.evaluator.rows[before:]

    # --- checkpoints and export ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_trainable(self.model, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])

    @property
    def has_adapter(self) -> bool:
        return self.policy.lora is not None

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter in peft format (adapter_config.json + adapter_model.safetensors)."""
        if self.policy.lora is None:
            raise ValueError("no LoRA adapter to save: this run trains the full model (policy.lora is null)")
        directory = Path(directory)
        self.model.save_pretrained(directory)
        return directory
