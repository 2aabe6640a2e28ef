"""What a Hint-GRPO rollout produces: `Rollout`, one training batch's completions, hinted and scored; `Scores`, the
rewards of a batch of completions; and `Completions`, what an update trains on. The sampling and log-prob passes
themselves are msathinker.rollout's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msathinker.rewards import RewardInput
from msathinker.rollout import Row


@dataclass(frozen=True)
class Rollout:
    """One training batch's completions, hinted and scored: what `HintGRPOModule.rollout` returns (cf. torchtune's
    GRPOTrajectory). P = prompts of the batch on this process, G = grpo.num_generations, R = reward plug-ins.

    Completions are prompt-major: prompt p's G completions are rows p*G to p*G + G - 1. A hinted completion replaced
    the one first sampled at its place; the "before" statistics are of the first sampling, before any hint.
    """

    rows: list[Row]
    """P*G: each completion's prompt ids (the hinted prompt where hinted), prompt media and completion ids."""
    rewards: torch.Tensor
    """(P*G,) float64: the weighted sum of the rewards; NaN where every reward failed."""
    per_reward: torch.Tensor
    """(P*G, R) float64: each reward's value, in `reward_names` order; NaN where that reward failed."""
    reward_names: tuple[str, ...]
    """The R reward plug-ins' names."""
    truncated: torch.Tensor
    """(P*G,) bool: the completion hit grpo.max_completion_length without ending its turn."""
    hinted: torch.Tensor
    """(P*G,) bool: the completion was sampled from the hinted prompt."""
    samples: list[RewardInput]
    """P*G: what the rewards scored (clip id, assistant text with any prefix hint, parsed answer, label)."""
    failures: dict[str, int]
    """Reward name -> completions it failed to score (None, NaN or an exception); absent: none."""
    std_before: torch.Tensor
    """(P,) each group's reward std before hinting; NaN for a group with fewer than two scored completions."""
    reward_before: torch.Tensor
    """() mean reward before hinting."""
    hint_rate: torch.Tensor
    """() share of the P groups the hint strategy chose."""
    use_audio_in_video: bool
    """The batch interleaves the audio with the video tokens: the log-prob passes must place them the same way."""
    prefixes: list[str]
    """P*G: the text a prefix hint forced at the start of each completion ("" where none)."""
    audio_tokens: torch.Tensor | None = None
    """(P,) audio placeholder tokens of each prompt (checked against its features); None without audio."""

    def completions(self) -> Completions:
        return Completions(self.rows, self.rewards, self.per_reward, self.hinted)

    def metrics(self, std_after: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """The logged train metrics of this rollout, given each group's reward std after hinting: the means, the
        reward failure counts (summed over ranks), and the longest completion (max over ranks)."""
        lengths = torch.tensor([float(len(r.completion_ids)) for r in self.rows])
        means = {
            "reward": torch.nanmean(self.rewards),
            "reward_before_hint": self.reward_before,
            "reward_std": torch.nanmean(std_after),
            "frac_reward_zero_std": (torch.nan_to_num(std_after, nan=0.0) == 0).float().mean(),
            "frac_reward_zero_std_before_hint": (torch.nan_to_num(self.std_before, nan=0.0) == 0).float().mean(),
            "hint_rate": self.hint_rate,
            "hinted_completions": self.hinted.float().mean(),
            "completions/mean_length": lengths.mean(),
            "completions/clipped_ratio": self.truncated.float().mean(),
        }
        if self.audio_tokens is not None:
            means["audio_tokens_per_prompt"] = self.audio_tokens.float().mean()
        failures = {}
        for k, name in enumerate(self.reward_names):
            means[f"rewards/{name}/mean"] = torch.nanmean(self.per_reward[:, k])
            failures[f"rewards/{name}/failures"] = torch.tensor(float(self.failures.get(name, 0)))
        return means, failures, lengths.max()


@dataclass(frozen=True)
class Scores:
    """The rewards of N completions (what `HintGRPOModule._score` returns); N = P*G, in row order."""

    samples: list[RewardInput]
    """What each reward saw, one per completion."""
    per_reward: torch.Tensor
    """(N, R) float64, NaN where a reward failed."""
    total: torch.Tensor
    """(N,) float64 weighted sum, NaN where every reward failed."""
    failures: dict[str, int]
    """Reward name -> completions it failed to score."""
    correct: torch.Tensor
    """(N,) bool: the completion's polarity (stated, else its score's band) is the label's."""


@dataclass(frozen=True)
class Completions:
    """What an update trains on: N completions in consecutive groups of G (one prompt each), with their rewards.
    Dynamic sampling collects them group by group (msathinker.group_buffer)."""

    rows: list[Row]
    """N: prompt ids, media, completion ids (forced hint tokens first under hint credit "policy")."""
    rewards: torch.Tensor
    """(N,) float64 weighted reward sums; NaN where every reward failed."""
    per_reward: torch.Tensor
    """(N, R) float64 each reward's value; NaN where it failed."""
    hinted: torch.Tensor
    """(N,) bool: sampled from the hinted prompt."""

    def __len__(self) -> int:
        return len(self.rows)

    def group(self, index: int, size: int) -> Completions:
        """The `index`-th group of `size` completions."""
        part = slice(index * size, (index + 1) * size)
        return Completions(self.rows[part], self.rewards[part], self.per_reward[part], self.hinted[part])

    @staticmethod
    def cat(parts: list[Completions]) -> Completions:
        return Completions(
            [row for part in parts for row in part.rows],
            torch.cat([part.rewards for part in parts]),
            torch.cat([part.per_reward for part in parts]),
            torch.cat([part.hinted for part in parts]),
        )
