"""The hint strategies of Hint-GRPO (docs/method.md, Hint): no hint, or the label's polarity. Each is a
`HintStrategy` of the core's interface (msathinker/hints.py, which also says how the module uses it), chosen in YAML:

    hint:
      class_path: callbacks.PolarityHint
      init_args: {trigger: no_correct_polarity, placement: prefix, use: replace}
"""

from __future__ import annotations

from typing import Literal

import torch

from msathinker.hints import HintStrategy

Trigger = Literal["no_correct_polarity", "zero_std", "always", "fraction"]


class NoHint(HintStrategy):
    """Plain GRPO: never hint."""


class PolarityHint(HintStrategy):
    """Give the label's polarity (the discrimination anchor, never the score) to groups that need it.

    Args:
        trigger: which groups get the hint: "no_correct_polarity" (no completion has the label's polarity, stated
            or else its score's band: the hard samples), "zero_std" (all rewards equal), "always", or "fraction" (a
            random `fraction` of groups).
        fraction: share of groups hinted with trigger "fraction".
        placement: "prefix" forces the assistant turn to start with `<think>\\n<discrimination>` and a sentence
            giving the polarity; "prompt" adds that sentence as a line of the user turn.
        use: "replace" regenerates the whole group with the hint and trains on it (ICCV Hint-GRPO style); "mix"
            keeps `num_unhinted` unhinted completions and regenerates the other G - num_unhinted with the hint,
            all normalised together.
        num_unhinted: unhinted completions kept per hinted group with use "mix" (1 <= num_unhinted < G).
        credit: how the hint counts in the loss. "prompt" (ICCV Hint-GRPO): hint tokens are context, never in the
            loss, so the policy learns to continue a verdict it is given. "policy": the verdict tokens a prefix
            hint forced are trained as if the policy had sampled them from the unhinted prompt, with LUFFY's
            off-policy term -A * p / (p + shaping_gamma), p the policy's probability of the token without the hint
            (Yan et al. 2025, arXiv 2504.14945, "policy shaping"; the forced token's behaviour probability is 1), so
            the policy learns to produce the verdict itself. Needs placement "prefix" (a prompt hint forces no
            token).
        shaping_gamma: gamma of that shaping (LUFFY's default 0.1); > 0.
        baseline: with use "mix", the advantage baseline (mean and std) over the whole group ("group") or apart for
            the group's hinted and its unhinted completions ("split": each side is compared with its own kind, so
            hinted completions are not favoured merely for being hinted). "split" needs use "mix" and at least two
            completions on each side.
    """

    gives_hints = True

    def __init__(
        self,
        trigger: Trigger = "no_correct_polarity",
        fraction: float = 0.5,
        placement: Literal["prefix", "prompt"] = "prefix",
        use: Literal["replace", "mix"] = "replace",
        num_unhinted: int = 4,
        credit: Literal["prompt", "policy"] = "prompt",
        shaping_gamma: float = 0.1,
        baseline: Literal["group", "split"] = "group",
    ):
        _check_choice("trigger", trigger, ("no_correct_polarity", "zero_std", "always", "fraction"))
        _check_choice("credit", credit, ("prompt", "policy"))
        _check_choice("baseline", baseline, ("group", "split"))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if use == "mix" and num_unhinted < 1:
            raise ValueError("use 'mix' keeps num_unhinted >= 1 unhinted completions per group")
        if credit == "policy" and placement != "prefix":
            raise ValueError(
                f"hint credit 'policy' trains the tokens the hint forces, and placement {placement!r} forces none "
                "(its hint is a line of the user turn): use placement 'prefix', or credit 'prompt'"
            )
        if shaping_gamma <= 0:
            raise ValueError(f"shaping_gamma must be > 0, got {shaping_gamma}")
        if baseline == "split" and use != "mix":
            raise ValueError(
                f"baseline 'split' takes the hinted and unhinted completions of a group apart, and use {use!r} "
                "trains groups that are all hinted or all unhinted: use 'mix', or baseline 'group'"
            )
        self.trigger = trigger
        self.fraction = fraction
        self.placement = placement
        self.use = use
        self.num_unhinted = num_unhinted if use == "mix" else 0
        self.credit = credit
        self.shaping_gamma = shaping_gamma
        self.baseline = baseline

    def select(
        self, correct_polarity: torch.Tensor, reward_std: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        if self.trigger == "no_correct_polarity":
            return ~correct_polarity.any(dim=1)
        if self.trigger == "zero_std":
            return torch.nan_to_num(reward_std, nan=0.0) == 0
        if self.trigger == "always":
            return torch.ones(len(reward_std), dtype=torch.bool)
        return torch.rand(len(reward_std), generator=generator) < self.fraction


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """jsonargparse checks the Literal types from YAML; a strategy built in Python is checked here."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
