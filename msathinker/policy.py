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
"""LoRA targets: the language model's attention and dense MLP projections only (the plain name "q_proj" would also
hit the audio tower's attention). On Qwen2.5-Omni that is attention and MLP; on Qwen3-Omni-MoE the attention only,
since its experts are fused 3-D parameters, not linear layers (LoraOptions.target_parameters adapts them) and its
routers stay as they are."""
QWEN3_EXPERT_LORA_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
"""LoraOptions.target_parameters that put LoRA on every expert of Qwen3-Omni-MoE's language model."""


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
    """Regex (full match on module names) of the linear layers that get an adapter. It is resolved here to the
    list of matching names (an error if none match): peft would otherwise rewrite a regex on MoE models such as
    Qwen3-Omni into bare suffixes like "q_proj", which also hit the audio tower."""
    target_parameters: tuple[str, ...] = ()
    """Names (suffixes) of nn.Parameters that get an adapter (peft's target_parameters): for Qwen3-Omni's fused
    experts, QWEN3_EXPERT_LORA_PARAMETERS ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"); needs dropout 0.
    Empty by default, so a Qwen3-Omni adapter covers the attention only."""
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
    if options.lora is not None and options.lora.target_parameters and options.lora.dropout != 0:
        raise ValueError(
            f"policy.lora.target_parameters {list(options.lora.target_parameters)} needs policy.lora.dropout 0 "
            f"(it is {options.lora.dropout}): peft's LoRA on parameters has no dropout"
        )


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

    from msathinker.modeling import CheckpointError

    if options.adapter_path is not None:
        from pathlib import Path

        if not (Path(options.adapter_path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter_path {options.adapter_path!r}: no adapter_config.json there")
        check_adapter_family(options.adapter_path, model)
        try:
            model = PeftModel.from_pretrained(model, options.adapter_path, is_trainable=True)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"adapter {options.adapter_path} does not fit {type(model).__name__}: peft could not load it "
                f"({exc}). Load it onto the checkpoint it was trained on (adapter_config.json: base_model_name_or_path)"
            ) from exc
        check_adapter_weights(options.adapter_path, model)
    else:
        lora = options.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_modules(model, lora.target_modules),
            target_parameters=list(lora.target_parameters) or None,
            modules_to_save=list(lora.modules_to_save) or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    for param in model.parameters():  # peft keeps LoRA in fp32 but copies modules_to_save in the base's dtype
        if param.requires_grad and param.dtype in HALF_DTYPES:
            param.data = param.data.float()
    return model, processor


def check_adapter_family(adapter_path: str, thinker) -> None:
    """CheckpointError if the adapter's base checkpoint (adapter_config.json's base_model_name_or_path, when its
    config can be read here) is of another model family than `thinker`: its LoRA weights would be applied to
    layers they were not trained for, or partly dropped."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    from msathinker.modeling import CheckpointError, family_of_model_type
    from msathinker.qwen_omni import family_of

    base = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
    base_path = base.get("base_model_name_or_path")
    try:
        base_type = AutoConfig.from_pretrained(base_path).model_type if base_path else None
    except (OSError, ValueError):  # a base that is not on this machine: the weight check below still runs
        return
    if base_type is not None and family_of_model_type(base_type) != family_of(thinker):
        raise CheckpointError(
            f"adapter {adapter_path} was trained on {base_path} ({family_of_model_type(base_type)}), but the model "
            f"is {family_of(thinker)}: an adapter only fits the model family it was trained on. Set "
            "policy.model_path to the adapter's base checkpoint, or train a new adapter on this model"
        )


def check_adapter_weights(adapter_path: str, model) -> None:
    """CheckpointError if the adapter's saved weights do not fit the model's LoRA layers one to one (same names,
    same shapes): peft would otherwise drop the weights it finds no place for, without an error."""
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    from msathinker.modeling import CheckpointError, _first

    file = Path(adapter_path) / "adapter_model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"adapter {adapter_path}: no adapter_model.safetensors there")
    with safe_open(str(file), "pt") as saved:
        saved_shapes = {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    ours = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(model).items()}
    problems = []
    if set(saved_shapes) - set(ours):
        problems.append(f"weights with no place in the model: {_first(set(saved_shapes) - set(ours))}")
    if set(ours) - set(saved_shapes):
        problems.append(f"LoRA weights the adapter does not have: {_first(set(ours) - set(saved_shapes))}")
    shapes = [
        f"{k} {saved_shapes[k]} vs {ours[k]}" for k in set(ours) & set(saved_shapes) if ours[k] != saved_shapes[k]
    ]
    if shapes:
        problems.append(f"weights of another shape (adapter vs model): {_first(shapes)}")
    if problems:
        raise CheckpointError(
            f"adapter {adapter_path} does not fit {type(model.get_base_model()).__name__}: "
            + "; ".join(problems)
            + ". Load it onto the checkpoint it was trained on (adapter_config.json: base_model_name_or_path)"
        )


def lora_target_modules(model, pattern: str) -> list[str]:
    """The names of `model`'s modules that `pattern` fully matches; ValueError naming the pattern if none does."""
    import re

    names = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if not names:
        raise ValueError(
            f"policy.lora.target_modules {pattern!r} matches no module of {type(model).__name__}; it is a regex "
            "matched against full module names such as model.language_model.layers.0.self_attn.q_proj"
        )
    return names


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
