"""The plug-ins the core uses when a config names none, in one table.

The core (`msathinker`, `data_modules`) defines the interfaces (msathinker/rewards.py, msathinker/hints.py) and never
imports the `callbacks` package, which holds the implementations: the reward and hint plug-ins and the Lightning
callbacks (tests/test_architecture.py checks this). A config names its plug-ins by class_path; what it leaves out
comes from DEFAULTS below, imported by dotted path when the default is built (the default hint when
msathinker.hint_grpo is imported: it is the signature default a config dump shows). To change a default, change it
here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from jsonargparse import lazy_instance

from msathinker.hints import HintStrategy
from msathinker.rewards import Reward

DEFAULTS: dict[str, Any] = {
    "rewards": ("callbacks.FormatReward", "callbacks.PolarityReward", "callbacks.ScoreReward"),
    "hint": "callbacks.PolarityHint",
    "completions_table": "callbacks.CompletionsTable",
    "export_adapter": "callbacks.ExportAdapter",
    "progress_options": "callbacks.ProgressOptions",
    "progress_bar": "callbacks.progress.default_progress_bar",
}
"""Dotted paths of the defaults:
- rewards: HintGRPOModule's rewards (format + polarity + score, weight 1 each; docs/method.md, Rewards);
- hint: HintGRPOModule's hint strategy (the label's polarity to the groups where no completion has it);
- completions_table, export_adapter: the callbacks the CLI always adds (its `completions_table` and
  `export_adapter` sections);
- progress_options: the options of the CLI's `progress` section;
- progress_bar: the function that builds the CLI's progress bar from those options, unless the config names one.
"""


def resolve(path: str) -> Any:
    """The class or function a dotted path names ("callbacks.PolarityHint"), imported now."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"msathinker.plugins: cannot import {path!r} ({exc}); fix the path in DEFAULTS") from exc


def default_rewards() -> list[Reward]:
    """New instances of the default rewards."""
    return [resolve(path)() for path in DEFAULTS["rewards"]]


def default_hint() -> HintStrategy:
    """The default hint strategy, built at its first use: a jsonargparse lazy instance, which a config dump shows by
    class path and init_args."""
    return lazy_instance(resolve(DEFAULTS["hint"]))
