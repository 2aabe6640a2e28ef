"""One way to load a model for every stage: the thinker (text-out part) of a Qwen2.5-Omni / Qwen3-Omni checkpoint.

Accepts a full omni checkpoint (thinker + talker + token2wav; only the thinker is built, and only its weights are
read; Qwen3-Omni's talker and code2wav alike) or a thinker-only checkpoint, from a local path, a hub id or a tiny
alias (see msathinker.assets). The tiny checkpoints load through exactly this code. A checkpoint whose thinker
weights do not fit the model (a renamed, missing or extra key, a wrong shape, a missing shard file) is a
CheckpointError, never a model with randomly initialised weights; a processor of the other family is a ValueError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Quantization = Literal["none", "nf4", "fp4"]

# model_type -> (thinker class, whether the checkpoint is a full omni model holding the thinker under `thinker.`)
_MODEL_CLASSES = {
    "qwen2_5_omni": ("Qwen2_5OmniThinkerForConditionalGeneration", True),
    "qwen2_5_omni_thinker": ("Qwen2_5OmniThinkerForConditionalGeneration", False),
    "qwen3_omni_moe": ("Qwen3OmniMoeThinkerForConditionalGeneration", True),
    "qwen3_omni_moe_thinker": ("Qwen3OmniMoeThinkerForConditionalGeneration", False),
}


def family_of_model_type(model_type: str) -> str:
    """The model family ("qwen2_5_omni", "qwen3_omni") of a config's model_type."""
    if model_type not in _MODEL_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not an omni thinker; supported: {sorted(_MODEL_CLASSES)}")
    return "qwen3_omni" if model_type.startswith("qwen3_omni") else "qwen2_5_omni"


PROCESSOR_FAMILIES = {"Qwen2_5OmniProcessor": "qwen2_5_omni", "Qwen3OmniMoeProcessor": "qwen3_omni"}
"""Processor class -> the model family whose inputs it builds."""


def check_processor_family(processor, family: str, where: str) -> None:
    """ValueError if `processor` builds inputs for another model family than `family` (its placeholders, patch
    size and audio chunking would not be what the model reads); `where` names the checkpoint or config key."""
    found = PROCESSOR_FAMILIES.get(type(processor).__name__)
    if found != family:
        raise ValueError(
            f"{where}: the processor is {type(processor).__name__} ({found or 'not an omni processor'}), but the "
            f"model is {family}. Use the processor saved with a {family} checkpoint (its preprocessor_config.json, "
            "tokenizer and chat template)"
        )


class CheckpointError(ValueError):
    """A checkpoint whose weights do not fit the model; the message names the checkpoint and the keys or file."""


def _first(keys, count: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} in all)" if len(keys) > count else "")


def loading_problems(info: dict) -> list[str]:
    """The problems in from_pretrained's loading info (output_loading_info=True), one line per kind, each naming the
    first keys. Keys are the model's names (after transformers' key conversion). The thinker classes already leave
    the talker's and token2wav's / code2wav's keys of a full checkpoint out of unexpected_keys."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"weights missing from the checkpoint (they would be random): {_first(info['missing_keys'])}")
    if info["unexpected_keys"]:
        problems.append(f"checkpoint weights the model has no place for: {_first(info['unexpected_keys'])}")
    if info["mismatched_keys"]:
        shapes = [f"{key} {tuple(saved)} vs {tuple(model)}" for key, saved, model in info["mismatched_keys"]]
        problems.append(f"weights of another shape (checkpoint vs model): {_first(shapes)}")
    if info["error_msgs"]:
        problems.append(f"load errors: {_first(info['error_msgs'])}")
    return problems


def _check_shards(path: str) -> None:
    """A local sharded checkpoint whose index lists a shard file that is not there: name the file and its keys
    (transformers stops midway through loading with only the file name)."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME

    for name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        index = Path(path).expanduser() / name
        if not index.is_file():
            continue
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        missing = sorted({file for file in weight_map.values() if not (index.parent / file).is_file()})
        if missing:
            keys = [key for key, file in weight_map.items() if file in missing]
            raise CheckpointError(
                f"{path}: shard file(s) {', '.join(missing)} listed in {name} are missing; they hold the weights "
                f"{_first(keys)}. Copy or download the missing shard(s) into the checkpoint directory"
            )


def _check_local(path: str) -> None:
    from msathinker.assets import TINY_MODELS

    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {path!r}: no config.json there. Give a local checkpoint directory, a hub id "
            f"(org/name) or a tiny alias: {', '.join(TINY_MODELS)}"
        )


def load_processor(model_path: str):
    """The checkpoint's own processor (AutoProcessor), padding on the left for batched generation."""
    from transformers import AutoProcessor

    from msathinker.assets import resolve_model_path

    path = resolve_model_path(model_path)
    _check_local(path)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return processor


def load_thinker(
    model_path: str,
    *,
    dtype: str = "float32",
    quantization: Quantization = "none",
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
):
    """Load the thinker of `model_path` (see module docstring); returns (thinker, processor).

    dtype: torch dtype name of the weights ("float32", "bfloat16", ...). quantization "nf4"/"fp4" loads the
    language model's linear layers in 4 bit with bitsandbytes (the audio and vision towers stay in `dtype`); this
    works on CPU too with bitsandbytes >= 0.47.
    """
    import torch
    import transformers
    from transformers import AutoConfig

    from msathinker.assets import resolve_model_path

    path = resolve_model_path(model_path)
    _check_local(path)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in _MODEL_CLASSES:
        raise ValueError(
            f"{path}: model_type {config.model_type!r} is not an omni thinker; supported: {sorted(_MODEL_CLASSES)}"
        )
    class_name, is_full = _MODEL_CLASSES[config.model_type]
    kwargs: dict = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
            # full module paths: transformers matches these from the start of the name (or as a suffix), so a
            # bare "audio_tower" would leave the towers to be quantized
            llm_int8_skip_modules=["model.audio_tower", "model.visual", "lm_head"],
        )
        kwargs["device_map"] = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if is_full:  # load the thinker's weights only: talker and token2wav are never read
        kwargs["config"] = config.thinker_config
        kwargs["key_mapping"] = {r"^thinker\.": ""}
    _check_shards(path)
    # ignore_mismatched_sizes: a wrong shape lands in the loading info (checked below, with its key) instead of
    # transformers' RuntimeError, which names no key
    model, info = getattr(transformers, class_name).from_pretrained(
        path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    problems = loading_problems(info)
    if problems:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit {class_name}: " + "; ".join(problems) + ". Use a complete, "
            "unmodified checkpoint of this model (a partly loaded one would train and answer from random weights)"
        )
    if quantization != "none":
        _keep_cpu_4bit_trainable(model)
    processor = load_processor(path)
    check_processor_family(processor, family_of_model_type(config.model_type), path)
    return model, processor


def _keep_cpu_4bit_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight at its first forward in eval mode
    and never unpacks it; the next training forward then takes an inference-only kernel that adds the bias in place
    and fails ("a view of a leaf Variable ... in-place operation"). Evaluation between training steps (validation,
    rollouts) is exactly that sequence, so the repacking is turned off. GPUs are unaffected.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
