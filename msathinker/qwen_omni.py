"""Every use of Qwen-Omni internals of transformers (and of FSDP2's in torch) in one place, for both families:
Qwen2.5-Omni (dense) and Qwen3-Omni-MoE (mixture of experts, deepstack vision features).

The GRPO rollouts encode each prompt's media once and reuse the encoder outputs, prefill each distinct prompt once
and share its KV cache, and shard the thinker with FSDP2. For that they reach past the public API of the model in
the places below, each a function whose docstring names the internal and why we need it. Internals change without
notice between releases: tests/test_qwen_omni.py checks each one on the tiny checkpoint of each family and fails
when the installed transformers or torch is not the release they were checked against (CHECKED_WITH). On an
upgrade, re-check each function here against the new source, run that test, then update CHECKED_WITH.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CHECKED_WITH = {"transformers": "5.25.0", "torch": "2.14.1"}
"""The releases these functions were checked against (tests/test_qwen_omni.py compares them with the installed)."""

FAMILIES = {
    "Qwen2_5OmniThinkerForConditionalGeneration": "qwen2_5_omni",
    "Qwen3OmniMoeThinkerForConditionalGeneration": "qwen3_omni",
}
"""Thinker class -> model family."""


def family_of(thinker: nn.Module) -> str:
    """ "qwen2_5_omni" or "qwen3_omni" (by the thinker's class, under peft or FSDP wrappers)."""
    name = type(thinker).__name__.removeprefix("FSDP")
    if name not in FAMILIES:
        raise TypeError(f"{name} is not an omni thinker msathinker supports; supported: {sorted(FAMILIES)}")
    return FAMILIES[name]


def audio_token_counts(thinker: nn.Module, mel_frames: torch.Tensor) -> torch.Tensor:
    """Audio placeholder tokens of each clip (the audio tower's output rows), from its number of mel frames.

    Relies on the private length formula the processor also uses to expand the audio placeholder:
    `Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths` (the second of the lengths it returns), and
    `modeling_qwen3_omni_moe._get_feat_extract_output_lengths` with the audio config's `n_window` (Qwen3-Omni encodes
    audio in chunks of 2 * n_window frames). Needed to split the tower's output, one tensor for the whole batch,
    into one tensor per clip, and to check that each prompt holds as many placeholders as its audio gives rows.
    """
    if family_of(thinker) == "qwen3_omni":
        from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe

        n_window = thinker.config.audio_config.n_window
        return modeling_qwen3_omni_moe._get_feat_extract_output_lengths(mel_frames, n_window)
    _, token_counts = thinker.model.audio_tower._get_feat_extract_output_lengths(mel_frames)
    return token_counts


@dataclass
class VideoEncoding:
    """One clip's video encoder outputs: what the thinker's forward computes from its patches."""

    features: torch.Tensor
    """(video tokens, hidden): the merged patch features that replace the video placeholders."""
    deepstack: tuple[torch.Tensor, ...] | None
    """Qwen3-Omni only: one (video tokens, hidden) tensor per deepstack layer of the vision tower, added to the
    hidden states of the first language-model layers at the video positions; None for Qwen2.5-Omni."""


def encode_videos(thinker: nn.Module, pixel_values_videos: torch.Tensor, grids: torch.Tensor) -> list[VideoEncoding]:
    """The video encoder outputs of each clip of a batch (public `get_video_features`; the per-clip split and, for
    Qwen3-Omni, the `deepstack_features` of its output, one tuple per layer, are what its forward consumes)."""
    out = thinker.model.get_video_features(pixel_values_videos, grids, return_dict=True)
    deepstack = getattr(out, "deepstack_features", None)
    return [
        VideoEncoding(features, tuple(layer[i] for layer in deepstack) if deepstack is not None else None)
        for i, features in enumerate(out.pooler_output)
    ]


def video_encoder_outputs(encodings: list[VideoEncoding]) -> dict:
    """The thinker forward's `mm_encoder_outputs` for precomputed videos (one per row, in batch order).

    Relies on `Qwen2_5OmniThinkerModel.forward` / `Qwen3OmniMoeThinkerModel.forward` accepting
    `mm_encoder_outputs={"video": output}` in place of `pixel_values_videos`, with the output class
    `get_video_features` returns (`BaseModelOutputWithPooling`; for Qwen3-Omni `BaseModelOutputWithDeepstackFeatures`
    from modeling_qwen3_omni_moe): its `pooler_output` a tuple of per-video features, and for Qwen3-Omni its
    `deepstack_features` a list over deepstack layers of per-video tuples. The forward then scatters the features
    and adds the deepstack features exactly as from raw patches.
    """
    pooled = tuple(e.features for e in encodings)
    if encodings[0].deepstack is None:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"video": BaseModelOutputWithPooling(pooler_output=pooled)}
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import BaseModelOutputWithDeepstackFeatures

    layers = [tuple(e.deepstack[layer] for e in encodings) for layer in range(len(encodings[0].deepstack))]
    return {"video": BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=layers)}


def embed_with_audio(thinker: nn.Module, input_ids: torch.Tensor, audio_features: torch.Tensor | None) -> torch.Tensor:
    """The token embeddings of `input_ids` with the audio encoder outputs in place of the audio placeholders: what
    the thinker's forward builds from raw audio, to be given as `inputs_embeds` with encoder outputs computed once
    (the forward has no precomputed-audio input; videos go through `video_encoder_outputs`).

    Relies on the forwards' audio scatter (`get_placeholder_mask` + `masked_scatter`, done before the video's): the
    rows of all clips of the batch, concatenated in batch order, fill the positions of `config.audio_token_id` in
    row-major order, the features cast to the embeddings' dtype.
    """
    embeds = thinker.get_input_embeddings()(input_ids)
    if audio_features is not None:
        mask = (input_ids == thinker.config.audio_token_id)[..., None]
        embeds = embeds.masked_scatter(mask, audio_features.to(embeds.dtype))
    return embeds


def rope_positions(
    thinker: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    video_grid_thw: torch.Tensor | None,
    use_audio_in_video: bool,
    audio_lengths: torch.Tensor | None,
    video_second_per_grid: torch.Tensor | None,
) -> torch.Tensor:
    """TMRoPE position ids (3, batch, length) of left-padded prompts, as the thinker's forward computes them.

    Relies on `get_rope_index` of Qwen2_5OmniThinkerModel / Qwen3OmniMoeThinkerModel (the same positional arguments:
    input_ids, image_grid_thw, video_grid_thw, attention_mask, use_audio_in_video, audio_seqlens, second_per_grids;
    its first output) and on text after the prompt continuing at the prompt's largest position + 1. Needed to place
    completion tokens that run from a shared prompt's KV cache, outside the forward that would compute them.
    """
    positions, _ = thinker.model.get_rope_index(
        input_ids, None, video_grid_thw, attention_mask, use_audio_in_video, audio_lengths, video_second_per_grid
    )
    return positions


def reorder_rope_deltas(thinker: nn.Module, index: torch.Tensor) -> None:
    """Make the TMRoPE offsets of a prefill follow its KV cache reordered by `index` (one entry per new row).

    Relies on the thinker model's `rope_deltas` (both families): the (batch, 1) offset between a token's TMRoPE
    position and its cache position, stored by the forward of a prompt and read by `generate` for every later
    token. Needed because the rollouts prefill each distinct prompt once and then generate its G completions from
    that cache.
    """
    thinker.model.rope_deltas = thinker.model.rope_deltas[index]


def init_fsdp_root(model: nn.Module) -> None:
    """Make `model` (the outermost FSDP2 unit) the root of its sharded units before any of them runs.

    Relies on `FSDPState._lazy_init` of torch.distributed.fsdp (private; reached through `fully_shard.state`): FSDP2
    makes the first unit to run forward the root, and sets up the other units from it. Needed because the rollouts
    call the towers and the input embeddings before any forward of `model`, which would make them roots of their own.
    """
    from torch.distributed.fsdp import fully_shard

    fully_shard.state(model)._lazy_init()
