"""msathinker: MSA-Thinker (Discrimination-Calibration reasoning + Hint-GRPO) for omni LLMs on PyTorch Lightning.

The LightningModules are imported lazily (Lightning, peft and transformers take seconds to import), so
`import msathinker` and `python -m msathinker --help` stay fast.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {"SFTModule": "msathinker.sft", "HintGRPOModule": "msathinker.hint_grpo"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msathinker' has no attribute {name!r}")
