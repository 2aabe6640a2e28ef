"""The numbers behind docs/memory.md: expected GPU memory of the Qwen2.5-Omni-7B recipes in experiments/msa_thinker/.

    python benchmarks/memory_estimate.py [--tokens-measured 256]

- parameters by part, counted exactly on the meta device from Qwen2_5OmniThinkerConfig with Qwen2.5-Omni-7B's
  values (transformers' defaults are the 7B's except vision hidden_size 1280 and untied embeddings);
- tokens of one clip at each recipe's media settings, from the stock Qwen2.5-Omni processor;
- activations per token of one decoder layer, measured: one real-size layer (hidden 3584, MLP 18944) with the
  recipe's LoRA runs forward on CPU and every tensor autograd saves for backward is counted (float bytes at bf16).
Prints the tables; the reasoning and the per-recipe totals are in docs/memory.md.
"""

from __future__ import annotations

import argparse
import re

GIB = 2**30
REAL_7B = {"vision_config": {"hidden_size": 1280}, "text_config": {"tie_word_embeddings": False}}
"""Where Qwen2.5-Omni-7B's config.json differs from transformers' Qwen2_5OmniThinkerConfig defaults."""
NF4_BITS = 4.5
"""bitsandbytes NF4 without double quantization (as msathinker.modeling loads it): 4 bits + one fp32 absmax per
64 weights. With bnb_4bit_use_double_quant it would be about 4.127 bits."""


def thinker_config():
    from transformers import Qwen2_5OmniThinkerConfig

    default = Qwen2_5OmniThinkerConfig()
    return Qwen2_5OmniThinkerConfig(
        text_config={**default.text_config.to_dict(), **REAL_7B["text_config"]},
        audio_config=default.audio_config.to_dict(),
        vision_config={**default.vision_config.to_dict(), **REAL_7B["vision_config"]},
    )


def parameter_counts(config) -> dict[str, int]:
    """Parameters of the thinker by part, built on the meta device (no memory, exact shapes)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    counts = dict.fromkeys(
        ("LM projections (q,k,v,o,gate,up,down)", "LM biases and norms", "embed_tokens", "lm_head", "audio tower",
         "vision tower"), 0,
    )  # fmt: skip
    for name, param in model.named_parameters():
        if ".audio_tower." in f".{name}":
            part = "audio tower"
        elif ".visual." in f".{name}":
            part = "vision tower"
        elif "embed_tokens" in name:
            part = "embed_tokens"
        elif name.startswith("lm_head"):
            part = "lm_head"
        elif re.search(r"layers\.\d+\..*_proj\.weight$", name):
            part = "LM projections (q,k,v,o,gate,up,down)"
        else:
            part = "LM biases and norms"
        counts[part] += param.numel()
    return counts


def lora_parameters(config, r: int) -> int:
    """LoRA parameters on the language model's seven projections per layer: r * (in + out) each."""
    t = config.text_config
    h, i, kv = t.hidden_size, t.intermediate_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    return per_layer * t.num_hidden_layers


def clip_tokens(fps: float, max_frames: int, max_pixels: int, audio_seconds: float) -> dict[str, int]:
    """Placeholder tokens of the longest clip a recipe admits, from the stock processor: max_frames frames of the
    largest size max_pixels allows (16:9), and audio_seconds of 16 kHz audio."""
    import numpy as np

    from msathinker.tiny import build_processor, build_tokenizer

    processor = build_processor(build_tokenizer("small"))
    height = int((max_pixels * 9 / 16) ** 0.5)
    frames = np.zeros((max_frames, height, height * 16 // 9, 3), np.uint8)
    audio = np.zeros(int(audio_seconds * 16000), np.float32)
    out = processor(
        text=["<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"], videos=[frames],
        audio=[audio], videos_kwargs={"fps": fps, "do_sample_frames": False, "cap_pixels_per_frame": True,
                                      "size": {"shortest_edge": 4 * 28 * 28, "longest_edge": max_pixels}},
        audio_kwargs={"max_length": len(audio), "truncation": True}, return_tensors="pt",
    )  # fmt: skip
    tok = processor.tokenizer
    ids = out["input_ids"][0]
    return {
        "video": int((ids == tok.convert_tokens_to_ids("<|VIDEO|>")).sum()),
        "audio": int((ids == tok.convert_tokens_to_ids("<|AUDIO|>")).sum()),
    }


def layer_activation_bytes(config, r: int, dropout: float, tokens: int) -> dict[str, float]:
    """Bytes per token that one decoder layer (with LoRA) keeps for backward, measured with saved_tensors_hooks;
    floating tensors counted at 2 bytes (bf16), the rest at their size. Also the layer input (what gradient
    checkpointing keeps instead)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniThinkerTextModel

    from msathinker.policy import LANGUAGE_MODEL_LORA_TARGETS

    text = config.text_config.to_dict() | {"num_hidden_layers": 1, "vocab_size": 64, "layer_types": None}
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [16, 24, 24]}
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerTextModel(type(config.text_config)(**text, attn_implementation="sdpa"))
    target = LANGUAGE_MODEL_LORA_TARGETS.replace(r"model\.language_model\.", "")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=target))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            scale = 2 / tensor.element_size() if tensor.is_floating_point() else 1
            saved[storage.data_ptr()] = int(storage.nbytes() * scale)
        return tensor

    embeds = torch.randn(1, tokens, config.text_config.hidden_size)
    positions = torch.arange(tokens).view(1, 1, -1).expand(3, 1, -1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    return {"saved": sum(saved.values()) / tokens, "layer_input": 2 * config.text_config.hidden_size}


CUDA_OVERHEAD = 3.0 * GIB
"""CUDA context, cuBLAS/flash-attention workspaces and allocator fragmentation (an assumption, not measured)."""
LOGIT_BYTES = 14
"""Bytes per (position, vocabulary entry) at the peak of the loss: bf16 logits (2) and the fp32 log-softmax kept for
backward (4), then the fp32 gradients of log-softmax and of its input (4 + 4) in backward."""
PROMPT_TEXT_TOKENS = 200
"""System turn, transcript and DC instruction of one prompt (an estimate for CH-SIMS transcripts)."""


def recipe_peaks(counts, lora_params, layer_bytes, kv_per_token, clips, vocab, layers) -> list[tuple]:
    """Expected peak per GPU of each recipe (GiB), with the terms it is made of."""
    bf16 = 2 * sum(counts.values())
    nf4 = sum(n * NF4_BITS / 8 if p.startswith("LM projections") else 2 * n for p, n in counts.items())
    root = 2 * (counts["embed_tokens"] + counts["lm_head"] + counts["audio tower"] + counts["vision tower"])
    largest_layer = 2 * counts["LM projections (q,k,v,o,gate,up,down)"] / layers
    lora_state = 16 * lora_params  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    ref_adapter = 4 * lora_params  # Hint-GRPO's frozen copy of the SFT adapter (beta > 0)

    def checkpointed(tokens: float) -> float:  # layer inputs of every layer + one layer recomputed in backward
        return tokens * (layers * layer_bytes["layer_input"] + layer_bytes["saved"])

    def sft(weights, state, rows, prompt, completion):
        tokens = rows * (prompt + completion)
        return {"weights": weights, "LoRA+AdamW": state, "activations (checkpointed)": checkpointed(tokens),
                "logits (every position)": tokens * vocab * LOGIT_BYTES}  # fmt: skip

    def grpo(weights, state, prompts, group, micro, prompt, completion):
        generation = prompts * group * (prompt + completion) * kv_per_token
        training = checkpointed(micro * (prompt + completion)) + micro * completion * vocab * LOGIT_BYTES
        return {"weights": weights, "LoRA+AdamW+ref adapter": state + ref_adapter,
                "rollout KV cache | training pass": (generation, training)}  # fmt: skip

    long_clip, short_clip = clips
    fsdp_weights = bf16 / 8 + root + 2 * largest_layer  # shards + root module gathered + layers in flight
    rows = [
        ("sft.yaml (1 GPU, bf16, LoRA)", sft(bf16, lora_state, 2, long_clip, 1024)),
        ("sft.yaml + sft_8gpu_fsdp2.yaml (per GPU)", sft(fsdp_weights, lora_state / 8, 2, long_clip, 1024)),
        ("sft.yaml + sft_1gpu_qlora.yaml", sft(nf4, lora_state, 1, short_clip, 1024)),
        ("hint_grpo.yaml (1 GPU, bf16, LoRA)", grpo(bf16, lora_state, 4, 8, 8, long_clip, 512)),
        ("hint_grpo.yaml + hint_grpo_8gpu_fsdp2.yaml", grpo(fsdp_weights, lora_state / 8, 1, 8, 8, long_clip, 512)),
        ("hint_grpo.yaml + hint_grpo_1gpu_qlora.yaml", grpo(nf4, lora_state, 1, 8, 2, short_clip, 512)),
    ]

    def total(terms: dict) -> float:  # rollouts and the training pass come one after the other: the larger counts
        return sum(max(v) if isinstance(v, tuple) else v for v in terms.values()) + CUDA_OVERHEAD

    return [(name, terms, total(terms)) for name, terms in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-measured", type=int, default=256, help="sequence length of the layer measurement")
    args = parser.parse_args()
    config = thinker_config()
    counts = parameter_counts(config)
    total = sum(counts.values())
    print("Qwen2.5-Omni-7B thinker parameters (meta device):")
    for part, n in counts.items():
        nf4 = n * NF4_BITS / 8 if part.startswith("LM projections") else 2 * n
        print(f"  {part:40} {n / 1e6:9.1f} M   bf16 {2 * n / GIB:6.2f} GiB   NF4 base {nf4 / GIB:6.2f} GiB")
    nf4_total = sum(
        n * NF4_BITS / 8 if p.startswith("LM projections") else 2 * n for p, n in counts.items()
    )  # fmt: skip
    print(f"  {'total':40} {total / 1e6:9.1f} M   bf16 {2 * total / GIB:6.2f} GiB", end="")
    print(f"   NF4 base {nf4_total / GIB:6.2f} GiB")
    for r in (16, 64):
        n = lora_parameters(config, r)
        print(f"LoRA r={r}: {n / 1e6:.1f} M params; fp32 weights + grads + AdamW (16 B/param) {16 * n / GIB:.2f} GiB")
    t = config.text_config
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * (t.hidden_size // t.num_attention_heads) * 2
    print(f"KV cache: {kv / 2**10:.0f} KiB per token (bf16); logits: {t.vocab_size} x bytes per position")
    prompts = []
    for name, fps, frames, pixels, seconds in (
        ("sft.yaml / hint_grpo.yaml (32 frames, max_pixels 297920, 30 s audio)", 2.0, 32, 297920, 30.0),
        ("*_1gpu_qlora.yaml (16 frames, max_pixels 100352, 16 s audio)", 2.0, 16, 100352, 16.0),
    ):
        media = clip_tokens(fps, frames, pixels, seconds)
        prompts.append(media["video"] + media["audio"] + PROMPT_TEXT_TOKENS)
        print(f"longest clip, {name}: {media} tokens; prompt with text ~{prompts[-1]} tokens")
    act = layer_activation_bytes(config, r=64, dropout=0.05, tokens=args.tokens_measured)
    print(
        f"one decoder layer, LoRA r=64 dropout 0.05, bf16: {act['saved'] / 2**10:.0f} KiB/token saved for backward; "
        f"layer input (kept under gradient checkpointing) {act['layer_input'] / 2**10:.1f} KiB/token"
    )
    print(f"\nexpected peak per GPU (GiB; + {CUDA_OVERHEAD / GIB:.0f} GiB CUDA context and fragmentation):")
    peaks = recipe_peaks(
        counts, lora_parameters(config, 64), act, kv, prompts, t.vocab_size, t.num_hidden_layers
    )  # fmt: skip
    for name, terms, peak in peaks:
        detail = ", ".join(
            f"{k} {' | '.join(f'{x / GIB:.1f}' for x in v) if isinstance(v, tuple) else f'{v / GIB:.1f}'}"
            for k, v in terms.items()
        )
        print(f"  {name:46} {peak / GIB:5.1f}   ({detail})")


if __name__ == "__main__":
    main()
