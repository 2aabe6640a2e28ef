"""Static GPU memory of the Qwen3-Omni-30B-A3B recipes (experiments/msa_thinker/*_qwen3_omni_8gpu_fsdp2.yaml),
counted on the meta device; docs/memory.md quotes what this prints.

Builds Qwen3OmniMoeThinkerForConditionalGeneration from a Qwen3OmniMoeThinkerConfig with the values of the released
Qwen3-Omni-30B-A3B-Instruct config.json (THINKER below) on the meta device: exact parameter counts per part, no
weights. From them: the bf16 weights, the LoRA adapter (fp32 weights, gradients and AdamW's two moments: 16 bytes
per parameter), each divided over the 8 FSDP2 ranks, and the activation checkpoints of the decoder layers (one
hidden state per layer per token in bf16). Run: python benchmarks/memory_qwen3_omni.py
"""

from __future__ import annotations

import re

import torch

THINKER = {
    "text_config": {
        "vocab_size": 152064, "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "moe_intermediate_size": 768, "num_experts": 128,
        "num_experts_per_tok": 8, "intermediate_size": 768, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [24, 20, 20]},
    },
    "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                     "output_dim": 2048, "downsample_hidden_size": 480},
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                      "out_hidden_size": 2048, "deepstack_visual_indexes": [8, 16, 24]},
}  # fmt: skip
"""Qwen3-Omni-30B-A3B-Instruct's thinker_config (the sizes; ids and rope details do not change the count)."""
PARTS = {
    "attention projections (q, k, v, o; 48 layers)": r"language_model\.layers\.\d+\.self_attn\.\w+_proj",
    "experts (128 per layer, gate_up + down)": r"language_model\.layers\.\d+\.mlp\.experts",
    "routers (mlp.gate)": r"language_model\.layers\.\d+\.mlp\.gate\.",
    "embed_tokens": r"embed_tokens",
    "lm_head": r"^lm_head",
    "audio tower": r"audio_tower",
    "vision tower (with the deepstack mergers)": r"\.visual\.",
}
RANKS, LORA_R = 8, 64
PROMPT_TOKENS = 6550
"""The longest clip of sft.yaml's data settings (docs/memory.md, "Sequence length"), in Qwen3-Omni's tokens the
frame bounds scaled to 32x32-pixel video tokens give about the same count."""
GiB = 2**30


def main() -> None:
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    config = Qwen3OmniMoeThinkerConfig(**THINKER)
    with torch.device("meta"):
        model = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    counts = dict.fromkeys(PARTS, 0)
    counts["norms and the rest"] = 0
    for name, param in model.named_parameters():
        part = next((p for p, pattern in PARTS.items() if re.search(pattern, name)), "norms and the rest")
        counts[part] += param.numel()
    total = sum(counts.values())
    text = config.text_config
    active_experts = text.num_experts_per_tok / text.num_experts
    active = total - counts["experts (128 per layer, gate_up + down)"] * (1 - active_experts)
    print("Qwen3-Omni-30B-A3B thinker parameters (meta device):")
    for part, n in counts.items():
        print(f"  {part:45s} {n / 1e6:10.1f} M  bf16 {2 * n / GiB:6.2f} GiB")
    print(f"  {'total':45s} {total / 1e6:10.1f} M  bf16 {2 * total / GiB:6.2f} GiB")
    print(f"  active per token (8 of 128 experts)          {active / 1e6:10.1f} M")
    head = text.num_attention_heads * text.head_dim
    kv = text.num_key_value_heads * text.head_dim
    per_layer = LORA_R * ((text.hidden_size + head) * 2 + (text.hidden_size + kv) * 2)  # q, o; k, v
    lora = per_layer * text.num_hidden_layers
    print(
        f"LoRA r={LORA_R} on q, k, v, o: {lora / 1e6:.1f} M parameters, {16 * lora / GiB:.2f} GiB with grads and AdamW"
    )
    checkpoints = PROMPT_TOKENS * text.hidden_size * 2 * text.num_hidden_layers
    print(f"FSDP2 over {RANKS} ranks, per GPU:")
    print(f"  bf16 weights (sharded)                       {2 * total / RANKS / GiB:6.2f} GiB")
    print(f"  LoRA weights, grads, AdamW (sharded)         {16 * lora / RANKS / GiB:6.2f} GiB")
    towers = counts["audio tower"] + counts["vision tower (with the deepstack mergers)"]
    layer = (total - counts["embed_tokens"] - counts["lm_head"] - towers) / text.num_hidden_layers
    print(f"  largest unit gathered (one decoder layer)    {2 * layer / GiB:6.2f} GiB")
    print(f"  activation checkpoints, one {PROMPT_TOKENS}-token clip  {checkpoints / GiB:6.2f} GiB")


if __name__ == "__main__":
    main()
