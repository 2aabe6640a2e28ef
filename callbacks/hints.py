"""Hint strategies for Hint-GRPO (docs/method.md, Hint), chosen in YAML:

    hint:
      class_path: callbacks.PolarityHint
      init_args: {trigger: no_correct_polarity, placement: prefix, use: replace}

A strategy decides which groups of a step get a hint; the module then regenerates those groups (all G completions
with "replace", G - num_unhinted with "mix") from a hinted prompt. Hint tokens are prompt: never in the loss.
"""

from __future__ import annotations

from typing import Literal

import torch

from msathinker.dc_format import Format, Polarity, hint_prefix, hint_sentence

Trigger = Literal["no_correct_polarity", "zero_std", "always", "fraction"]


class HintStrategy:
    """No hint (plain GRPO). Subclasses choose groups and say how the hint is given."""

    placement: Literal["prefix", "prompt"] = "prefix"
    use: Literal["replace", "mix"] = "replace"
    num_unhinted: int = 0

    def select(
        self, correct_polarity: torch.Tensor, reward_std: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Which groups get a hint: bool (num_groups,). `correct_polarity` (num_groups, G) says which completions
        have the label's polarity (stated, else their score's band); `reward_std` (num_groups,) is each group's
        reward std before hints."""
        return torch.zeros(len(reward_std), dtype=torch.bool)

    def assistant_prefix(self, polarity: Polarity, fmt: Format = "dc") -> str:
        """Text the assistant turn is forced to start with ("prefix" placement)."""
        return hint_prefix(polarity, fmt) if self.placement == "prefix" else ""

    def prompt_line(self, polarity: Polarity) -> str:
        """Line appended to the user turn ("prompt" placement)."""
        return "\n" + hint_sentence(polarity) if self.placement == "prompt" else ""


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
    """

    def __init__(
        self,
        trigger: Trigger = "no_correct_polarity",
        fraction: float = 0.5,
        placement: Literal["prefix", "prompt"] = "prefix",
        use: Literal["replace", "mix"] = "replace",
        num_unhinted: int = 4,
    ):
        if trigger not in ("no_correct_polarity", "zero_std", "always", "fraction"):
            raise ValueError(f"unknown trigger {trigger!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if use == "mix" and num_unhinted < 1:
            raise ValueError("use 'mix' keeps num_unhinted >= 1 unhinted completions per group")
        self.trigger = trigger
        self.fraction = fraction
        self.placement = placement
        self.use = use
        self.num_unhinted = num_unhinted if use == "mix" else 0

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
