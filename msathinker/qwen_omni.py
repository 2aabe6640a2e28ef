"""Every use of Qwen2.5-Omni internals of transformers (and of FSDP2's in torch) in one place.

The GRPO rollouts encode each prompt's media once and reuse the encoder outputs, prefill each distinct prompt once
and share its KV cache, and shard the thinker with FSDP2. For that they reach past the public API of the model in
five places, each a function below whose docstring names the internal and why we need it. Internals change without
notice between releases: tests/test_qwen_omni.py checks each one on the tiny checkpoint and fails when the installed
transformers or torch is not the release they were checked against (CHECKED_WITH). On an upgrade, re-check each
function here against the new source, run that test, then update CHECKED_WITH.
"""

from __future__ import annotations

import torch
from torch import nn

CHECKED_WITH = {"transformers": "5.24.0", "torch": "2.14.1"}
"""The releases these functions were checked against (tests/test_qwen_omni.py compares them with the installed)."""


def audio_token_counts(thinker: nn.Module, mel_frames: torch.Tensor) -> torch.Tensor:
    """Audio placeholder tokens of each clip (the audio tower's output rows), from its number of mel frames.

    Relies on `Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths` (private; the second of the lengths it
    returns), the formula the processor also uses to expand `<|AUDIO|>`. Needed to split the tower's output, one
    tensor for the whole batch, into one tensor per clip.
    """
    _, token_counts = thinker.model.audio_tower._get_feat_extract_output_lengths(mel_frames)
    return token_counts


def embed_with_media(
    thinker: nn.Module,
    input_ids: torch.Tensor,
    audio_features: torch.Tensor | None,
    video_features: torch.Tensor | None,
) -> torch.Tensor:
    """The token embeddings of `input_ids` with the encoder outputs in place of the media placeholders: what the
    thinker's forward builds from raw media, to be given as `inputs_embeds` with encoder outputs computed once.

    Relies on `Qwen2_5OmniThinkerModel.forward`'s placeholder scatter (`get_placeholder_mask` + `masked_scatter`):
    the rows of all clips of the batch, concatenated in batch order, fill the positions of `config.audio_token_index`
    / `config.video_token_index` in row-major order, the features cast to the embeddings' dtype.
    """
    embeds = thinker.get_input_embeddings()(input_ids)
    config = thinker.config
    if audio_features is not None:
        mask = (input_ids == config.audio_token_index)[..., None]
        embeds = embeds.masked_scatter(mask, audio_features.to(embeds.dtype))
    if video_features is not None:
        mask = (input_ids == config.video_token_index)[..., None]
        embeds = embeds.masked_scatter(mask, video_features.to(embeds.dtype))
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

    Relies on `Qwen2_5OmniThinkerModel.get_rope_index` (its positional arguments: input_ids, image_grid_thw,
    video_grid_thw, attention_mask, use_audio_in_video, audio_seqlens, second_per_grids; its first output) and on
    text after the prompt continuing at the prompt's largest position + 1. Needed to place completion tokens that
    run from a shared prompt's KV cache, outside the forward that would compute them.
    """
    positions, _ = thinker.model.get_rope_index(
        input_ids, None, video_grid_thw, attention_mask, use_audio_in_video, audio_lengths, video_second_per_grid
    )
    return positions


def reorder_rope_deltas(thinker: nn.Module, index: torch.Tensor) -> None:
    """Make the TMRoPE offsets of a prefill follow its KV cache reordered by `index` (one entry per new row).

    Relies on `Qwen2_5OmniThinkerModel.rope_deltas`: the (batch, 1) offset between a token's TMRoPE position and
    its cache position, stored by the forward of a prompt and read by `generate` for every later token. Needed
    because the rollouts prefill each distinct prompt once and then generate its G completions from that cache.
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
