"""The demo assets (synthetic datasets and tiny checkpoints), generated on first use into a cache directory.

Configs name them instead of paths ("tiny", "tiny-small", dataset "demo_mosi"), so a fresh clone runs the quickstart
with no download and no extra step. The cache lives in $MSATHINKER_CACHE (default ~/.cache/msathinker); entries
are versioned and written atomically under a file lock, so concurrent first uses (DDP ranks, parallel tests) build
each asset once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ASSETS_VERSION = 3
TINY_MODELS = {"tiny": ("tiny", "small"), "tiny-small": ("small", "small"), "tiny-qwen": ("tiny", "qwen")}
"""Model alias -> (preset, tokenizer) of the generated random-init checkpoint."""
DC_PRETRAINED = {"tiny-dc": "tiny"}
"""Model alias -> the random-init alias it is trained from (msathinker.tiny.write_dc_pretrained_checkpoint): a
stand-in for a pretrained base that already writes the DC format, for the CPU runs of the real recipes."""


def cache_dir() -> Path:
    """Root of the asset cache: $MSATHINKER_CACHE, else ~/.cache/msathinker."""
    return Path(os.environ.get("MSATHINKER_CACHE") or Path.home() / ".cache" / "msathinker")


def _build_once(target: Path, build) -> Path:
    from filelock import FileLock

    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            tmp = target.parent / f".{target.name}.build-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            os.replace(tmp, target)
    return target


def demo_dataset(domain: str) -> Path:
    """Path of the demo dataset `domain` ("demo_mosi" or "demo_sims"), generated on first use."""
    from msathinker.demo_data import DOMAINS, generate_demo_dataset

    if domain not in DOMAINS:
        raise ValueError(f"unknown demo dataset {domain!r}; choose from {sorted(DOMAINS)}")
    return _build_once(cache_dir() / f"v{ASSETS_VERSION}" / domain, lambda tmp: generate_demo_dataset(tmp, domain))


def resolve_model_path(model_path: str) -> str:
    """A local path or hub id unchanged; an alias of TINY_MODELS or DC_PRETRAINED -> the cached tiny checkpoint
    (built on first use)."""
    from msathinker import tiny

    target = cache_dir() / f"v{ASSETS_VERSION}" / f"model-{model_path}"
    if model_path in TINY_MODELS:
        preset, tokenizer = TINY_MODELS[model_path]
        return str(_build_once(target, lambda tmp: tiny.write_tiny_checkpoint(tmp, preset=preset, tokenizer=tokenizer)))
    if model_path in DC_PRETRAINED:
        base = resolve_model_path(DC_PRETRAINED[model_path])
        return str(_build_once(target, lambda tmp: tiny.write_dc_pretrained_checkpoint(tmp, base)))
    return model_path
