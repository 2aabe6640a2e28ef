"""GRPO math as pure torch functions: group advantages, the clipped policy loss, token log-probs and entropy.

Everything here follows TRL's `GRPOTrainer` (huggingface/trl `trl/trainer/grpo_trainer.py`,
`_generate_and_score_completions` and `_compute_loss`; helpers from `trl/trainer/utils.py`) so that runs are
comparable with TRL runs and with papers that use it (docs/method.md, GRPO).
No model, no Lightning, no distributed calls: the caller gathers rewards / token counts across processes and passes
them in.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

RewardScale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]

REWARD_SCALES: tuple[str, ...] = get_args(RewardScale)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)

ADVANTAGE_EPS = 1e-4
"""Added to the reward std (not inside the sqrt), as TRL does (`advantages / (std_rewards + 1e-4)`)."""


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased (Bessel, n-1) standard deviation ignoring NaNs; TRL's `trl/trainer/utils.py: nanstd`.

    torch has no `nanstd`. Like TRL's, this returns NaN where fewer than two values are non-NaN (n-1 = 0), which
    later turns into a zero advantage.
    """
    if dim is None:
        mean = torch.nanmean(x, keepdim=True)
        variance = torch.nanmean((x - mean) ** 2)
        count = torch.sum(~torch.isnan(x))
    else:
        mean = torch.nanmean(x, dim=dim, keepdim=True)
        variance = torch.nanmean((x - mean) ** 2, dim=dim)
        count = torch.sum(~torch.isnan(x), dim=dim)
    variance = variance * (count / (count - 1))
    return torch.sqrt(variance)


def _check_rewards(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"the number of rewards ({rewards.numel()}) is not a multiple of group_size ({group_size}); rewards "
            "must be ordered as consecutive groups of group_size completions of the same prompt"
        )
    return rewards if rewards.is_floating_point() else rewards.float()


def group_reward_std(rewards: Tensor, group_size: int) -> Tensor:
    """Per-group unbiased standard deviation of the rewards, NaN rewards excluded; shape (B // group_size,).

    Used for the advantage denominator (scale "group") and for logging `frac_reward_zero_std`
    (TRL: `torch.isclose(std, 0)`; a zero-std group gives every member advantage 0, i.e. no gradient).
    As in TRL, a group of size 1 has std 0 (TRL: `torch.zeros_like(rewards)` when `num_generations == 1`), and a
    group with fewer than two non-NaN rewards has std NaN.
    """
    rewards = _check_rewards(rewards, group_size)
    if group_size == 1:
        return torch.zeros_like(rewards)
    return _nanstd(rewards.view(-1, group_size), dim=1)


def group_advantages(
    rewards: Tensor, group_size: int, scale: RewardScale = "group", split: Tensor | None = None
) -> Tensor:
    """Group-relative advantages, exactly TRL's `sum_then_normalize` path (docs/method.md, Advantages).

    `rewards` has shape (B,), ordered as consecutive groups of `group_size` completions of one prompt.

    * "group": A_i = (r_i - mean_g) / (std_g + 1e-4), std unbiased (DeepSeekMath GRPO, TRL's default).
    * "batch": A_i = (r_i - mean_g) / (std_batch + 1e-4): mean per group, std over the whole batch (TRL "batch").
    * "none":  A_i = r_i - mean_g (Dr. GRPO: no std scaling, which biases towards easy/hard questions otherwise).

    A NaN reward marks a completion whose reward could not be computed: it is left out of the group mean and std
    (`nanmean` / unbiased `nanstd`) and its advantage is 0, so it neither biases the baseline nor moves the policy
    (TRL: `rewards[unscorable_mask] = nan` ... `advantages = torch.nan_to_num(advantages, nan=0.0)`). Groups whose
    rewards are all NaN, or that have a single non-NaN reward, get advantage 0 throughout.

    `split` (B,) bool, optional: the baseline is taken apart on each side of the split within a group (Hint-GRPO's
    `baseline: split`, with the hinted and unhinted completions of a "mix" group): the mean, and with "group" the
    std, are over the group's members on the same side; "batch" keeps one std over the whole batch. A side with one
    scored member gets advantage 0 (its std is NaN with "group", r - mean = 0 otherwise).
    """
    rewards = _check_rewards(rewards, group_size)
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; choose one of {', '.join(REWARD_SCALES)}")
    if split is not None:
        if split.shape != rewards.shape:
            raise ValueError(f"split must be (B,) = {tuple(rewards.shape)} like rewards, got {tuple(split.shape)}")
        # each part's members see only their own part's rewards; NaN is "left out" throughout
        parts = [torch.where(split == value, rewards, torch.nan) for value in (False, True)]
        part_advantages = [group_advantages(r, group_size, scale) for r in parts]
        if scale == "batch":  # one std over the whole batch, not per part
            std = _nanstd(rewards) if rewards.numel() > 1 else rewards.new_zeros(())
            part_advantages = [group_advantages(r, group_size, "none") / (std + ADVANTAGE_EPS) for r in parts]
        return torch.nan_to_num(torch.where(split, part_advantages[1], part_advantages[0]), nan=0.0)
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale == "group":
        std = group_reward_std(rewards, group_size).repeat_interleave(group_size)
        advantages = advantages / (std + ADVANTAGE_EPS)
    elif scale == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else rewards.new_zeros(())
        advantages = advantages / (std + ADVANTAGE_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


def decoupled_advantages(
    per_reward: Tensor,
    weights: Tensor,
    group_size: int,
    scale: RewardScale = "group",
    split: Tensor | None = None,
) -> Tensor:
    """Each reward's own group-relative advantage, times its weight (DC span credit; docs/method.md, Span credit).

    Shapes: `per_reward` (B, K) each reward's value (NaN where it failed), `weights` (K,). Returns (B, K):

        A[b, k] = w_k * group_advantages(per_reward[:, k], group_size, scale, split)[b]

    Normalising each reward per group before they are combined is GDPO's decoupled normalisation (Liu et al. 2026,
    "GDPO: Group reward-Decoupled Normalization Policy Optimization", arXiv 2601.05242), without its final batch
    normalisation of the sum (here the rewards credit different tokens: `token_advantages`). The weight multiplies
    the normalised advantage, so it still counts under std scaling.
    """
    if per_reward.dim() != 2 or weights.shape != per_reward.shape[1:]:
        raise ValueError(
            f"per_reward must be (B, K) and weights (K,), got {tuple(per_reward.shape)} and {tuple(weights.shape)}"
        )
    per_reward = per_reward if per_reward.is_floating_point() else per_reward.float()
    columns = [group_advantages(per_reward[:, k], group_size, scale, split) for k in range(per_reward.shape[1])]
    return torch.stack(columns, dim=1) * weights.to(per_reward)


def token_advantages(reward_advantages: Tensor, in_span: Tensor) -> Tensor:
    """Per-token advantages from per-reward ones: A[b, t] = sum_k reward_advantages[b, k] * in_span[b, k, t].

    `reward_advantages` (B, K) (`decoupled_advantages`), `in_span` (B, K, T) bool: whether token t of completion b
    lies in reward k's span. With one reward whose span covers every token this is that reward's advantage
    broadcast over the tokens.
    """
    if in_span.dim() != 3 or in_span.shape[:2] != reward_advantages.shape:
        raise ValueError(
            f"in_span must be (B, K, T) with (B, K) = {tuple(reward_advantages.shape)}, got {tuple(in_span.shape)}"
        )
    return (reward_advantages.unsqueeze(-1) * in_span.to(reward_advantages)).sum(dim=1)


def shaped_offpolicy_weight(logp: Tensor, gamma: float) -> Tensor:
    """LUFFY's policy shaping of an off-policy token (Yan et al. 2025, "Learning to Reason under Off-Policy
    Guidance", arXiv 2504.14945, eq. 6; their `off_policy_reshape="p_div_p_0.1"`): f(pi) = pi / (pi + gamma), with
    pi = exp(logp) the policy's probability of the token, and the behaviour policy's probability taken as 1 (for a
    token the hint forced it is exactly 1). The gradient of f is gamma / (pi + gamma)^2 * grad pi: tokens the policy
    finds unlikely are not pushed with a weight of 1 / pi as plain importance sampling would."""
    if gamma <= 0:
        raise ValueError(f"the policy-shaping gamma must be > 0, got {gamma}")
    probability = torch.exp(logp)
    return probability / (probability + gamma)


# ----------------------------------------------------------------------------------------------------------------
# Policy loss
# ----------------------------------------------------------------------------------------------------------------


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the positions where `mask` is nonzero (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token Schulman k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1.

    Non-negative and unbiased for samples drawn from pi_theta; TRL's `per_token_kl`.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def policy_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: LossType,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    num_items: float | Tensor | None = None,
    forced: Tensor | None = None,
    gamma: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO clipped surrogate loss with k3 KL penalty and TRL's aggregations; returns (loss, metrics).

    Shapes: `logp`, `old_logp`, `ref_logp`, `mask` are (B, T) per completion token; `advantages` is (B,) per
    completion, or (B, T) per token (DC span credit, `span_advantages`); `forced` is (B, T) bool, the tokens a hint
    forced (Hint credit "policy"). `logp` must come from logits divided by the sampling temperature
    (`token_logprobs(..., temperature)`).

    Per token (TRL `_compute_loss`; docs/method.md, GRPO):
        ratio = exp(logp - old_logp)                       (old_logp None -> logp.detach(): ratio == 1 and the
                                                            gradient is the plain policy gradient, single update)
        L = -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * KL,
        KL = exp(ref - logp) - (ref - logp) - 1            (k3; only added when beta != 0)
    except on a forced token, which the policy did not sample (LUFFY's off-policy term, unclipped; see
    `shaped_offpolicy_weight`):
        L = -f(exp(logp)) * A + beta * KL,   f(p) = p / (p + gamma)

    Aggregation over the masked tokens (`mask` = completion tokens that are trained on; hint tokens must be 0):
        "grpo":    mean over sequences of (sum_t m L / max(sum_t m, 1))            (per-sequence mean first)
        "bnpo":    sum m L / max(sum m, 1)                                          (micro-batch token mean)
        "dr_grpo": sum m L / (B * max_completion_length)                            (Dr. GRPO, constant normaliser)
        "dapo":    sum m L / num_items                                              (DAPO, global token mean)

    `num_items` is the dapo normaliser. TRL divides by (active tokens of the whole generation batch, gathered over
    all processes) / num_processes, because DDP averages gradients over processes; with steps_per_generation equal
    to the accumulation steps this makes the optimizer step a global token mean. This function divides by
    `num_items` exactly as given, so under DDP gradient averaging pass N_global / world_size to reproduce TRL.
    Gradient-accumulation scaling (TRL's `/ GA` for grpo/bnpo/dr_grpo) is left to the caller / Lightning.

    Metrics (detached scalars, masked means over this micro-batch's active tokens, TRL's definitions):
        "kl" (when `ref_logp` is given), "clip_ratio/low_mean" = mean[(ratio < 1 - eps_low) & (A < 0)],
        "clip_ratio/high_mean" = mean[(ratio > 1 + eps_high) & (A > 0)], "clip_ratio/region_mean" = mean of either;
        with `forced`, "forced_token_prob" = mean exp(logp) over the active forced tokens (LUFFY's
        off_policy_prob) and "forced_token_min_prob" = the mean over completions with forced tokens of their least
        likely forced token's exp(logp) (the hint's verdict word, usually); both 0 when there are none.
    TRL averages these over processes; a caller doing DDP reduces them itself.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)} like logp")
    if advantages.shape not in ((logp.shape[0],), logp.shape):
        raise ValueError(
            f"advantages must be (B,) = ({logp.shape[0]},) or (B, T) = {tuple(logp.shape)}, got shape "
            f"{tuple(advantages.shape)}"
        )
    if forced is not None and forced.shape != logp.shape:
        raise ValueError(f"forced has shape {tuple(forced.shape)}, expected {tuple(logp.shape)} like logp")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (reference-model log-probs) for the KL penalty")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length <= 0):
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length > 0")
    if loss_type == "dapo" and (num_items is None or float(num_items) <= 0):
        raise ValueError(
            "loss_type 'dapo' needs num_items > 0 (active tokens in the whole generation batch, see docstring)"
        )

    if old_logp is None:
        old_logp = logp.detach()
    mask_f = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv

    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(ratio * adv, clipped * adv)
    if forced is not None:
        per_token_loss = torch.where(forced, -shaped_offpolicy_weight(logp, gamma) * adv, per_token_loss)
    per_token_kl = k3_kl(logp, ref_logp) if ref_logp is not None else None
    if beta != 0 and per_token_kl is not None:
        per_token_loss = per_token_loss + beta * per_token_kl

    masked = per_token_loss * mask_f
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask_f.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask_f.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        assert max_completion_length is not None
        loss = masked.sum() / (logp.shape[0] * max_completion_length)
    else:  # dapo
        assert num_items is not None
        loss = masked.sum() / num_items

    with torch.no_grad():
        ratio_d = ratio.detach()
        is_low = (ratio_d < 1 - eps_low) & (adv < 0)
        is_high = (ratio_d > 1 + eps_high) & (adv > 0)
        metrics: dict[str, Tensor] = {}
        if per_token_kl is not None:
            metrics["kl"] = masked_mean(per_token_kl.detach(), mask_f)
        metrics["clip_ratio/low_mean"] = masked_mean(is_low.to(logp.dtype), mask_f)
        metrics["clip_ratio/high_mean"] = masked_mean(is_high.to(logp.dtype), mask_f)
        metrics["clip_ratio/region_mean"] = masked_mean((is_low | is_high).to(logp.dtype), mask_f)
        if forced is not None:
            probability, active = torch.exp(logp.detach()), forced & (mask_f > 0)
            metrics["forced_token_prob"] = masked_mean(probability, active)
            least = probability.masked_fill(~active, torch.inf).amin(-1)
            rows = active.any(-1)
            metrics["forced_token_min_prob"] = least[rows].mean() if rows.any() else logp.new_zeros(())
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------------
# Log-probs and entropy from logits
# ----------------------------------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) gathered at `token_ids`; shape = token_ids.shape = logits.shape[:-1].

    Equivalent to `torch.log_softmax(logits / T, -1).gather(-1, ids[..., None])[..., 0]` without materialising a
    second (B, T, V) tensor: TRL's `selective_log_softmax`, looping over the first dimension. For float32/64 it is
    `logits.gather - logsumexp`; for half precision it uses a per-row `log_softmax` because logsumexp in bf16/fp16
    loses precision. The temperature division is done per row too, so the peak extra memory is one row's logits.
    Dividing by the sampling temperature matters: TRL does it, and the ratio/KL must use the sampled distribution.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() < 2 or logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"logits (..., V) and token_ids (...) disagree: {tuple(logits.shape)} vs {tuple(token_ids.shape)}"
        )
    index = token_ids.long()
    rows = []
    for row_logits, row_ids in zip(logits, index, strict=True):
        if temperature != 1.0:
            row_logits = row_logits / temperature
        if row_logits.dtype in (torch.float32, torch.float64):
            selected = row_logits.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
            rows.append(selected - torch.logsumexp(row_logits, dim=-1))
        else:
            rows.append(F.log_softmax(row_logits, dim=-1).gather(-1, row_ids.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int = 128) -> Tensor:
    """Per-position entropy -sum_v p_v log p_v of softmax(logits / temperature); shape logits.shape[:-1].

    Computed over `chunk_size` flattened positions at a time to bound memory, like TRL's `entropy_from_logits`.
    Vocabulary entries with probability exactly 0 (logit -inf) contribute 0 instead of 0 * -inf = NaN.
    Gradients flow; wrap in `torch.no_grad()` when the entropy is only logged.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for chunk in flat.split(chunk_size, dim=0):
        if temperature != 1.0:
            chunk = chunk / temperature
        logps = F.log_softmax(chunk, dim=-1)
        probs = logps.exp()
        finite_logps = torch.where(torch.isfinite(logps), logps, torch.zeros_like(logps))
        out.append(-(probs * finite_logps).sum(-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1])
    return torch.cat(out).reshape(logits.shape[:-1])
