"""The project's own subcommands: plain typed functions; jsonargparse turns their docstrings into --help."""

from __future__ import annotations

from typing import Literal


def tiny_checkpoint(
    out_dir: str,
    preset: Literal["tiny", "small"] = "tiny",
    tokenizer: Literal["small", "qwen"] = "small",
    layout: Literal["thinker", "full"] = "thinker",
    seed: int = 0,
) -> None:
    """Write a random-init Qwen2.5-Omni checkpoint in the standard HF layout.

    Args:
        out_dir: directory to write (config.json, model.safetensors, tokenizer and processor files).
        preset: model size: "tiny" (text hidden 64, 2 layers; tests) or "small" (hidden 256, 4 layers; benchmarks).
        tokenizer: "small" (byte-level BPE trained on the demo corpus) or "qwen" (the real Qwen2 vocabulary with
            the Qwen2.5-Omni special-token ids).
        layout: "thinker" (a thinker-only checkpoint) or "full" (Qwen2_5OmniForConditionalGeneration layout
            without talker).
        seed: seed of the random weights.
    """
    from msathinker.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(out_dir, preset=preset, tokenizer=tokenizer, layout=layout, seed=seed)
    print(f"wrote {preset} checkpoint ({tokenizer} tokenizer, {layout} layout) to {path}")


def demo_data(out_dir: str, domain: Literal["demo_mosi", "demo_sims"] = "demo_mosi", seed: int = 0) -> None:
    """Write the synthetic MSA demo dataset in the MMSA raw layout (label.csv + Raw/<video_id>/<clip_id>.mp4).

    Args:
        out_dir: directory to write; must not exist or be empty.
        domain: "demo_mosi" (English, labels on [-3, 3]) or "demo_sims" (Chinese, labels on [-1, 1]).
        seed: seed of the generator; the same seed gives the same dataset.
    """
    from msathinker.demo_data import generate_demo_dataset

    path = generate_demo_dataset(out_dir, domain=domain, seed=seed)
    print(f"wrote {domain} to {path}")


COMMANDS = {"tiny-checkpoint": tiny_checkpoint, "demo-data": demo_data}
