"""Hint-GRPO's settings (`model.init_args.grpo`), one frozen dataclass as TRL's GRPOConfig is one config object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from msathinker.grpo import LossType, RewardScale


@dataclass(frozen=True)
class GRPOOptions:
    """GRPO settings; defaults follow TRL's GRPOConfig so runs are comparable."""

    num_generations: int = 8
    """G, completions sampled per prompt (>= 2). Prompts per step = the DataModule's batch_size."""
    max_completion_length: int = 256
    """Most tokens sampled per completion; also the dr_grpo normaliser."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed from logits divided by it."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    loss_type: LossType = "dapo"
    """Aggregation: grpo (per-sequence mean), bnpo (token mean per micro-batch), dr_grpo (sum / (B * L)), dapo
    (token sum / active tokens of the whole generation batch)."""
    scale_rewards: RewardScale = "group"
    """Advantage scaling: group std, batch std, or none (Dr. GRPO)."""
    epsilon_low: float = 0.2
    """Lower clip of the ratio: 1 - epsilon_low."""
    epsilon_high: float = 0.2
    """Upper clip of the ratio: 1 + epsilon_high (DAPO uses 0.28)."""
    beta: float = 0.0
    """KL coefficient (k3 estimator); > 0 needs a reference (see `reference`)."""
    reference: Literal["auto", "base", "sft_adapter"] = "auto"
    """Reference policy for the KL: "base" = the model with the adapter disabled; "sft_adapter" = a frozen copy of
    policy.adapter_path loaded as adapter "ref"; "auto" = sft_adapter when an adapter_path is set, else base."""
    num_iterations: int = 1
    """Updates per generation batch (mu); > 1 stores the old log-probs for the ratio."""
    micro_batch_size: int | None = None
    """Completions per forward/backward pass (gradient accumulation inside a step); None = all at once."""
    mask_truncated_completions: bool = False
    """Drop completions that hit max_completion_length from the loss (they still count in the group statistics)."""
    dynamic_sampling: bool = False
    """DAPO-style: keep only groups whose rewards are not all equal, buffering them across steps until a full batch
    of prompts is collected (TRL does not do this). The buffer is saved in the checkpoint: a resumed run trains on
    the same groups."""
    max_buffer_staleness: int | None = 4
    """With dynamic sampling: drop a buffered group once the policy has taken more than this many optimizer steps
    since it was sampled (its completions come from an older policy); None keeps every group. Logged:
    train/dynamic_sampling_staleness (mean over the groups trained on) and train/dynamic_sampling_dropped."""
    span_credit: bool = False
    """DC span credit: each reward is normalised per group on its own (GDPO's decoupled normalisation) and its
    advantage reaches only the tokens of its span (`Reward.span`): polarity the discrimination (through
    </discrimination>), score the calibration and the answer, format every token. A completion without a single
    </discrimination> gets every reward on every token. Needs data.init_args.output_format dc. False: one advantage
    per completion from the weighted reward sum (TRL)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; None disables it."""
    encode_media_once: bool = True
    """Run the audio/vision towers once per prompt per step (False feeds the raw media to every forward: the towers
    run again in each sampling pass and log-prob pass, for every completion unless share_prompts; only for
    benchmarking)."""
    share_prompts: bool = True
    """In the log-prob passes, run each prompt through the LM once per group and its G completions from the prompt's
    KV cache (same log-probs and gradients as full rows; LoRA dropout then draws one mask for the shared prompt).
    Off under policy.gradient_checkpointing, which drops the cache; False runs every prompt + completion row in full,
    as TRL does."""
    per_completion_seeds: bool = False
    """Sample each completion from its own generator seeded by (module seed, epoch, batch index, clip id, completion
    index, hinted or not) instead of the global RNG: the rollouts then do not depend on how the prompts are split
    across processes or batched, so runs on 1 and N processes with the same global batch sample the same
    completions. Exact sampling (Gumbel-max over the temperature / top-p distribution)."""

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(
                f"grpo.num_generations must be >= 2 (a group needs a baseline), got {self.num_generations}"
            )
