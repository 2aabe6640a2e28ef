"""The numbers behind docs/memory.md: expected GPU memory of the Qwen2.5-Omni-7B recipes in experiments/msa_thinker/.

    python benchmarks/memory_estimate.py [--tokens-measured 64]

- parameters by part, counted exactly on the meta device from Qwen2_5OmniThinkerConfig with Qwen2.5-Omni-7B's
  values (transformers' defaults are the 7B's except vision hidden_size 1280 and untied embeddings);
- tokens of one clip at each recipe's media settings, from the stock Qwen2.5-Omni processor;
- activations per token of one decoder layer, measured: one real-size layer (hidden 3584, MLP 18944) with the
  recipe's LoRA runs forward on CPU under torch.autocast(bfloat16), as bf16-mixed runs it, with a bf16 base, an NF4
  base, and an NF4 base after the old fp32 upcast; every tensor autograd saves for backward is counted at its size;
- the expected peak per GPU of each recipe, before (the old code) and after (the current one).
Prints the tables; the reasoning is in docs/memory.md. Takes a few minutes (the layer runs on the CPU in bf16).
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

    from msathinker.demo.tiny import build_processor, build_tokenizer

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


LAYER_BASES = ("bf16", "nf4", "nf4 upcast")
"""The base of the measured layer: bf16 weights; the projections in NF4 (the rest bf16); and NF4 after peft's
prepare_model_for_kbit_training, which the QLoRA recipes called before: every unquantized weight fp32."""


def layer_activation_bytes(config, r: int, dropout: float, tokens: int, base: str) -> dict[str, float]:
    """What one decoder layer with LoRA keeps for backward, run as bf16-mixed runs it: the layer loaded like the
    real model (from_pretrained in bf16, the projections in NF4 through BitsAndBytesConfig for the nf4 bases), LoRA
    weights in fp32 (peft's autocast_adapter_dtype), forward under torch.autocast(cpu, bfloat16), and every tensor
    autograd saves inside the layer counted at its real size (saved_tensors_hooks; the weights themselves excluded),
    plus CUDA's dropout masks (see below).

    Measured at `tokens` and 2 x `tokens`: the difference per token is "saved" (bytes per token); what is left is
    "per_layer" (bytes that do not grow with the sequence: autocast's bf16 copies of the fp32 LoRA weights). Also
    "layer_input": the bytes per token of the layer's input, what gradient checkpointing keeps instead; it has the
    embeddings' dtype, fp32 after the upcast (and bitsandbytes returns its outputs in its input's dtype)."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, Qwen2_5OmniThinkerTextModel

    from msathinker.policy import LANGUAGE_MODEL_LORA_TARGETS

    text = config.text_config.to_dict() | {"num_hidden_layers": 1, "vocab_size": 64, "layer_types": None}
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [16, 24, 24]}
    torch.manual_seed(0)
    layer_config = type(config.text_config)(**text, attn_implementation="sdpa")
    kwargs: dict = {"dtype": torch.bfloat16}
    if base != "bf16":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        kwargs["device_map"] = "cpu"
    with tempfile.TemporaryDirectory() as directory:
        Qwen2_5OmniThinkerTextModel(layer_config).to(torch.bfloat16).save_pretrained(directory)
        model = Qwen2_5OmniThinkerTextModel.from_pretrained(directory, **kwargs)
    if base == "nf4 upcast":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    target = LANGUAGE_MODEL_LORA_TARGETS.replace(r"model\.language_model\.", "")
    # torch's CPU dropout saves an fp32 noise tensor as large as its input, CUDA's native_dropout a bool mask: the
    # layer runs without dropout and the masks are added, 1 byte per element of every LoRA input
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=target))
    layer = model.get_base_model().layers[0]
    dropout_masks = sum(m.in_features for m in layer.modules() if hasattr(m, "lora_A")) if dropout > 0 else 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = {"layer": False}
    layer.register_forward_pre_hook(lambda module, args: inside.update(layer=True))
    layer.register_forward_hook(lambda module, args, output: inside.update(layer=False))
    dtype = model.get_input_embeddings().weight.dtype

    def saved_bytes(length: int) -> int:
        saved: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if inside["layer"] and storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        embeds = torch.randn(1, length, config.text_config.hidden_size, dtype=dtype, requires_grad=True)
        positions = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
        return sum(saved.values())

    short, long = saved_bytes(tokens), saved_bytes(2 * tokens)
    per_token = (long - short) / tokens
    layer_input = dtype.itemsize * config.text_config.hidden_size
    return {"saved": per_token + dropout_masks, "per_layer": short - per_token * tokens, "layer_input": layer_input}


CUDA_OVERHEAD = 3.0 * GIB
"""CUDA context, cuBLAS/flash-attention workspaces and allocator fragmentation (an assumption, not measured)."""
LOGIT_BYTES = 14
"""Bytes per (position, vocabulary entry) at the peak of the loss: bf16 logits (2) and the fp32 log-softmax kept for
backward (4), then the fp32 gradients of log-softmax and of its input (4 + 4) in backward."""
PROMPT_TEXT_TOKENS = 200
"""System turn, transcript and DC instruction of one prompt (an estimate for CH-SIMS transcripts)."""


def recipe_peaks(counts, lora_params, layer_bytes, kv_per_token, clips, vocab, layers) -> list[tuple]:
    """Expected peak per GPU of each recipe (bytes) with the terms it is made of, for the old code ("before") and
    the current one ("after"); both run bf16-mixed. What changed:
    - QLoRA rows: peft's prepare_model_for_kbit_training upcast every unquantized weight to fp32 (+2 B/param), and
      autocast kept a bf16 copy of the fp32 LM head for backward. The residual stream was fp32 (the embeddings'
      dtype), so the layers keep more (layer_bytes["nf4 upcast"]) and the KV cache was fp32 (bitsandbytes returns
      its input's dtype): twice kv_per_token.
    - SFT rows: the logits of every position (transformers' loss) -> of the completion's positions only.
    `layer_bytes` maps LAYER_BASES to layer_activation_bytes."""
    projections = counts["LM projections (q,k,v,o,gate,up,down)"]
    unquantized = sum(counts.values()) - projections
    bf16 = 2 * sum(counts.values())
    nf4 = projections * NF4_BITS / 8 + 2 * unquantized
    nf4_upcast = projections * NF4_BITS / 8 + 4 * unquantized + 2 * counts["lm_head"]
    root = 2 * (counts["embed_tokens"] + counts["lm_head"] + counts["audio tower"] + counts["vision tower"])
    fsdp = bf16 / 8 + root + 2 * 2 * projections / layers  # shards + root module gathered + two layers in flight
    lora_state = 16 * lora_params  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    ref_adapter = 4 * lora_params  # Hint-GRPO's frozen copy of the SFT adapter (beta > 0)

    def checkpointed(tokens: float, layer: dict) -> float:
        """The input of every layer, one layer recomputed in backward, and autocast's bf16 copies of every layer's
        LoRA weights (cached for the whole forward)."""
        return tokens * (layers * layer["layer_input"] + layer["saved"]) + layers * layer["per_layer"]

    def sft(weights, state, rows, prompt, completion, base, every_position):
        tokens = rows * (prompt + completion)
        positions = tokens if every_position else rows * completion
        return {"weights": weights, "LoRA + AdamW": state, "activations": checkpointed(tokens, layer_bytes[base]),
                "logits": positions * vocab * LOGIT_BYTES}  # fmt: skip

    def grpo(weights, state, prompts, group, micro, prompt, completion, base, kv_bytes):
        generation = prompts * group * (prompt + completion) * kv_bytes
        training = checkpointed(micro * (prompt + completion), layer_bytes[base])
        training += micro * completion * vocab * LOGIT_BYTES
        return {"weights": weights, "LoRA + AdamW": state + ref_adapter, "rollout KV | training pass": (generation,
                training)}  # fmt: skip

    long_clip, short_clip = clips
    old_new = (True, False)  # SFT: the logits of every position (old code), of the completion only (new)
    rows = [
        ("sft.yaml (1 GPU, bf16, LoRA)", *(sft(bf16, lora_state, 2, long_clip, 1024, "bf16", e) for e in old_new)),
        ("sft.yaml + sft_8gpu_fsdp2.yaml (per GPU)",
         *(sft(fsdp, lora_state / 8, 2, long_clip, 1024, "bf16", e) for e in old_new)),
        ("sft.yaml + sft_1gpu_qlora.yaml",
         sft(nf4_upcast, lora_state, 1, short_clip, 1024, "nf4 upcast", True),
         sft(nf4, lora_state, 1, short_clip, 1024, "nf4", False)),
        ("hint_grpo.yaml (1 GPU, bf16, LoRA)",
         *[grpo(bf16, lora_state, 4, 8, 8, long_clip, 512, "bf16", kv_per_token)] * 2),
        ("hint_grpo.yaml + hint_grpo_8gpu_fsdp2.yaml",
         *[grpo(fsdp, lora_state / 8, 1, 8, 8, long_clip, 512, "bf16", kv_per_token)] * 2),
        ("hint_grpo.yaml + hint_grpo_1gpu_qlora.yaml",
         grpo(nf4_upcast, lora_state, 1, 8, 2, short_clip, 512, "nf4 upcast", 2 * kv_per_token),
         grpo(nf4, lora_state, 1, 8, 2, short_clip, 512, "nf4", kv_per_token)),
    ]  # fmt: skip

    def total(terms: dict) -> float:  # rollouts and the training pass come one after the other: the larger counts
        return sum(max(v) if isinstance(v, tuple) else v for v in terms.values()) + CUDA_OVERHEAD

    return [(name, before, total(before), after, total(after)) for name, before, after in rows]


def gib(value) -> str:
    return " | ".join(f"{x / GIB:.1f}" for x in value) if isinstance(value, tuple) else f"{value / GIB:.1f}"


def main() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tokens-measured", type=int, default=64, help="the layer is measured at this length and twice it"
    )
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
    unquantized = total - counts["LM projections (q,k,v,o,gate,up,down)"]
    print(f"  unquantized in NF4 (towers, embeddings, lm_head, biases, norms): bf16 {2 * unquantized / GIB:.2f} GiB, "
          f"fp32 (old prepare_model_for_kbit_training upcast) {4 * unquantized / GIB:.2f} GiB")  # fmt: skip
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
    print("one decoder layer, LoRA r=64 dropout 0.05, under torch.autocast(cpu, bfloat16), real dtypes:")
    layer_bytes = {}
    for base in LAYER_BASES:
        act = layer_bytes[base] = layer_activation_bytes(config, 64, 0.05, args.tokens_measured, base)
        print(
            f"  {base:10} base: {act['saved'] / 2**10:.1f} KiB/token saved for backward + "
            f"{act['per_layer'] / 2**20:.1f} MiB per layer; layer input (kept under gradient checkpointing) "
            f"{act['layer_input'] / 2**10:.1f} KiB/token"
        )
    peaks = recipe_peaks(
        counts, lora_parameters(config, 64), layer_bytes, kv, prompts, t.vocab_size, t.num_hidden_layers
    )  # fmt: skip
    print(f"\nexpected peak per GPU (GiB; + {CUDA_OVERHEAD / GIB:.0f} GiB CUDA context and fragmentation), bf16-mixed;")
    print("before = the old code (QLoRA: fp32 upcast of the unquantized weights; SFT: logits of every position)")
    for name, before, before_peak, after, after_peak in peaks:
        print(f"  {name}: before {before_peak / GIB:.1f} -> after {after_peak / GIB:.1f}")
        for label, terms in (("before", before), ("after", after)):
            print(f"    {label:6} " + ", ".join(f"{k} {gib(v)}" for k, v in terms.items()))


if __name__ == "__main__":
    main()
