"""The implementations the core plugs in: the reward and hint plug-ins and the Lightning callbacks. This package
imports the core (`msathinker`); the core never imports it (msathinker/plugins.py names the defaults by path).

The core's interfaces are re-exported here, so YAML can name them as `callbacks.Reward`, `callbacks.RewardInput`
and `callbacks.HintStrategy`.
"""

from callbacks.artifacts import CompletionsTable, ExportAdapter, RolloutTable
from callbacks.hints import NoHint, PolarityHint
from callbacks.progress import LineProgressBar, ProgressOptions, TerminalProgressBar
from callbacks.rewards import FormatReward, PolarityReward, ScoreReward
from callbacks.watchdog import HangWatchdog
from msathinker.hints import HintStrategy
from msathinker.rewards import Reward, RewardInput

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
