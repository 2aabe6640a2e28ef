"""The reward plug-ins of Hint-GRPO (docs/method.md, Rewards): format, polarity and score, each a `Reward` of the
core's interface (msathinker/rewards.py, which also says how the module sums them and treats a failing reward).
"""

from __future__ import annotations

from msathinker.dc_format import polarity_of
from msathinker.rewards import Reward, RewardInput


class FormatReward(Reward):
    """1 if the completion is exactly in the expected format, else 0. Under DC span credit it counts on every
    token."""

    name = "format"

    def score(self, sample: RewardInput) -> float:
        return float(sample.parsed.valid)


class PolarityReward(Reward):
    """1 if the completion's polarity (stated, else the band of its score) is the label's, else 0. Under DC span
    credit it counts on the discrimination span's tokens."""

    name = "polarity"
    span = "discrimination"

    def score(self, sample: RewardInput) -> float:
        return float(sample.parsed.effective_polarity(sample.scale) == polarity_of(sample.label, sample.scale))


class ScoreReward(Reward):
    """max(0, 1 - |score - label| / tau) with tau = the scale's reward_tau (1 on [-3, 3], 1/3 on [-1, 1]); 0 when
    the completion has no number. Under DC span credit it counts on the calibration and answer tokens.

    Args:
        weight: multiplier of this reward in the sum.
        tau: distance at which the reward reaches 0; None uses the scale's reward_tau.
    """

    name = "score"
    span = "calibration"

    def __init__(self, weight: float = 1.0, tau: float | None = None):
        super().__init__(weight)
        self.tau = tau

    def score(self, sample: RewardInput) -> float:
        if sample.parsed.score is None:
            return 0.0
        tau = self.tau or sample.scale.reward_tau
        return max(0.0, 1.0 - abs(sample.parsed.score - sample.label) / tau)
