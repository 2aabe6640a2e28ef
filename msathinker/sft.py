"""Stage 1: cold-start SFT of the thinker on Discrimination-Calibration completions.

Causal-LM loss on the assistant tokens only (the DataModule masks prompt, system, media placeholders and padding
with -100), averaged over every such token of the global batch (all ranks), so the gradient does not depend on how
the batch is split across processes. The LM head runs on those tokens' positions only: a 7.5k-token clip's logits at
every position would take about 15 GiB at 7B (docs/memory.md). Validation and test generate (greedy by default),
parse the completions and report MMSA's metrics under `<stage>/<dataset>/<metric>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from msathinker.module import OmniPolicyModule
from msathinker.moe import MoEOptions, expert_load, load_balancing_loss
from msathinker.policy import PolicyOptions
from msathinker.qwen_omni import family_of
from msathinker.rollout import thinker_of
from msathinker.sharding import all_reduce_sum

IGNORE_INDEX = -100
"""The label of positions that carry no loss (prompt, media placeholders, padding), as in transformers."""


def target_token_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    num_items_in_batch: torch.Tensor | float,
) -> torch.Tensor:
    """Causal-LM cross-entropy with the LM head run on the target positions only.

    hidden (B, S, H) is the language model's last hidden state, labels (B, S) the input ids with IGNORE_INDEX where
    no loss is taken. Position t predicts label t + 1:

        loss = sum over (b, t) with labels[b, t + 1] != -100 of  -log softmax(lm_head(hidden[b, t]))[labels[b, t + 1]]
               / num_items_in_batch

    This is transformers' ForCausalLMLoss (transformers/loss/loss_utils.py: labels shifted by one, logits upcast to
    fp32, F.cross_entropy with reduction "sum" divided by num_items_in_batch), which the thinker's forward computes
    from the logits of every position; the ignored positions add exactly 0 there, so leaving them out gives the same
    loss and gradients without the (B, S, vocab) logits.
    """
    shifted = labels[:, 1:]
    targets = shifted != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][targets]).float()
    return F.cross_entropy(logits, shifted[targets], reduction="sum") / num_items_in_batch


def sft_loss(
    model, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | float, router_logits: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """target_token_loss of a collated batch (the thinker's inputs and labels) under `model` (the thinker or its
    peft wrapper), and with `router_logits` (mixture-of-experts models) the routers' logits of every layer. The
    language model and the LM head are called directly, as GRPO does: each is an FSDP2 unit of its own, and the
    thinker's forward would compute the logits of every position."""
    thinker = thinker_of(model)
    features = {name: value for name, value in inputs.items() if name != "labels"}
    if router_logits:
        features["output_router_logits"] = True
    out = thinker.model(**features, use_cache=False)
    loss = target_token_loss(out.last_hidden_state, inputs["labels"], thinker.lm_head, num_items_in_batch)
    return loss, out.router_logits if router_logits else None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops before any checkpoint of that state is written."""


class SFTModule(OmniPolicyModule):
    """Supervised fine-tuning of an omni thinker (LoRA by default) with generation-based evaluation. Its arguments
    are OmniPolicyModule's (policy, optimizer, scheduler, generation, unparsed_score, prediction_scale) and `moe`;
    the completion format is the data's (data.init_args.output_format).

    Args:
        moe: the router terms of a mixture-of-experts student (Qwen3-Omni): the load-balancing loss, off by
            default. On such a student the expert load (`train/moe/expert_load_max`: the busiest expert's share of
            the routed tokens times the number of experts, averaged over layers; 1.0 is a perfect balance) and the
            load-balancing loss (`train/moe/router_aux_loss`) are logged at every step either way.
    """

    def __init__(self, policy: PolicyOptions, moe: MoEOptions = MoEOptions(), **kwargs: Any):
        super().__init__(policy, **kwargs)
        self.moe = moe

    def configure_model(self) -> None:
        super().configure_model()
        if self.moe.router_aux_loss and not self.is_moe:
            raise ValueError(
                f"moe.router_aux_loss is on, but {self.policy.model_path} is not a mixture-of-experts model "
                f"({family_of(thinker_of(self.model))} is dense): turn it off"
            )

    @property
    def is_moe(self) -> bool:
        return family_of(thinker_of(self.model)) == "qwen3_omni"

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not self.data_info.has_targets:
            raise ValueError(
                "SFT trains on target completions: set data.init_args.targets (a teacher-synthesis JSONL, or "
                "'rules' for the rule-based rationales)"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = batch["inputs"]
        loss, router_logits = sft_loss(self.model, inputs, self._tokens_per_rank(inputs["labels"]), self.is_moe)
        if router_logits is not None:
            loss = loss + self._router_terms(router_logits, inputs["attention_mask"], len(batch["meta"]["id"]))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at global step {self.global_step} (batch {batch_idx}, clips "
                f"{batch['meta']['id']}); stopping without saving. Lower the learning rate or check the data; "
                "the last good checkpoint is untouched."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["meta"]["id"]), sync_dist=True)
        return loss

    def _router_terms(self, router_logits, attention_mask: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Log the expert load and the load-balancing loss; return the loss term added to the SFT loss."""
        text_config = thinker_of(self.model).config.text_config
        top_k = text_config.num_experts_per_tok
        load = expert_load(router_logits, top_k, attention_mask)
        aux = load_balancing_loss(router_logits, top_k, attention_mask)
        logged = {
            "train/moe/expert_load_max": load.max(-1).values.mean() * load.shape[-1],
            "train/moe/router_aux_loss": aux,
        }
        self.log_dict({k: v.detach() for k, v in logged.items()}, batch_size=batch_size, sync_dist=True)
        if not self.moe.router_aux_loss:
            return aux.new_zeros(())
        coef = self.moe.router_aux_loss_coef
        return (text_config.router_aux_loss_coef if coef is None else coef) * aux

    def _tokens_per_rank(self, labels: torch.Tensor) -> torch.Tensor:
        """The loss divisor that makes the gradient a mean over every target token of the global batch: the
        data-parallel gradient average divides by the world size again (as transformers' Trainer does)."""
        tokens = all_reduce_sum((labels[:, 1:] != IGNORE_INDEX).sum().float())
        return (tokens / self.trainer.world_size).clamp(min=1.0)
