"""Trainer callbacks and the reward / hint plug-ins shared by the LightningModules."""

from callbacks.artifacts import CompletionsTable, ExportAdapter, RolloutTable
from callbacks.hints import HintStrategy, NoHint, PolarityHint
from callbacks.rewards import FormatReward, PolarityReward, Reward, RewardInput, ScoreReward

__all__ = [
    "CompletionsTable",
    "ExportAdapter",
    "FormatReward",
    "HintStrategy",
    "NoHint",
    "PolarityHint",
    "PolarityReward",
    "Reward",
    "RewardInput",
    "RolloutTable",
    "ScoreReward",
]
