"""Qwen3-Omni-MoE as student and teacher: the tiny checkpoint's layouts and ids, the data with its own processor,
LoRA targets, the router loss and expert load, 4-bit loading, evaluation, the audio integrity guard, and the bad
inputs (a processor or an adapter of the other family). The stages shared with Qwen2.5-Omni are also parametrized
over both families in their own test files (the `omni_model` fixture)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from data_modules import MSADataModule
from msathinker.evaluation import GenerationOptions
from msathinker.modeling import CheckpointError, load_thinker
from msathinker.policy import QWEN3_EXPERT_LORA_PARAMETERS, LoraOptions, PolicyOptions, build_policy
from msathinker.qwen_omni import family_of
from msathinker.sft import SFTModule

RELEASED_IDS = {  # Qwen3-Omni-30B-A3B's config.json and tokenizer
    "<|audio_pad|>": 151675, "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|audio_start|>": 151669,
    "<|audio_end|>": 151670, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|im_end|>": 151645,
}  # fmt: skip


@pytest.fixture(scope="module")
def qwen3() -> str:
    from msathinker.assets import resolve_model_path

    return resolve_model_path("tiny-qwen3")


def datamodule(model: str, tmp_path: Path, **kwargs) -> MSADataModule:
    defaults = dict(dataset="demo_mosi", processor_path=model, targets="rules", max_clips=8, batch_size=2,
                    eval_batch_size=4, media_cache_dir=str(tmp_path / "media"))  # fmt: skip
    return MSADataModule(**{**defaults, **kwargs})


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                    default_root_dir=str(tmp_path))  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_tiny_checkpoint_has_the_released_ids_and_both_layouts_load(tmp_path):
    import transformers

    from msathinker.demo.tiny import write_tiny_checkpoint

    thinker, processor = load_thinker("tiny-qwen3-qwen")  # the real Qwen vocabulary
    assert type(thinker).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor"
    assert {t: processor.tokenizer.convert_tokens_to_ids(t) for t in RELEASED_IDS} == RELEASED_IDS
    assert thinker.config.audio_token_id == RELEASED_IDS["<|audio_pad|>"]
    assert thinker.config.text_config.num_experts == 4 and thinker.config.text_config.num_experts_per_tok == 2
    full = write_tiny_checkpoint(tmp_path / "full", family="qwen3_omni", layout="full", tokenizer="small")
    assert transformers.AutoConfig.from_pretrained(full).model_type == "qwen3_omni_moe"
    from_full, _ = load_thinker(str(full))  # only the thinker's weights are read; talker and code2wav are skipped
    assert type(from_full).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"


@pytest.mark.parametrize("use_audio_in_video", [False, True], ids=["separate_audio", "audio_in_video"])
def test_batches_hold_as_many_placeholders_as_the_encoders_give_rows(qwen3, tmp_path, use_audio_in_video):
    from msathinker.qwen_omni import audio_token_counts
    from msathinker.rollout import audio_placeholder_counts

    thinker, _ = load_thinker(qwen3)
    dm = datamodule(qwen3, tmp_path, use_audio_in_video=use_audio_in_video)
    dm.setup("fit")
    inputs = next(iter(dm.train_dataloader()))["inputs"]
    assert bool(inputs.get("use_audio_in_video", False)) == use_audio_in_video
    counts = audio_placeholder_counts(thinker, inputs)
    assert counts.tolist() == audio_token_counts(thinker, inputs["feature_attention_mask"].sum(-1)).tolist()
    video_tokens = (inputs["input_ids"] == thinker.config.video_token_id).sum(-1)
    assert video_tokens.tolist() == (inputs["video_grid_thw"].prod(-1) // 4).tolist()  # 2x2 patches per token
    with torch.no_grad():
        assert torch.isfinite(thinker(**inputs).loss)


def test_audio_guard_names_the_clip_whose_placeholders_do_not_match_its_audio(qwen3, tmp_path):
    from msathinker.rollout import MediaMismatchError, audio_placeholder_counts

    thinker, _ = load_thinker(qwen3)
    dm = datamodule(qwen3, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    inputs, ids = batch["inputs"], batch["meta"]["id"]
    shorter = {**inputs, "feature_attention_mask": inputs["feature_attention_mask"].clone()}
    shorter["feature_attention_mask"][1, shorter["feature_attention_mask"][1].sum() - 200 :] = 0
    with pytest.raises(
        MediaMismatchError, match=rf"{re.escape(ids[1])}: \d+ audio placeholder tokens in the prompt, but"
    ):
        audio_placeholder_counts(thinker, shorter, ids)
    silent = {k: v for k, v in inputs.items() if k not in ("input_features", "feature_attention_mask")}
    with pytest.raises(MediaMismatchError, match="holds audio placeholders but the batch has no audio features"):
        audio_placeholder_counts(thinker, silent, ids)
    audio = thinker.config.audio_token_id
    hinted = [row[row != audio] for row in inputs["input_ids"]]  # a hinted prompt that lost its audio
    with pytest.raises(
        MediaMismatchError, match=rf"{re.escape(ids[0])}: the hinted prompt holds 0 audio placeholder tokens"
    ):
        audio_placeholder_counts(thinker, inputs, ids, hinted)


def test_default_lora_targets_the_language_models_attention_and_experts_on_request(qwen3):
    model, _ = build_policy(PolicyOptions(model_path=qwen3, lora=LoraOptions(r=4)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model.layers." in n and ".self_attn." in n for n in trainable)
    lora = LoraOptions(r=4, dropout=0.0, target_parameters=QWEN3_EXPERT_LORA_PARAMETERS)
    model, _ = build_policy(PolicyOptions(model_path=qwen3, lora=lora))
    experts = [n for n, p in model.named_parameters() if p.requires_grad and ".mlp.experts." in n]
    assert len(experts) == 2 * 2 * 2  # 2 layers x (gate_up_proj, down_proj) x (A, B)
    with pytest.raises(ValueError, match=r"target_modules 'nothing\\\\.here' matches no module"):
        build_policy(PolicyOptions(model_path=qwen3, lora=LoraOptions(target_modules=r"nothing\.here")))
    with pytest.raises(ValueError, match=r"needs policy.lora.dropout 0 \(it is 0.05\)"):
        build_policy(PolicyOptions(model_path=qwen3, lora=LoraOptions(target_parameters=QWEN3_EXPERT_LORA_PARAMETERS)))


def test_load_balancing_loss_is_transformers_and_the_expert_load_its_shares():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

    from msathinker.moe import expert_load, load_balancing_loss

    torch.manual_seed(0)
    logits = tuple(torch.randn(12, 4) for _ in range(3))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    for m in (None, mask):
        ours = load_balancing_loss(logits, 2, m)
        torch.testing.assert_close(ours, load_balancing_loss_func(logits, 4, 2, m).float())
    # by hand: every token routed to experts 0 and 1 with probabilities (0.5, 0.5, 0, 0): f = (1, 1, 0, 0), P = (.5,
    # .5, 0, 0), L = 4 * (0.5 + 0.5) = 4; load (0.5, 0.5, 0, 0)
    skewed = (torch.tensor([[10.0, 10.0, -1e4, -1e4]] * 3),)
    torch.testing.assert_close(load_balancing_loss(skewed, 2, None), torch.tensor(4.0))
    torch.testing.assert_close(expert_load(skewed, 2, None), torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    load = expert_load(logits, 2, mask)
    assert load.shape == (3, 4) and torch.allclose(load.sum(-1), torch.ones(3))


def test_sft_logs_the_expert_load_and_adds_the_router_loss_on_request(qwen3, tmp_path):
    from msathinker.moe import MoEOptions

    policy = PolicyOptions(model_path=qwen3, lora=LoraOptions(r=4, alpha=8))
    for moe in (MoEOptions(), MoEOptions(router_aux_loss=True, router_aux_loss_coef=0.5)):
        module = SFTModule(policy=policy, moe=moe, generation=GenerationOptions(max_new_tokens=4))
        t = trainer(tmp_path, max_steps=1)
        t.fit(module, datamodule=datamodule(qwen3, tmp_path))
        assert {"train/moe/expert_load_max", "train/moe/router_aux_loss"} <= set(t.callback_metrics)
        assert 1.0 <= float(t.callback_metrics["train/moe/expert_load_max"]) <= 4.0
    dense = SFTModule(policy=PolicyOptions(model_path="tiny", lora=LoraOptions(r=4)), moe=MoEOptions(True))
    with pytest.raises(ValueError, match=r"moe\.router_aux_loss is on, but tiny is not a mixture-of-experts model"):
        dense.configure_model()


def test_four_bit_leaves_routers_and_towers_unquantized_and_trains(qwen3, tmp_path):
    import bitsandbytes as bnb

    policy = PolicyOptions(model_path=qwen3, lora=LoraOptions(r=4, alpha=8), quantization="nf4")
    module = SFTModule(policy=policy, generation=GenerationOptions(max_new_tokens=4))
    trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(qwen3, tmp_path))
    thinker = module.model.get_base_model()
    quantized = [n for n, m in thinker.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(".language_model.layers." in n and ".self_attn." in n for n in quantized)
    router = thinker.model.language_model.layers[0].mlp.gate.weight
    assert router.dtype == torch.float32 and not isinstance(router, bnb.nn.Params4bit)


def test_evaluation_reports_the_mmsa_metrics(qwen3, tmp_path):
    module = SFTModule(policy=PolicyOptions(model_path=qwen3), generation=GenerationOptions(max_new_tokens=6))
    (metrics,) = trainer(tmp_path).test(module, datamodule=datamodule(qwen3, tmp_path, targets=None, max_clips=4))
    assert {"test/demo_mosi/MAE", "test/demo_mosi/format_rate", "test/demo_mosi/Mult_acc_7"} <= set(metrics)


def swap_processor(source: str, target: str, out: Path) -> Path:
    """A copy of checkpoint `target` with the processor and tokenizer files of checkpoint `source`."""
    shutil.copytree(target, out)
    for f in Path(source).iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json", "msathinker_tiny.json"):
            shutil.copy(f, out / f.name)
    for f in out.iterdir():
        if not (Path(source) / f.name).exists() and f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    return out


@pytest.mark.parametrize("model, processor", [("tiny-qwen3", "tiny"), ("tiny", "tiny-qwen3")])
def test_a_checkpoint_with_the_other_familys_processor_is_an_error(model, processor, tmp_path):
    from msathinker.assets import resolve_model_path

    mixed = swap_processor(resolve_model_path(processor), resolve_model_path(model), tmp_path / "mixed")
    family = "qwen3_omni" if model == "tiny-qwen3" else "qwen2_5_omni"
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(mixed))}: the processor is \w+ \(\w+\), but the model is {family}"
    ):
        load_thinker(str(mixed))


def test_data_from_the_other_familys_processor_is_an_error(qwen3, tmp_path):
    module = SFTModule(policy=PolicyOptions(model_path=qwen3, lora=LoraOptions(r=4)))
    with pytest.raises(
        ValueError, match=r"data.init_args.processor_path 'tiny': the processor is Qwen2_5OmniProcessor"
    ):
        trainer(tmp_path).fit(module, datamodule=datamodule("tiny", tmp_path))


@pytest.mark.parametrize("trained_on, loaded_onto", [("tiny", "tiny-qwen3"), ("tiny-qwen3", "tiny")])
def test_an_adapter_of_the_other_family_is_an_error(trained_on, loaded_onto, tmp_path):
    model, _ = build_policy(PolicyOptions(model_path=trained_on, lora=LoraOptions(r=4)))
    model.save_pretrained(tmp_path / "adapter")
    target = "qwen3_omni" if loaded_onto == "tiny-qwen3" else "qwen2_5_omni"
    with pytest.raises(
        CheckpointError, match=rf"adapter {re.escape(str(tmp_path / 'adapter'))} was trained on .* model is {target}"
    ):
        build_policy(PolicyOptions(model_path=loaded_onto, adapter_path=str(tmp_path / "adapter")))


def test_an_adapter_whose_weights_do_not_fit_is_an_error(tmp_path):
    """An adapter whose base is not on this machine (no family to compare) is still checked weight by weight."""
    import json

    model, _ = build_policy(PolicyOptions(model_path="tiny", lora=LoraOptions(r=4)))
    model.save_pretrained(tmp_path / "adapter")
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "nowhere/base"}))
    with pytest.raises(CheckpointError, match="does not fit Qwen3OmniMoeThinkerForConditionalGeneration"):
        build_policy(PolicyOptions(model_path="tiny-qwen3", adapter_path=str(tmp_path / "adapter")))
    assert family_of(load_thinker("tiny")[0]) == "qwen2_5_omni"
