"""Building the trainable thinker: LoRA (peft), 4-bit base (bitsandbytes), frozen towers, gradient checkpointing.

Shared by the SFT and Hint-GRPO modules: their base, msathinker.module.OmniPolicyModule, calls `build_policy` from
`configure_model`, so FSDP2 can shard the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from msathinker.modeling import Quantization

LANGUAGE_MODEL_LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
"""LoRA targets: the language model's attention and MLP projections only. The plain name "q_proj" would also hit
the audio tower's attention."""


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapter settings (peft.LoraConfig)."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: str = LANGUAGE_MODEL_LORA_TARGETS
    """Regex (full match on module names) of the linear layers that get an adapter."""
    modules_to_save: tuple[str, ...] = ()
    """Modules trained in full next to the adapter and saved with it (e.g. lm_head, embed_tokens: useful for a
    random-init model, or after adding tokens)."""


@dataclass(frozen=True)
class FSDPOptions:
    """How the policy is sharded under ModelParallelStrategy (ignored by every other strategy).

    Activation checkpointing of the decoder layers is policy.gradient_checkpointing (the same switch as without
    FSDP2: transformers recomputes each layer's forward, FSDP2's hooks gather the layer's weights again for it).
    """

    reshard_after_forward: bool = True
    """Free each unit's gathered weights after its forward (ZeRO-3: least memory, weights gathered again for the
    backward); False keeps them until the backward (ZeRO-2: one all-gather less per layer, more memory)."""


@dataclass(frozen=True)
class PolicyOptions:
    """How the thinker is loaded and which of its parameters train."""

    model_path: str
    """Checkpoint: a local directory, a hub id (Qwen/Qwen2.5-Omni-7B) or a tiny demo alias (tiny, tiny-small,
    tiny-qwen). Required: a config without it is an error, never a silently random-initialised model."""
    lora: LoraOptions | None = LoraOptions()
    """LoRA settings; null trains the unfrozen weights in full."""
    adapter_path: str | None = None
    """A saved peft adapter to start from (e.g. the SFT stage's output); trained further."""
    quantization: Quantization = "none"
    """4-bit base weights (QLoRA) for the language model's linear layers; needs LoRA. Everything else (towers,
    embeddings, LM head, norms) stays in dtype; the LoRA weights are fp32."""
    dtype: str = "float32"
    """Weight dtype (float32, bfloat16, float16)."""
    freeze_audio_tower: bool = True
    """Keep the audio encoder frozen (only matters without LoRA: LoRA freezes the base anyway)."""
    freeze_vision_tower: bool = True
    """Keep the vision encoder frozen (only matters without LoRA)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    attn_implementation: str | None = None
    """Attention kernel (sdpa, eager, flash_attention_2); None lets transformers choose."""
    fsdp: FSDPOptions = FSDPOptions()
    """Sharding under trainer.strategy ModelParallelStrategy (FSDP2); ignored by DDP and single-process runs."""


HALF_DTYPES = (torch.bfloat16, torch.float16)


def validate_policy_options(options: PolicyOptions) -> None:
    if options.quantization != "none" and options.lora is None:
        raise ValueError("quantization (4-bit base) needs LoRA: the quantized weights cannot be trained in full")
    if options.adapter_path is not None and options.lora is None:
        raise ValueError("adapter_path needs LoRA (set model.init_args.policy.lora)")


def build_policy(options: PolicyOptions):
    """Load the thinker and make it trainable as configured; returns (model, processor)."""
    from msathinker.modeling import load_thinker

    validate_policy_options(options)
    model, processor = load_thinker(
        options.model_path,
        dtype=options.dtype,
        quantization=options.quantization,
        attn_implementation=options.attn_implementation,
    )
    # A 4-bit base needs nothing more. peft's prepare_model_for_kbit_training would freeze the base (LoRA does that),
    # upcast every unquantized weight to fp32 (towers, embeddings, LM head: +4.5 GiB at 7B; bf16-mixed autocasts the
    # compute anyway) and enable checkpointing again without our use_reentrant=False.
    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if options.lora is None:
        for name, param in model.named_parameters():
            frozen = (options.freeze_audio_tower and ".audio_tower." in name) or (
                options.freeze_vision_tower and ".visual." in name
            )
            param.requires_grad_(not frozen)
        return model, processor
    from peft import LoraConfig, PeftModel, get_peft_model

    if options.adapter_path is not None:
        from pathlib import Path

        if not (Path(options.adapter_path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter_path {options.adapter_path!r}: no adapter_config.json there")
        model = PeftModel.from_pretrained(model, options.adapter_path, is_trainable=True)
    else:
        lora = options.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=list(lora.modules_to_save) or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    for param in model.parameters():  # peft keeps LoRA in fp32 but copies modules_to_save in the base's dtype
        if param.requires_grad and param.dtype in HALF_DTYPES:
            param.data = param.data.float()
    return model, processor


def check_update_resolution(named_params: dict[int, str], optimizer, precision: str) -> None:
    """Refuse half-precision trainable weights that the optimizer step cannot change.

    A weight w stored in bf16 (or fp16) only moves if its update is at least half a unit in the last place at |w|:
    2^floor(log2|w|) * eps / 2, eps = 2^-7 for bf16 (2^-10 for fp16); a smaller update rounds back to w. Adam-type
    optimizers move each weight by about lr per step, so with bf16 weights of a typical LoRA A magnitude (1e-2) any
    lr below ~3e-5 trains nothing, for hours, without a sign. The typical magnitude is the median of the nonzero
    |w| of each tensor (a zero-initialised LoRA B moves at any lr).

    named_params maps id(param) to its name (for the message); precision is trainer.precision (for the message).
    """
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        lr = float(group["lr"])
        for param in group["params"]:
            if param.dtype not in HALF_DTYPES:
                continue
            values = param.detach()
            if isinstance(values, DTensor):  # FSDP2: this rank's shard is a fair sample
                values = values.to_local()
            values = values.float().abs().flatten()
            values = values[values > 0]
            if values.numel() == 0:
                continue
            typical = float(values.median())
            half_step = 2.0 ** math.floor(math.log2(typical)) * torch.finfo(param.dtype).eps / 2
            if lr < half_step:
                raise ValueError(
                    f"trainable weight {named_params.get(id(param), '?')} is {param.dtype} (trainer.precision "
                    f"{precision!r}): an optimizer step of about lr {lr:g} is below half a {param.dtype} step "
                    f"({half_step:.2g}) at its typical magnitude {typical:.2g}, so the update rounds away and the run "
                    "would not learn. Keep trainable weights in float32: trainer.precision bf16-mixed (bf16 compute; "
                    "LoRA, modules_to_save and optimizer state in fp32; the frozen base in policy.dtype), or "
                    "policy.dtype float32 for a full fine-tune, or a larger lr."
                )
