"""Where assets are found: the cache directory, and the names that stand for a generated demo asset.

Configs may name a demo asset instead of a path (model "tiny", "tiny-small", "tiny-qwen", "tiny-qwen3",
"tiny-qwen3-qwen", "tiny-qwen3-small", "tiny-dc", "tiny-qwen3-dc"; dataset
"demo_mosi", "demo_sims"); it is generated on first use by msathinker.demo.assets, which is imported only when such
a name is given. Every other model path or dataset root is used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY_MODELS = {
    "tiny": ("qwen2_5_omni", "tiny", "small"),
    "tiny-small": ("qwen2_5_omni", "small", "small"),
    "tiny-qwen": ("qwen2_5_omni", "tiny", "qwen"),
    "tiny-qwen3": ("qwen3_omni", "tiny", "small"),
    "tiny-qwen3-qwen": ("qwen3_omni", "tiny", "qwen"),
    "tiny-qwen3-small": ("qwen3_omni", "small", "small"),
}
"""Model alias -> (family, preset, tokenizer) of the generated random-init checkpoint (msathinker.demo.tiny)."""
DC_PRETRAINED = {"tiny-dc": "tiny", "tiny-qwen3-dc": "tiny-qwen3"}
"""Model alias -> the random-init alias it is trained from (msathinker.demo.tiny.write_dc_pretrained_checkpoint): a
stand-in for a pretrained base that already writes the DC format, for the CPU runs of the real recipes."""


def cache_dir() -> Path:
    """Root of the asset cache: $MSATHINKER_CACHE, else ~/.cache/msathinker."""
    return Path(os.environ.get("MSATHINKER_CACHE") or Path.home() / ".cache" / "msathinker")


def resolve_model_path(model_path: str) -> str:
    """A local path or hub id unchanged; an alias of TINY_MODELS or DC_PRETRAINED -> the cached tiny checkpoint
    (built on first use)."""
    if model_path in TINY_MODELS or model_path in DC_PRETRAINED:
        from msathinker.demo.assets import tiny_checkpoint

        return str(tiny_checkpoint(model_path))
    return model_path


def dataset_root(dataset: str, data_root: str | None) -> Path:
    """The directory holding label.csv and Raw/: `data_root` when given; without one, `dataset` names a demo
    dataset ("demo_mosi" or "demo_sims", else an error) and this is its cached copy, generated on first use."""
    if data_root is not None:
        return Path(data_root)
    from msathinker.demo.assets import demo_dataset

    return demo_dataset(dataset)
