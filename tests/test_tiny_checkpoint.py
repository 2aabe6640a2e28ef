"""The tiny checkpoint is a real HF checkpoint: it loads with from_pretrained and runs the model end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from msathinker.demo.tiny import OMNI_SPECIAL_TOKENS


def test_tiny_checkpoint_loads_with_plain_transformers(tmp_path):
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from msathinker.demo.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(tmp_path / "ckpt")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "generation_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    processor = AutoProcessor.from_pretrained(out)
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out)
    assert type(processor).__name__ == "Qwen2_5OmniProcessor"
    assert processor.feature_extractor.feature_size == model.config.audio_config.num_mel_bins == 128
    tok = processor.tokenizer
    assert model.config.audio_token_index == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert model.config.video_token_index == tok.convert_tokens_to_ids("<|VIDEO|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_bos|>")
    assert tok.eos_token == "<|im_end|>" and model.config.text_config.vocab_size >= len(tok)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], add_generation_prompt=True, tokenize=False
    )
    expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert prompt == expected + "<|im_start|>assistant\n"


def test_qwen_vocabulary_has_the_real_ids(tmp_path):
    from msathinker.demo.tiny import build_tokenizer

    tok = build_tokenizer("qwen")
    assert [tok.convert_tokens_to_ids(t) for t in OMNI_SPECIAL_TOKENS] == list(range(151643, 151665))
    assert tok("user")["input_ids"] == [872]
    assert tok.audio_token == "<|AUDIO|>" and tok.vision_bos_token == "<|vision_bos|>"


def test_full_layout_loads_the_thinker_only(tmp_path):
    """The released layout: thinker, talker and token2wav weights (and the speaker file) in one checkpoint. The
    thinker loads alone with every tensor equal to what was saved, also in 4 bit."""
    from bitsandbytes.nn import Linear4bit
    from safetensors.torch import load_file
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

    from msathinker.demo.tiny import write_tiny_checkpoint
    from msathinker.modeling import load_thinker

    full = write_tiny_checkpoint(tmp_path / "full", layout="full", seed=3)
    saved = load_file(full / "model.safetensors")
    assert {key.split(".")[0] for key in saved} == {"thinker", "talker", "token2wav"}
    assert Qwen2_5OmniForConditionalGeneration.from_pretrained(full).has_talker  # a real full checkpoint
    thinker, processor = load_thinker(str(full))
    assert isinstance(thinker, Qwen2_5OmniThinkerForConditionalGeneration)
    assert processor.tokenizer.padding_side == "left"
    thinker.save_pretrained(tmp_path / "thinker")  # saved back under the checkpoint's names (thinker.*)
    loaded = load_file(tmp_path / "thinker" / "model.safetensors")
    expected = {key: value for key, value in saved.items() if key.startswith("thinker.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    quantized, _ = load_thinker(str(full), quantization="nf4")
    assert isinstance(quantized.model.language_model.layers[0].mlp.up_proj, Linear4bit)


def _edit_weights(checkpoint: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    edit(weights)
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})


def _rename(weights):
    weights["model.layers.0.mlp.up_projection.weight"] = weights.pop("model.layers.0.mlp.up_proj.weight")


def _add(weights):
    weights["model.extra_head.weight"] = torch.zeros(3)


def _reshape(weights):
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"][:-1]


LAYER_0_UP = "model.language_model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_rename, [f"weights missing from the checkpoint (they would be random): {LAYER_0_UP}",
                   "the model has no place for: model.language_model.layers.0.mlp.up_projection.weight"]),
        (_add, ["checkpoint weights the model has no place for: model.language_model.extra_head.weight"]),
        (_reshape, [f"weights of another shape (checkpoint vs model): {LAYER_0_UP} (127, 64) vs (128, 64)"]),
    ],
    ids=["renamed", "unexpected", "wrong_shape"],
)  # fmt: skip
def test_weights_that_do_not_fit_are_an_error_naming_the_keys(tmp_path, tiny_model, edit, expected):
    from msathinker.modeling import CheckpointError, load_thinker

    checkpoint = Path(shutil.copytree(tiny_model, tmp_path / "ckpt"))
    _edit_weights(checkpoint, edit)
    with pytest.raises(CheckpointError) as info:
        load_thinker(str(checkpoint))
    message = str(info.value)
    assert message.startswith(f"{checkpoint}: the checkpoint does not fit Qwen2_5OmniThinkerForConditionalGeneration")
    assert all(fragment in message for fragment in expected), message


def test_a_missing_shard_is_an_error_naming_the_file_and_its_keys(tmp_path, tiny_model):
    from msathinker.modeling import CheckpointError, load_thinker

    model, _ = load_thinker(tiny_model)
    checkpoint = tmp_path / "sharded"
    model.save_pretrained(checkpoint, max_shard_size="300KB")
    weight_map = json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[-1]
    (checkpoint / shard).unlink()
    with pytest.raises(CheckpointError) as info:
        load_thinker(str(checkpoint))
    message = str(info.value)
    assert message.startswith(f"{checkpoint}: shard file(s) {shard} listed in model.safetensors.index.json are missing")
    assert all(key in message for key, file in weight_map.items() if file == shard)


def test_missing_model_path_is_a_clear_error():
    from msathinker.modeling import load_thinker

    with pytest.raises(FileNotFoundError, match=r"model path './nowhere': no config.json there"):
        load_thinker("./nowhere")


def test_forward_backward_generate_on_a_demo_batch(tiny_model, tmp_path):
    """The integration the later stages rely on: DataModule batch -> loss, gradients, generate."""
    from data_modules import MSADataModule
    from msathinker.modeling import load_thinker

    dm = MSADataModule(
        dataset="demo_mosi",
        processor_path=tiny_model,
        targets="rules",
        max_clips=4,
        batch_size=2,
        media_cache_dir=str(tmp_path / "m"),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model, processor = load_thinker(tiny_model)
    out = model(**batch["inputs"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for tower in (model.model.audio_tower, model.model.visual, model.model.language_model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    prompt = next(iter(dm.val_dataloader()))["inputs"]
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    new_tokens = generated[:, prompt["input_ids"].shape[1] :]
    assert new_tokens.shape[0] == 2 and new_tokens.shape[1] >= 1
    assert all(isinstance(t, str) for t in processor.batch_decode(new_tokens, skip_special_tokens=True))


def test_a_first_use_on_any_rank_of_a_distributed_run_builds_a_whole_checkpoint(tmp_path):
    """transformers writes model weights on rank 0 only when torch.distributed is initialized; a tiny checkpoint
    first used by rank 1 (here the only rank to ask) must still get its config and weights."""
    import os
    import subprocess
    import sys

    code = (
        "import os, torch.distributed as dist\n"
        f"store = dist.FileStore({str(tmp_path / 'store')!r}, 2)\n"
        "dist.init_process_group('gloo', store=store, rank=int(os.environ['RANK']), world_size=2)\n"
        "from msathinker.demo.assets import tiny_checkpoint\n"
        "if dist.get_rank() == 1:\n"
        "    print(tiny_checkpoint('tiny'))\n"
        "dist.barrier()\n"
    )
    env = {**os.environ, "MSATHINKER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs[1][1][-3000:]
    built = Path(outputs[1][0].strip().splitlines()[-1])
    assert (built / "config.json").is_file() and (built / "model.safetensors").is_file()
