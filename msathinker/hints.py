"""The hint interface of Hint-GRPO (docs/method.md, Hint): a strategy decides which groups of a step get a hint and
how it is given; the module then regenerates those groups (all G completions with "replace", G - num_unhinted with
"mix") from a hinted prompt. How the hint is credited in the loss is the strategy's too: with `credit: prompt` the
hint tokens are prompt, never in the loss; with `credit: policy` the tokens a prefix hint forced are trained as if
the policy had sampled them from the unhinted prompt, with LUFFY's off-policy shaping (msathinker.grpo). The
strategies themselves (NoHint, PolarityHint) live in `callbacks/hints.py` and are chosen in YAML:

    hint:
      class_path: callbacks.PolarityHint
      init_args: {trigger: no_correct_polarity, placement: prefix, use: replace}
"""

from __future__ import annotations

from typing import Literal

import torch

from msathinker.dc_format import Format, Polarity, hint_prefix, hint_sentence


class HintStrategy:
    """No hint (plain GRPO). Subclasses choose groups and say how the hint is given."""

    placement: Literal["prefix", "prompt"] = "prefix"
    use: Literal["replace", "mix"] = "replace"
    num_unhinted: int = 0
    credit: Literal["prompt", "policy"] = "prompt"
    """"prompt": hint tokens are context only; "policy": the forced prefix tokens join the completion under the
    unhinted prompt and are trained with the shaped off-policy term (needs placement "prefix")."""
    shaping_gamma: float = 0.1
    """gamma of the off-policy shaping f(p) = p / (p + gamma) of forced tokens (credit "policy")."""
    baseline: Literal["group", "split"] = "group"
    """With use "mix": the advantage baseline over the whole group ("group") or apart for its hinted and unhinted
    completions ("split")."""
    gives_hints: bool = False
    """Whether `select` may choose a group. Only then do training batches carry the hinted prompts (one more
    processor call per clip); a strategy that overrides `select` sets it True."""

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
