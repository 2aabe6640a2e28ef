"""The demo assets (synthetic datasets and tiny checkpoints), generated on first use into the asset cache.

msathinker.assets resolves the names configs give them ("tiny", "tiny-small", dataset "demo_mosi", ...), so a fresh
clone runs the quickstart with no download and no extra step. The cache lives in $MSATHINKER_CACHE (default
~/.cache/msathinker); entries are versioned and written atomically under a file lock, so concurrent first uses
(DDP ranks, parallel tests) build each asset once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from msathinker.assets import DC_PRETRAINED, TINY_MODELS, cache_dir, resolve_model_path

ASSETS_VERSION = 4


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
    from msathinker.demo.data import DOMAINS, generate_demo_dataset

    if domain not in DOMAINS:
        raise ValueError(f"unknown demo dataset {domain!r}; choose from {sorted(DOMAINS)}")
    return _build_once(cache_dir() / f"v{ASSETS_VERSION}" / domain, lambda tmp: generate_demo_dataset(tmp, domain))


def tiny_checkpoint(alias: str) -> Path:
    """Path of the tiny checkpoint an alias of TINY_MODELS or DC_PRETRAINED names, built on first use."""
    from msathinker.demo import tiny

    target = cache_dir() / f"v{ASSETS_VERSION}" / f"model-{alias}"
    if not target.exists() and _in_distributed_run():
        # transformers' save_pretrained writes the weights on rank 0 only, and any rank may win the build lock:
        # build in a process of its own (which takes the lock, so the ranks still build it once)
        code = f"from msathinker.demo.assets import tiny_checkpoint; tiny_checkpoint({alias!r})"
        subprocess.run([sys.executable, "-c", code], check=True)
        return target
    if alias in TINY_MODELS:
        family, preset, tokenizer = TINY_MODELS[alias]
        return _build_once(
            target, lambda tmp: tiny.write_tiny_checkpoint(tmp, preset=preset, tokenizer=tokenizer, family=family)
        )
    if alias not in DC_PRETRAINED:
        raise ValueError(f"unknown tiny model {alias!r}; choose from {sorted([*TINY_MODELS, *DC_PRETRAINED])}")
    base = resolve_model_path(DC_PRETRAINED[alias])
    return _build_once(target, lambda tmp: tiny.write_dc_pretrained_checkpoint(tmp, base))


def _in_distributed_run() -> bool:
    torch = sys.modules.get("torch")  # not imported: not distributed
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()
