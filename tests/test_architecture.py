"""Dependencies run one way: the core (`msathinker`, `data_modules`) defines the reward and hint interfaces and never
imports `callbacks`, which holds the implementations; the core reaches them only through the defaults of
msathinker/plugins.py and the class paths of a config, which keep resolving to the same classes."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = ("msathinker", "data_modules")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in a parsed source, at any depth (inside functions and classes too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_the_core_never_imports_callbacks():
    sources = [path for package in CORE for path in sorted((REPO / package).rglob("*.py"))]
    assert len(sources) > 20, "too few core sources found: is the repo walk broken?"
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sources
        for line, module in imported_modules(ast.parse(path.read_text(), str(path)))
        if module == "callbacks" or module.startswith("callbacks.")
    ]
    assert not offences, (
        "the core must not import the callbacks package (it holds the implementations; dependencies run one way). "
        "Define the interface in the core and name the default implementation in msathinker/plugins.py DEFAULTS:\n"
        + "\n".join(offences)
    )


def test_the_check_sees_imports_at_any_depth():
    tree = ast.parse("def f():\n    from callbacks.hints import NoHint\n\nclass C:\n    import callbacks.rewards\n")
    assert imported_modules(tree) == [(2, "callbacks.hints"), (5, "callbacks.rewards")]


def test_the_defaults_resolve_to_implementations_of_the_interfaces():
    from lightning.pytorch.callbacks import Callback, ProgressBar

    from callbacks import ProgressOptions
    from msathinker.hints import HintStrategy
    from msathinker.plugins import DEFAULTS, default_hint, default_rewards, resolve
    from msathinker.rewards import Reward

    assert [r.name for r in default_rewards()] == ["format", "polarity", "score"]
    assert all(isinstance(r, Reward) and r.weight == 1.0 for r in default_rewards())
    assert isinstance(default_hint(), resolve(DEFAULTS["hint"])) and issubclass(resolve(DEFAULTS["hint"]), HintStrategy)
    assert issubclass(resolve(DEFAULTS["completions_table"]), Callback)
    assert issubclass(resolve(DEFAULTS["export_adapter"]), Callback)
    assert isinstance(resolve(DEFAULTS["progress_bar"])(resolve(DEFAULTS["progress_options"])()), ProgressBar)
    assert resolve(DEFAULTS["progress_options"]) is ProgressOptions


def test_existing_class_paths_name_the_same_classes():
    import callbacks
    from msathinker import hints, rewards
    from msathinker.plugins import resolve

    assert resolve("callbacks.Reward") is rewards.Reward
    assert resolve("callbacks.RewardInput") is rewards.RewardInput
    assert resolve("callbacks.HintStrategy") is hints.HintStrategy
    for name in ("FormatReward", "PolarityReward", "ScoreReward"):
        assert issubclass(getattr(callbacks, name), rewards.Reward)
    for name in ("NoHint", "PolarityHint"):
        assert issubclass(getattr(callbacks, name), hints.HintStrategy)
