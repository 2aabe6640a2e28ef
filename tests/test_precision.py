"""Precision that learns: trainable weights (LoRA, modules_to_save) and the optimizer state stay fp32 beside a bf16
base under the recipes' precision (bf16-mixed), and a setting whose optimizer step would round away is refused."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from data_modules import MSADataModule
from msathinker.evaluation import GenerationOptions
from msathinker.policy import LoraOptions, PolicyOptions, build_policy
from msathinker.sft import SFTModule


def lora_a(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_A" in n}


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory) -> Path:
    """An adapter like an SFT stage's output: B nonzero (so A gets a gradient at the first step), A of magnitude
    1e-2 as in a 7B model's LoRA."""
    model, _ = build_policy(PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8, dropout=0.0)))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 1e-2
    directory = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(directory)
    return directory


def fit_one_step(tiny_model: str, adapter: Path, tmp_path: Path, precision: str, **policy) -> SFTModule:
    options = {"model_path": tiny_model, "adapter_path": str(adapter), "dtype": "bfloat16",
               "lora": LoraOptions(r=4, alpha=8, dropout=0.0), **policy}  # fmt: skip
    module = SFTModule(
        policy=PolicyOptions(**options),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0),
        generation=GenerationOptions(max_new_tokens=4),
    )
    data = MSADataModule(dataset="demo_mosi", processor_path=tiny_model, targets="rules", max_clips=2, batch_size=2,
                         media_cache_dir=str(tmp_path / "media"))  # fmt: skip
    module.configure_model()
    module.before = lora_a(module.model)
    L.Trainer(
        accelerator="cpu", max_steps=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    ).fit(module, datamodule=data)  # fmt: skip
    return module


def test_one_adamw_step_at_lr_1e_6_moves_a_lora_weight_of_magnitude_1e_2(tiny_model, trained_adapter, tmp_path):
    module = fit_one_step(tiny_model, trained_adapter, tmp_path, "bf16-mixed")
    trainable = {n: p for n, p in module.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for n, p in module.model.named_parameters() if "layers.0.self_attn.q_proj.base_layer" in n} == {
        torch.bfloat16
    }
    optimizer_state = module.trainer.optimizers[0].state
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer_state.values())
    after = lora_a(module.model)
    for name, before in module.before.items():
        assert before.abs().median() == pytest.approx(6.7e-3, rel=0.5)  # |N(0, 1e-2)|
        moved = (after[name] - before).abs()
        assert 5e-7 < moved.max() <= 1.1e-6, name  # AdamW's first step moves a weight by about lr


def test_bf16_true_with_an_lr_below_the_weights_resolution_is_refused(tiny_model, trained_adapter, tmp_path):
    with pytest.raises(ValueError, match=r"lora_A.*bfloat16.*rounds away.*trainer\.precision bf16-mixed"):
        fit_one_step(tiny_model, trained_adapter, tmp_path, "bf16-true")


def test_modules_to_save_train_in_fp32_and_need_autocast(tiny_model, tmp_path):
    lora = LoraOptions(r=4, alpha=8, dropout=0.0, modules_to_save=("lm_head",))
    model, _ = build_policy(PolicyOptions(model_path=tiny_model, dtype="bfloat16", lora=lora))
    head = {n: p.dtype for n, p in model.named_parameters() if "lm_head" in n}
    assert head == {
        "base_model.model.lm_head.original_module.weight": torch.bfloat16,
        "base_model.model.lm_head.modules_to_save.default.weight": torch.float32,
    }
    module = SFTModule(policy=PolicyOptions(model_path=tiny_model, dtype="bfloat16", lora=lora))
    data = MSADataModule(dataset="demo_mosi", processor_path=tiny_model, targets="rules", max_clips=2, batch_size=2,
                         media_cache_dir=str(tmp_path / "media"))  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_steps=1, precision="32-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=r"modules_to_save \['lm_head'\].*needs autocast.*bf16-mixed"):
        trainer.fit(module, datamodule=data)
