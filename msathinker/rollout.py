"""Rollouts for GRPO on an omni thinker: encode each prompt's audio and video once, then sample completions and
compute their log-probs from the encoder outputs.

The towers run once per prompt per step; the G completions, the hinted regenerations and every log-prob pass
(policy, old, reference) reuse the features. The thinker's forward accepts `inputs_embeds` (with the audio features
scattered in) together with `input_ids`, the grids and the precomputed video outputs (`mm_encoder_outputs`, with
Qwen3-Omni's deepstack features), so TMRoPE positions are still computed by the model's own get_rope_index. With
`encode_once=False` the rows carry the raw media instead and the towers run on every call (the naive path the
benchmark compares against). What this needs of the model's internals is in msathinker/qwen_omni.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msathinker.generation import generate, generation_config, thinker_of
from msathinker.grpo import token_entropy, token_logprobs
from msathinker.qwen_omni import (
    VideoEncoding,
    audio_token_counts,
    embed_with_audio,
    encode_videos,
    reorder_rope_deltas,
    rope_positions,
    video_encoder_outputs,
)


@dataclass
class PromptMedia:
    """One prompt's multimodal inputs: encoder outputs (encode-once) and/or raw inputs, plus rope inputs."""

    audio_features: torch.Tensor | None
    video: VideoEncoding | None
    video_grid_thw: torch.Tensor | None
    audio_length: int | None
    """Mel frames of the audio (what get_rope_index needs)."""
    video_second_per_grid: torch.Tensor | None
    input_features: torch.Tensor | None
    """(128, frames) mel features, kept only for the re-encode path."""
    pixel_values_videos: torch.Tensor | None
    """(patches, dim) video patches, kept only for the re-encode path."""


@dataclass
class Row:
    """One completion with its (possibly hinted) prompt."""

    prompt_ids: torch.Tensor
    media: PromptMedia
    completion_ids: torch.Tensor | None = None
    truncated: bool = False
    """The completion hit max_completion_length without an EOS."""
    forced: int = 0
    """Leading completion tokens a hint forced instead of the policy sampling them (hint credit "policy")."""


class MediaMismatchError(ValueError):
    """A prompt whose media placeholders do not match its media: the model would read text embeddings (or another
    clip's features) where the audio or video should be."""


def audio_placeholder_counts(
    model, inputs: dict, clip_ids: list[str] | None = None, hinted_ids: list[torch.Tensor] | None = None
) -> torch.Tensor | None:
    """Audio placeholder tokens per prompt of a collated batch, checked against its audio (the audio integrity
    guard): a prompt with placeholders but no features, features but no placeholders, or another count than its
    mel frames give (audio_token_counts) is a MediaMismatchError naming the clip; so is a hinted prompt
    (`hinted_ids`, one per clip) whose audio or video placeholders differ in number from its clip's prompt, since
    the hinted rollouts reuse the prompt's features. None without audio."""
    thinker = thinker_of(model)
    placeholders = (inputs["input_ids"] == thinker.config.audio_token_id).sum(-1)
    names = clip_ids or [f"row {i}" for i in range(len(placeholders))]
    for name, plain, hinted in zip(names, inputs["input_ids"], hinted_ids or [], strict=False):
        for kind, token in (("audio", thinker.config.audio_token_id), ("video", thinker.config.video_token_id)):
            if int((plain == token).sum()) != int((hinted == token).sum()):
                raise MediaMismatchError(
                    f"{name}: the hinted prompt holds {int((hinted == token).sum())} {kind} placeholder tokens, the "
                    f"prompt {int((plain == token).sum())}; both must come from the same processor call"
                )
    if "feature_attention_mask" not in inputs:
        if int(placeholders.sum()):
            clip = names[int(placeholders.nonzero()[0])]
            raise MediaMismatchError(f"{clip}: the prompt holds audio placeholders but the batch has no audio features")
        return None
    expected = audio_token_counts(thinker, inputs["feature_attention_mask"].sum(-1))
    for name, found, wanted in zip(names, placeholders.tolist(), expected.tolist(), strict=True):
        if found != wanted:
            raise MediaMismatchError(
                f"{name}: {found} audio placeholder tokens in the prompt, but its audio gives {wanted} rows of "
                "features; build prompts and features with the same processor call (the checkpoint's own processor)"
            )
    return placeholders


def split_prompt_media(model, inputs: dict, encode_once: bool) -> list[PromptMedia]:
    """Per-prompt media of a collated batch; with encode_once the towers run here, once, without gradient."""
    thinker = thinker_of(model)
    batch = inputs["input_ids"].shape[0]
    audio_lengths = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
    grids = inputs.get("video_grid_thw")
    audio_features = videos = None
    with torch.no_grad():
        if encode_once and "input_features" in inputs:
            encoded = thinker.model.get_audio_features(
                inputs["input_features"], inputs["feature_attention_mask"], return_dict=True
            ).last_hidden_state
            audio_features = torch.split(encoded, audio_token_counts(thinker, audio_lengths).tolist())
        if encode_once and "pixel_values_videos" in inputs:
            videos = encode_videos(thinker, inputs["pixel_values_videos"], grids)
    patches = torch.split(inputs["pixel_values_videos"], grids.prod(-1).tolist()) if grids is not None else None
    return [
        PromptMedia(
            audio_features=audio_features[i] if audio_features is not None else None,
            video=videos[i] if videos is not None else None,
            video_grid_thw=grids[i] if grids is not None else None,
            audio_length=int(audio_lengths[i]) if audio_lengths is not None else None,
            video_second_per_grid=inputs["video_second_per_grid"][i] if grids is not None else None,
            input_features=None if encode_once or audio_lengths is None else inputs["input_features"][i],
            pixel_values_videos=None if encode_once or patches is None else patches[i],
        )
        for i in range(batch)
    ]


def unpadded_prompts(inputs: dict) -> list[torch.Tensor]:
    return [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]


def model_kwargs(model, rows: list[Row], pad_id: int, use_audio_in_video: bool) -> tuple[dict, int]:
    """Forward/generate kwargs of rows: prompts left-padded, completions (if any) right-padded after them.

    Returns the kwargs and the padded prompt length.
    """
    thinker = thinker_of(model)
    device = rows[0].prompt_ids.device
    prompt_len = max(len(r.prompt_ids) for r in rows)
    completion_len = max((len(r.completion_ids) for r in rows if r.completion_ids is not None), default=0)
    ids = torch.full((len(rows), prompt_len + completion_len), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, prompt_len - len(r.prompt_ids) : prompt_len] = r.prompt_ids
        mask[i, prompt_len - len(r.prompt_ids) : prompt_len] = 1
        if r.completion_ids is not None:
            ids[i, prompt_len : prompt_len + len(r.completion_ids)] = r.completion_ids
            mask[i, prompt_len : prompt_len + len(r.completion_ids)] = 1
    kwargs: dict = {"input_ids": ids, "attention_mask": mask}
    media = [r.media for r in rows]
    if media[0].video_grid_thw is not None:
        kwargs["video_grid_thw"] = torch.stack([m.video_grid_thw for m in media])
        kwargs["video_second_per_grid"] = torch.stack([m.video_second_per_grid for m in media])
    if media[0].audio_length is not None:
        lengths = torch.tensor([m.audio_length for m in media], device=device)
        frames = torch.arange(int(lengths.max()), device=device)
        kwargs["feature_attention_mask"] = (frames[None, :] < lengths[:, None]).long()
        if use_audio_in_video:
            kwargs["use_audio_in_video"] = True
    encoded = media[0].input_features is None and media[0].pixel_values_videos is None
    if encoded:
        audio = torch.cat([m.audio_features for m in media]) if media[0].audio_features is not None else None
        kwargs["inputs_embeds"] = embed_with_audio(thinker, ids, audio)
        if media[0].video is not None:
            kwargs["mm_encoder_outputs"] = video_encoder_outputs([m.video for m in media])
    else:
        if media[0].input_features is not None:
            frames = kwargs["feature_attention_mask"].shape[1]
            kwargs["input_features"] = torch.stack([m.input_features[:, :frames] for m in media])
        if media[0].pixel_values_videos is not None:
            kwargs["pixel_values_videos"] = torch.cat([m.pixel_values_videos for m in media])
    return kwargs, prompt_len


MEDIA_TOKENS = (
    "audio_token", "image_token", "video_token", "audio_bos_token", "audio_eos_token", "vision_bos_token",
    "vision_eos_token",
)  # fmt: skip
"""The tokenizer's named media placeholder and boundary tokens (both families' processors name the same seven)."""


def media_token_ids(tokenizer) -> list[int]:
    """The media placeholder and boundary tokens of a checkpoint's tokenizer: a sampled one would break TMRoPE
    positions and the feature scatter, so sampling suppresses them."""
    return tokenizer.convert_tokens_to_ids([getattr(tokenizer, name) for name in MEDIA_TOKENS])


class PerRowGumbelSampling:
    """LogitsProcessor that, after temperature and top-p, adds Gumbel noise drawn from each row's own generator, so
    that greedy decoding samples exactly from the warped softmax (Gumbel-max trick: argmax(s_i + G_i), G_i = -log E_i,
    E_i ~ Exp(1) i.i.d., picks i with probability softmax(s)_i). A row's tokens then depend only on its prompt and
    its generator, never on the other rows of the batch or on the process it runs in."""

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(input_ids, scores.float())
        exponential = torch.stack(
            [torch.empty(scores.shape[-1], device=scores.device).exponential_(generator=g) for g in self.generators]
        )
        return scores - exponential.log()


@torch.no_grad()
def sample(
    model,
    rows: list[Row],
    tokenizer,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    use_audio_in_video: bool,
    generators: list[torch.Generator] | None = None,
    synced_gpus: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sample one completion per row (KV-cached generate). Returns the completion ids of each row, cut after its
    first stop token (kept, as TRL does), and a bool tensor marking rows that hit max_new_tokens without one. Each
    distinct prompt (a group) is prefilled once and its KV cache shared by its rows.

    The distribution is the temperature / top-p softmax and nothing else (msathinker.generation: no setting of the
    checkpoint's generation_config.json applies), with the media placeholder and boundary tokens suppressed: their
    (tiny, after SFT) probability mass is the only difference between the sampling and the log-prob distributions.
    With `generators` (one per row) each row samples from its own generator (PerRowGumbelSampling); else from the
    global RNG (transformers' multinomial sampling). `synced_gpus` keeps this rank stepping until every rank is done
    (needed when the model is FSDP-sharded)."""
    thinker = thinker_of(model)
    config = generation_config(
        tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=generators is None,
        temperature=temperature,
        top_p=top_p,
        suppress_tokens=media_token_ids(tokenizer),
    )
    prompts, owner = distinct_prompts(rows)
    kwargs, prompt_len = model_kwargs(model, prompts, config.pad_token_id, use_audio_in_video)
    # prefill each distinct prompt but its last token once, then let generate continue every row from that cache
    prefix = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "inputs_embeds") else v for k, v in kwargs.items()}
    cache = thinker.model(**prefix, use_cache=True).cache
    cache.reorder_cache(owner)
    reorder_rope_deltas(thinker, owner)  # the prefill's TMRoPE offsets, one per row
    extra = {}
    if generators is not None:
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList([PerRowGumbelSampling(temperature, top_p, generators)])
    output = generate(
        model,
        config,
        input_ids=kwargs["input_ids"][owner],
        attention_mask=kwargs["attention_mask"][owner],
        cache=cache,
        synced_gpus=synced_gpus,
        **extra,
    )
    new = output[:, prompt_len:]
    is_stop = torch.isin(new, torch.tensor(config.eos_token_id, device=new.device))
    completions, truncated = [], []
    for row in range(new.shape[0]):
        hits = is_stop[row].nonzero()
        end = int(hits[0]) + 1 if len(hits) else new.shape[1]
        completions.append(new[row, :end].clone())
        truncated.append(len(hits) == 0)
    return completions, torch.tensor(truncated)


def distinct_prompts(rows: list[Row]) -> tuple[list[Row], torch.Tensor]:
    """The distinct prompts of rows (same ids and same media: a GRPO group) as completion-less rows, and the index of
    each row's prompt among them."""
    index: dict = {}
    owner = [index.setdefault((id(r.media), tuple(r.prompt_ids.tolist())), len(index)) for r in rows]
    first: dict[int, int] = {}
    for i, g in enumerate(owner):
        first.setdefault(g, i)
    prompts = [Row(rows[i].prompt_ids, rows[i].media) for i in first.values()]
    return prompts, torch.tensor(owner, device=rows[0].prompt_ids.device)


def _shared_prompt_hidden(model, rows: list[Row], pad_id: int, use_audio_in_video: bool):
    """Hidden states that predict each row's completion tokens, running each distinct prompt through the LM once and
    its completions from the prompt's keys/values. Returns (hidden, targets, mask)."""
    thinker = thinker_of(model)
    prompts, owner = distinct_prompts(rows)
    kwargs, _ = model_kwargs(model, prompts, pad_id, use_audio_in_video)
    prompt_mask = kwargs["attention_mask"]
    audio_lengths = kwargs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in kwargs else None
    positions = rope_positions(
        thinker, kwargs["input_ids"], prompt_mask, kwargs.get("video_grid_thw"), use_audio_in_video, audio_lengths,
        kwargs.get("video_second_per_grid"),
    )  # fmt: skip
    out = thinker.model(**kwargs, position_ids=positions, use_cache=True)
    device = prompt_mask.device
    width = max(len(r.completion_ids) for r in rows)
    targets = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, device=device)
    for i, r in enumerate(rows):
        targets[i, : len(r.completion_ids)] = r.completion_ids
        mask[i, : len(r.completion_ids)] = 1
    hidden = out.last_hidden_state[owner, -1:]  # the last prompt position predicts the first completion token
    if width > 1:  # completion tokens 0..width-2 predict tokens 1..width-1; text continues after the prompt's max
        cache = out.cache
        cache.reorder_cache(owner)
        start = positions.masked_fill(prompt_mask[None] == 0, -1).amax(dim=(0, 2)) + 1
        steps = start[owner, None] + torch.arange(width - 1, device=device)
        tail = thinker.model.language_model(
            inputs_embeds=thinker.get_input_embeddings()(targets[:, :-1]),
            attention_mask=torch.cat([prompt_mask[owner], mask[:, :-1].long()], dim=1),
            position_ids=steps[None].expand(3, -1, -1),
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        hidden = torch.cat([hidden, tail], dim=1)
    return hidden, targets, mask


def completion_logprobs(
    model,
    rows: list[Row],
    *,
    temperature: float,
    pad_id: int,
    use_audio_in_video: bool,
    with_entropy: bool = False,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (temperature-scaled, as the sampler saw them) of each row's completion.

    Returns logp (rows, T), mask (rows, T) of real completion tokens, and optionally the per-token entropy. The LM
    head runs on the completion positions only, so long multimodal prompts don't materialise vocab-sized logits.
    With share_prompts, rows with the same prompt (a GRPO group) run it through the LM once and their completions
    from its KV cache: the same log-probs and gradients (the prompt's activations receive the summed gradient of its
    completions) for prompt tokens computed once per group instead of once per row. The cache is dropped under
    gradient checkpointing, so leave it off there.
    """
    thinker = thinker_of(model)
    if share_prompts:
        hidden, targets, mask = _shared_prompt_hidden(model, rows, pad_id, use_audio_in_video)
    else:
        kwargs, prompt_len = model_kwargs(model, rows, pad_id, use_audio_in_video)
        width = kwargs["input_ids"].shape[1] - prompt_len
        hidden = thinker.model(**kwargs).last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + width]
        targets = kwargs["input_ids"][:, prompt_len:]
        mask = kwargs["attention_mask"][:, prompt_len:].float()
    logits = thinker.lm_head(hidden).float()
    logp = token_logprobs(logits, targets, temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = token_entropy(logits.detach(), temperature)
    return logp, mask, entropy
