"""The reward interface of Hint-GRPO (docs/method.md, Rewards): what a reward plug-in gets, what it returns, and how
the module sums the rewards. The plug-ins themselves (FormatReward, PolarityReward, ScoreReward) live in
`callbacks/rewards.py`; your own is one small class named in YAML:

    rewards:
      - class_path: callbacks.FormatReward
        init_args: {weight: 1.0}
      - class_path: my_package.LengthPenalty     # your own: subclass Reward, implement score()

The module sums the weighted rewards. A reward that returns None, NaN or raises for a sample is excluded for that
sample only (as TRL does with None): the sample's total is the weighted sum of its other rewards, and if every
reward failed the sample gets no reward, is left out of its group's mean/std and gets advantage 0. Failures are
counted and logged as train/rewards/<name>/failures; the step goes on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from msathinker.dc_format import ParsedCompletion
from msathinker.scales import Scale

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardInput:
    """One completion to score, with what a reward may need."""

    clip_id: str
    completion: str
    """The full assistant text (a prefix hint included)."""
    parsed: ParsedCompletion
    label: float
    scale: Scale
    hinted: bool


Span = Literal["all", "discrimination", "calibration"]


class Reward:
    """Base class: implement `score` (one sample) or override `__call__` (a batch at once, e.g. a reward model).

    Args:
        weight: multiplier of this reward in the sum.
    """

    name = "reward"
    span: Span = "all"
    """The completion tokens this reward's advantage goes to under DC span credit (grpo.span_credit):
    "discrimination" (up to and including </discrimination>), "calibration" (everything after it: the calibration
    and the answer) or "all". Without span credit every reward counts on every token."""

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def score(self, sample: RewardInput) -> float | None:
        raise NotImplementedError

    def __call__(self, samples: list[RewardInput]) -> list[float | None]:
        return [self.score(s) for s in samples]


def compute_rewards(rewards: list[Reward], samples: list[RewardInput]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Evaluate every reward on every sample.

    Returns (per_reward (N, K) with NaN where a reward failed, total (N,) weighted sum with NaN where all failed,
    failures {name: count}).
    """
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}: give your Reward subclasses distinct `name`s")
    table = torch.full((len(samples), len(rewards)), float("nan"), dtype=torch.float64)
    failures: dict[str, int] = {}
    for k, reward in enumerate(rewards):
        try:
            values = reward(samples)
            if len(values) != len(samples):
                raise ValueError(f"returned {len(values)} values for {len(samples)} samples")
        except Exception as exc:  # a buggy reward must not kill a long run: score each sample alone instead
            log.warning("reward %r failed on a batch (%s); scoring its samples one by one", reward.name, exc)
            values = [_score_alone(reward, s) for s in samples]
        for i, value in enumerate(values):
            if value is None or not math.isfinite(float(value)):
                failures[reward.name] = failures.get(reward.name, 0) + 1
            else:
                table[i, k] = float(value)
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float64)
    weighted = table * weights
    total = torch.nansum(weighted, dim=1)
    total[torch.isnan(table).all(dim=1)] = float("nan")
    return table, total, failures


def _score_alone(reward: Reward, sample: RewardInput) -> float | None:
    try:
        return reward([sample])[0]
    except Exception as exc:
        log.warning("reward %r failed for clip %s: %s", reward.name, sample.clip_id, exc)
        return None
