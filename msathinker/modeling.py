"""One way to load a model for every stage: the thinker (text-out part) of a Qwen2.5-Omni / Qwen3-Omni checkpoint.

Accepts a full omni checkpoint (thinker + talker + token2wav; only the thinker is built, and only its weights are
read) or a thinker-only checkpoint, from a local path, a hub id or a tiny alias ("tiny", "tiny-small",
"tiny-qwen"; see msathinker.assets). The tiny checkpoints load through exactly this code.
"""

from __future__ import annotations

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


def _check_local(path: str) -> None:
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {path!r}: no config.json there. Give a local checkpoint directory, a hub id "
            "(org/name) or a tiny alias: tiny, tiny-small, tiny-qwen"
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
    model = getattr(transformers, class_name).from_pretrained(path, **kwargs)
    return model, load_processor(path)
