"""The Qwen-Omni internals of msathinker/qwen_omni.py (and FSDP2's) still exist and behave as the rollouts assume,
checked on the tiny checkpoint of each family (Qwen2.5-Omni and Qwen3-Omni-MoE); and the installed transformers and
torch are the releases they were checked against. When one of these fails after an upgrade, re-check the function it
names against the new source before trusting a GRPO run: the rollouts would otherwise sample or score from wrong
embeddings or positions without an error."""

from __future__ import annotations

import pytest
import torch
from packaging.version import Version
from torch import nn

from msathinker.qwen_omni import (
    CHECKED_WITH,
    audio_token_counts,
    embed_with_audio,
    encode_videos,
    family_of,
    init_fsdp_root,
    reorder_rope_deltas,
    rope_positions,
    video_encoder_outputs,
)

RECHECK = (
    "re-check msathinker/qwen_omni.py against the installed source: {what}; then run tests/test_qwen_omni.py and "
    "update CHECKED_WITH"
)


@pytest.fixture(scope="module", params=["tiny", "tiny-qwen3"], ids=["qwen2_5_omni", "qwen3_omni"])
def omni(request, tmp_path_factory):
    """A tiny thinker of each family, its processor and a collated evaluation batch of 4 clips (audio and video)."""
    from data_modules import MSADataModule
    from msathinker.modeling import load_thinker

    thinker, processor = load_thinker(request.param)
    thinker.eval()
    data = MSADataModule(dataset="demo_mosi", processor_path=request.param, max_clips=8, batch_size=2,
                         eval_batch_size=4, media_cache_dir=str(tmp_path_factory.mktemp("media")))  # fmt: skip
    data.setup("validate")
    return thinker, processor, next(iter(data.val_dataloader()))["inputs"]


def encoded_audio(thinker, inputs) -> torch.Tensor:
    """The batch's audio encoder outputs, concatenated over the clips."""
    with torch.no_grad():
        return thinker.model.get_audio_features(
            inputs["input_features"], inputs["feature_attention_mask"], return_dict=True
        ).last_hidden_state


def test_the_installed_releases_are_the_checked_ones():
    import transformers

    installed = {"transformers": transformers.__version__, "torch": str(torch.__version__)}
    changed = {name: v for name, v in installed.items() if Version(v).release != Version(CHECKED_WITH[name]).release}
    assert not changed, (
        f"installed {changed}, but msathinker/qwen_omni.py was checked against {CHECKED_WITH}: "
        + RECHECK.format(
            what="transformers' audio length formulas (Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths, "
            "modeling_qwen3_omni_moe._get_feat_extract_output_lengths), the audio scatter and mm_encoder_outputs of "
            "both thinker models' forward (with Qwen3-Omni's deepstack features), get_rope_index and rope_deltas "
            "(and their use in generate); torch's fully_shard.state(...)._lazy_init"
        )
    )


def test_audio_token_counts_are_the_placeholders_and_the_tower_rows(omni):
    thinker, _, inputs = omni
    counts = audio_token_counts(thinker, inputs["feature_attention_mask"].sum(-1))
    placeholders = (inputs["input_ids"] == thinker.config.audio_token_id).sum(-1)
    audio = encoded_audio(thinker, inputs)
    assert counts.tolist() == placeholders.tolist() and int(counts.sum()) == audio.shape[0], RECHECK.format(
        what=f"audio_token_counts ({family_of(thinker)}'s _get_feat_extract_output_lengths)"
    )


def test_precomputed_encoder_outputs_give_the_forwards_logits_on_raw_media(omni):
    """The encode-once inputs (audio scattered into the embeddings, the video outputs with Qwen3-Omni's deepstack
    features as mm_encoder_outputs) give exactly the logits of the forward on raw media."""
    thinker, _, inputs = omni
    with torch.no_grad():
        embeds = embed_with_audio(thinker, inputs["input_ids"], encoded_audio(thinker, inputs))
        videos = encode_videos(thinker, inputs["pixel_values_videos"], inputs["video_grid_thw"])
    assert (videos[0].deepstack is not None) == (family_of(thinker) == "qwen3_omni")
    common = {k: inputs[k] for k in ("input_ids", "attention_mask", "feature_attention_mask", "video_grid_thw")}
    common["video_second_per_grid"] = inputs["video_second_per_grid"]
    with torch.no_grad():
        own = thinker.model(
            **common, input_features=inputs["input_features"], pixel_values_videos=inputs["pixel_values_videos"]
        ).last_hidden_state
        ours = thinker.model(
            **common, inputs_embeds=embeds, mm_encoder_outputs=video_encoder_outputs(videos)
        ).last_hidden_state
    assert torch.equal(thinker.lm_head(ours), thinker.lm_head(own)), RECHECK.format(
        what="embed_with_audio, encode_videos and video_encoder_outputs (the audio scatter and mm_encoder_outputs "
        f"of {type(thinker.model).__name__}.forward)"
    )


def test_without_the_deepstack_features_the_qwen3_logits_differ(omni):
    """The deepstack features matter: dropping them (Qwen2.5-Omni's path on a Qwen3-Omni thinker) changes the
    logits, so the parity above is not vacuous."""
    from dataclasses import replace

    thinker, _, inputs = omni
    if family_of(thinker) != "qwen3_omni":
        pytest.skip("Qwen2.5-Omni has no deepstack features")
    with torch.no_grad():
        videos = encode_videos(thinker, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        zeroed = [replace(v, deepstack=tuple(torch.zeros_like(d) for d in v.deepstack)) for v in videos]
        common = {k: inputs[k] for k in ("input_ids", "attention_mask", "feature_attention_mask", "video_grid_thw",
                                         "video_second_per_grid")}  # fmt: skip
        full, without = (
            thinker.model(**common, mm_encoder_outputs=video_encoder_outputs(v)).last_hidden_state
            for v in (videos, zeroed)
        )
    assert not torch.allclose(full, without)


def test_rope_positions_are_the_forwards_and_rope_deltas_continue_them(omni):
    thinker, _, inputs = omni
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    frames = inputs["feature_attention_mask"].sum(-1)
    positions = rope_positions(
        thinker, ids, mask, inputs["video_grid_thw"], False, frames, inputs["video_second_per_grid"]
    )
    assert positions.shape == (3, *ids.shape)
    with torch.no_grad():
        thinker.model.rope_deltas = None
        own = thinker.model(**inputs).last_hidden_state
        deltas = thinker.model.rope_deltas
        given = thinker.model(**inputs, position_ids=positions).last_hidden_state
    assert torch.equal(given, own), RECHECK.format(what="rope_positions (Qwen2_5OmniThinkerModel.get_rope_index)")
    # rollout._shared_prompt_hidden places completion tokens from the prompt's largest position + 1; generate from
    # the token's count of real tokens + rope_deltas: the two agree
    start = positions.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1
    continues = deltas.shape == (len(ids), 1) and (start - mask.sum(-1)).tolist() == deltas[:, 0].tolist()
    assert continues, RECHECK.format(what="reorder_rope_deltas (Qwen2_5OmniThinkerModel.rope_deltas)")


def test_generating_from_a_reordered_prefill_is_generating_from_scratch(omni):
    """rollout.sample prefills each distinct prompt once, reorders the KV cache to one row per completion and
    generates from it with the rope_deltas reordered alike (reorder_rope_deltas): the logits are those of a plain
    generate of the same rows."""
    from msathinker.generation import generate, generation_config
    from msathinker.rollout import Row, media_token_ids, model_kwargs, split_prompt_media, unpadded_prompts

    thinker, processor, inputs = omni
    inputs = {k: v[:2] if k != "pixel_values_videos" else v for k, v in inputs.items()}
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"][: int(inputs["video_grid_thw"].prod(-1).sum())]
    positions = rope_positions(thinker, inputs["input_ids"], inputs["attention_mask"], inputs["video_grid_thw"], False,
                               inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])  # fmt: skip
    deltas = positions.amax(dim=(0, 2)) + 1 - inputs["attention_mask"].sum(-1)
    assert deltas[0] != deltas[1], "the test needs two prompts whose rope_deltas differ"
    order = torch.tensor([0, 1, 0, 1])  # interleaved: a cache reordered without its rope_deltas misplaces rows 1, 2
    tok, prompts = processor.tokenizer, unpadded_prompts(inputs)
    config = generation_config(tok, max_new_tokens=4, suppress_tokens=media_token_ids(tok))
    config.return_dict_in_generate = config.output_logits = True

    encoded_media = split_prompt_media(thinker, inputs, encode_once=True)
    kwargs, _ = model_kwargs(thinker, [Row(p, m) for p, m in zip(prompts, encoded_media, strict=True)], 0, False)
    prefix = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "inputs_embeds") else v for k, v in kwargs.items()}
    with torch.no_grad():
        cache = thinker.model(**prefix, use_cache=True).cache
        cache.reorder_cache(order)
        reorder_rope_deltas(thinker, order)
        ours = generate(thinker, config, input_ids=kwargs["input_ids"][order],
                        attention_mask=kwargs["attention_mask"][order], cache=cache)  # fmt: skip

    raw_media = split_prompt_media(thinker, inputs, encode_once=False)
    rows = [Row(prompts[p], raw_media[p]) for p in order.tolist()]
    with torch.no_grad():
        thinker.model.rope_deltas = None
        plain = generate(thinker, config, **model_kwargs(thinker, rows, 0, False)[0])
    recheck = RECHECK.format(what="reorder_rope_deltas (Qwen2_5OmniThinkerModel.rope_deltas and its use in generate)")
    assert torch.equal(ours.sequences, plain.sequences), recheck
    ours_logits, plain_logits = torch.stack(ours.logits), torch.stack(plain.logits)
    torch.testing.assert_close(ours_logits, plain_logits, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m}; {recheck}")


def test_init_fsdp_root_lets_a_unit_run_before_the_root(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))

        def sharded() -> nn.Module:
            model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
            for layer in model:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            return model

        x = torch.ones(1, 4)
        first_unit = sharded()
        first_unit[0](x)  # the unit becomes a root of its own: the model's forward then fails
        with pytest.raises(RuntimeError, match="forward through the root module first"):
            first_unit(x)
        model = sharded()
        init_fsdp_root(model)
        model[0](x)
        model(x).sum().backward()
        assert fully_shard.state(model)._is_root and fully_shard.state(model[0])._is_root is False, RECHECK.format(
            what="init_fsdp_root (torch's FSDPState._lazy_init)"
        )
    finally:
        dist.destroy_process_group()
