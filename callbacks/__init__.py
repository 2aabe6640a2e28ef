"""Trainer callbacks and the reward / hint plug-ins shared by the LightningModules."""

from callbacks.artifacts import CompletionsTable, ExportAdapter, RolloutTable
from callbacks.hints import HintStrategy, NoHint, PolarityHint
from callbacks.progress import LineProgressBar, ProgressOptions, TerminalProgressBar
from callbacks.rewards import FormatReward, PolarityReward, Reward, RewardInput, ScoreReward
from callbacks.watchdog import HangWatchdog

__all__ = [
    "CompletionsTable",
    "ExportAdapter",
    "FormatReward",
    "HangWatchdog",
    "HintStrategy",
    "LineProgressBar",
    "NoHint",
    "PolarityHint",
    "PolarityReward",
    "ProgressOptions",
    "Reward",
    "RewardInput",
    "RolloutTable",
    "ScoreReward",
    "TerminalProgressBar",
]
