"""The decoding settings of every `generate` call (evaluation, GRPO rollouts, the local teacher): built here from our
own options and the tokenizer, never read from the checkpoint's generation_config.json.

Why: the thinker class loaded on its own can lose the EOS ids of a full checkpoint's generation_config.json
(QwenLM/Qwen2.5-Omni#371), so generation would run on past the end of the turn; and a penalty or truncation set
there (repetition_penalty, top_k, min_p, no_repeat_ngram_size, ...) would change the distribution the sampler
draws from but not the one the log-prob pass scores, which silently biases GRPO's importance ratio.

How: transformers' `generate` fills every field the config it is given leaves None, first from
`model.generation_config` (the checkpoint's file), then from `GenerationConfig._get_default_generation_params()`.
Setting every field cannot close the first gap (None is how min_p, top_h, ... are switched off), so `generate` makes
our config the thinker's own `generation_config` before the call: that first fill then adds nothing. The global
defaults are neutral (no penalty, no truncation) except top_k=50, which `generation_config` sets to 0 (off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

END_OF_TURN = "<|im_end|>"
"""The chat template's end of a turn: a completion ends with it."""
END_OF_TEXT = "<|endoftext|>"
"""Qwen's end of document (and pad) token: a model may also stop with it."""


def thinker_of(model):
    """The Qwen thinker under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def special_token_id(tokenizer, token: str) -> int:
    """The id of a special token of the Qwen chat vocabulary; ValueError if the tokenizer does not have it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} ({tokenizer.name_or_path or 'unnamed'}) has no {token} token; "
            "msathinker needs the Qwen chat vocabulary: use the processor of a Qwen2.5-Omni / Qwen3-Omni checkpoint"
        )
    return token_id


def stop_token_ids(tokenizer) -> list[int]:
    """The ids generation stops at: the end of the turn, then the end of text."""
    return [special_token_id(tokenizer, END_OF_TURN), special_token_id(tokenizer, END_OF_TEXT)]


def generation_config(
    tokenizer,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    suppress_tokens: list[int] | None = None,
) -> GenerationConfig:
    """The complete decoding settings of one generate call: stop at `stop_token_ids`, pad with the tokenizer's pad
    token (else the end of text), sample (temperature, top-p, no top-k) or decode greedily, nothing else."""
    from transformers import GenerationConfig

    stop = stop_token_ids(tokenizer)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[1],
        suppress_tokens=suppress_tokens,
        **sampling,
    )


def generate(model, config: GenerationConfig, **kwargs) -> torch.Tensor:
    """`model.generate(**kwargs)` with `config` and nothing from the checkpoint's generation_config.json: `config`
    becomes the thinker's own generation_config (see the module docstring). kwargs are the model inputs and
    generate's non-config arguments (logits_processor, synced_gpus, cache)."""
    thinker_of(model).generation_config = config
    return model.generate(**kwargs, generation_config=config)
