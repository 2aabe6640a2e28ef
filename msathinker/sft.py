"""Stage 1: cold-start SFT of the thinker on Discrimination-Calibration completions.

Causal-LM loss on the assistant tokens only (the DataModule masks prompt, system, media placeholders and padding
with -100), averaged over every such token of the global batch (all ranks), so the gradient does not depend on how
the batch is split across processes. Validation and test generate (greedy by default), parse the completions and
report MMSA's metrics under `<stage>/<dataset>/<metric>`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from msathinker.evaluation import GenerationOptions
from msathinker.module import OmniPolicyModule
from msathinker.policy import PolicyOptions
from msathinker.sharding import all_reduce_sum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops before any checkpoint of that state is written."""


class SFTModule(OmniPolicyModule):
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
        policy: PolicyOptions,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        generation: GenerationOptions = GenerationOptions(),
        output_format: Literal["dc", "plain"] = "dc",
        unparsed_score: float = 0.0,
        prediction_scale: Literal["mosei", "sims"] | None = None,
    ):
        super().__init__(policy, optimizer, scheduler, generation, output_format, unparsed_score, prediction_scale)
        self.save_hyperparameters(logger=False)  # the CLI logs the full resolved config instead

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch["inputs"], num_items_in_batch=self._tokens_per_rank(batch["inputs"]["labels"])).loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at global step {self.global_step} (batch {batch_idx}, clips "
                f"{batch['meta']['id']}); stopping without saving. Lower the learning rate or check the data; "
                "the last good checkpoint is untouched."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["meta"]["id"]), sync_dist=True)
        return loss

    def _tokens_per_rank(self, labels: torch.Tensor) -> torch.Tensor:
        """The loss divisor that makes the gradient a mean over every target token of the global batch: the
        data-parallel gradient average divides by the world size again (as transformers' Trainer does)."""
        tokens = all_reduce_sum((labels[:, 1:] != -100).sum().float())
        return (tokens / self.trainer.world_size).clamp(min=1.0)
