"""SFTModule end to end on the tiny checkpoint: fit, adapter round trip with plain peft, resume, NaN stop, 4-bit,
cross-domain test names, MLflow contents, and the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from data_modules import MSADataModule
from msathinker.evaluation import GenerationOptions
from msathinker.policy import LoraOptions, PolicyOptions
from msathinker.sft import NonFiniteLossError, SFTModule

REPO = Path(__file__).resolve().parents[1]


def datamodule(tiny_model: str, tmp_path: Path, **kwargs) -> MSADataModule:
    defaults = dict(
        dataset="demo_mosi", processor_path=tiny_model, targets="rules", max_clips=8, batch_size=4, eval_batch_size=4,
        media_cache_dir=str(tmp_path / "media"),
    )  # fmt: skip
    return MSADataModule(**{**defaults, **kwargs})


def module(tiny_model: str, **kwargs) -> SFTModule:
    policy = PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8, dropout=0.1))
    return SFTModule(**{"policy": policy, "generation": GenerationOptions(max_new_tokens=12), **kwargs})


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=str(tmp_path),
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_adapter_loads_with_plain_peft_and_reproduces_logits(omni_model, tmp_path):
    import transformers
    from peft import PeftModel

    dm = datamodule(omni_model, tmp_path)
    sft = module(omni_model)
    trainer(tmp_path).fit(sft, datamodule=dm)
    adapter = sft.save_adapter(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    base = getattr(transformers, type(sft.model.get_base_model()).__name__).from_pretrained(omni_model)
    plain = PeftModel.from_pretrained(base, adapter).eval()
    batch = next(iter(dm.val_dataloader()))["inputs"]
    sft.model.eval()
    with torch.no_grad():
        ours, theirs = sft.model(**batch).logits, plain(**batch).logits
        with sft.model.disable_adapter():
            untrained = sft.model(**batch).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, untrained, atol=1e-4), "training changed nothing"


def test_target_token_loss_and_gradients_match_transformers_full_logits_loss(tiny_model, tmp_path):
    """sft_loss (LM head on the target positions only) against the thinker's own loss from the logits of every
    position (transformers' ForCausalLMLoss), on an audio + video batch under LoRA with a trained LM head and
    gradient checkpointing."""
    from msathinker.policy import build_policy
    from msathinker.sft import sft_loss

    torch.manual_seed(0)
    lora = LoraOptions(r=4, alpha=8, dropout=0.0, modules_to_save=("lm_head",))
    model, _ = build_policy(PolicyOptions(model_path=tiny_model, lora=lora, gradient_checkpointing=True))
    model.train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # B starts at 0, which leaves A without a gradient
    dm = datamodule(tiny_model, tmp_path, batch_size=3)
    dm.setup("fit")
    inputs = next(iter(dm.train_dataloader()))["inputs"]
    assert {"input_features", "pixel_values_videos"} <= inputs.keys()
    targets = int((inputs["labels"][:, 1:] != -100).sum())
    assert 0 < targets < inputs["labels"][:, 1:].numel() / 2
    num_items = torch.tensor(targets / 2.0)  # as on one of two ranks
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}

    def loss_and_gradients(compute) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.detach(), {name: param.grad.clone() for name, param in trainable.items()}

    ours, our_grads = loss_and_gradients(lambda: sft_loss(model, inputs, num_items)[0])
    theirs, their_grads = loss_and_gradients(lambda: model(**inputs, num_items_in_batch=num_items).loss)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert any("lora_A" in name for name in trainable) and any("lm_head" in name for name in trainable)
    for name, grad in their_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_only_assistant_tokens_train(tiny_model, tmp_path):
    dm = datamodule(tiny_model, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    labels = batch["inputs"]["labels"]
    assert (labels != -100).sum() < (batch["inputs"]["attention_mask"] == 1).sum() / 2


def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_model, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root: Path, max_steps: int, ckpt_path: str | None = None) -> dict[str, torch.Tensor]:
        L.seed_everything(0)
        sft = module(tiny_model)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
        t = trainer(root, max_steps=max_steps, callbacks=[checkpoint], enable_checkpointing=True, limit_val_batches=0)
        t.fit(sft, datamodule=datamodule(tiny_model, tmp_path, batch_size=2), ckpt_path=ckpt_path)
        return {n: p.detach().clone() for n, p in sft.model.named_parameters() if p.requires_grad}

    straight = run(tmp_path / "a", max_steps=5)
    run(tmp_path / "b", max_steps=2)  # "killed" after 2 of the epoch's 4 steps
    resumed = run(tmp_path / "b", max_steps=5, ckpt_path="last")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    sft = module(tiny_model)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    t = trainer(tmp_path, max_steps=4, callbacks=[checkpoint], enable_checkpointing=True, limit_val_batches=0)
    real_step = SFTModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx) if self.global_step < 2 else None
        if loss is None:
            self.model.base_model.model.lm_head.weight.data.fill_(float("nan"))
            return real_step(self, batch, batch_idx)
        return loss

    monkeypatch.setattr(SFTModule, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="at global step 2"):
        t.fit(sft, datamodule=datamodule(tiny_model, tmp_path, batch_size=2))
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_four_bit_base_keeps_the_rest_in_bf16_and_trains_with_checkpointing(tiny_model, tmp_path):
    """QLoRA as the 1-GPU recipes run it (nf4, dtype bfloat16, bf16-mixed, gradient checkpointing): nothing
    unquantized is upcast to fp32 (peft's prepare_model_for_kbit_training would), the LoRA weights are fp32, and a
    step changes them. A validation pass comes first, as the sanity check does: on a CPU with AVX512-BF16
    bitsandbytes would repack the weights for inference there and fail the next training step."""
    import bitsandbytes as bnb

    policy = PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8), quantization="nf4",
                           dtype="bfloat16", gradient_checkpointing=True)  # fmt: skip
    sft = SFTModule(policy=policy, generation=GenerationOptions(max_new_tokens=4))
    sft.configure_model()
    params = dict(sft.model.named_parameters())
    lora = {name: p.detach().clone() for name, p in params.items() if "lora_" in name}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    for part in (".audio_tower.", ".visual.", "embed_tokens", "lm_head", ".norm."):
        dtypes = {p.dtype for name, p in params.items() if part in name}
        assert dtypes == {torch.bfloat16}, f"{part}: {dtypes}"
    four_bit = [name for name, m in sft.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(".language_model.layers." in name for name in four_bit)  # towers, head stay full

    trainer(tmp_path, max_steps=1, num_sanity_val_steps=1, precision="bf16-mixed").fit(
        sft, datamodule=datamodule(tiny_model, tmp_path, batch_size=2)
    )
    assert sft.model.is_gradient_checkpointing
    after = dict(sft.model.named_parameters())
    changed = [name for name, before in lora.items() if not torch.equal(after[name].detach(), before)]
    assert any("lora_B" in name for name in changed) and all(after[name].dtype == torch.float32 for name in lora)


def test_cross_domain_test_metric_names(omni_model, tmp_path):
    dm = datamodule(omni_model, tmp_path, dataset="demo_sims", prompt_scale="mosei")
    sft = module(omni_model, prediction_scale="mosei")
    results = trainer(tmp_path, limit_test_batches=1).test(sft, datamodule=dm)[0]
    assert {"test/demo_sims/Mult_acc_2", "test/demo_sims/MAE", "test/demo_sims/format_rate"} <= results.keys()
    assert results["test/demo_sims/parse_failure_rate"] == 1.0  # an untrained model writes no number


def test_the_data_connection_names_what_is_missing(tiny_model, tmp_path):
    sft = module(tiny_model)
    with pytest.raises(ValueError, match=r"datamodule=\.\.\."):
        trainer(tmp_path).fit(sft, train_dataloaders=torch.utils.data.DataLoader([0]))
    with pytest.raises(TypeError, match=r"use data_modules\.MSADataModule"):
        trainer(tmp_path).fit(sft, datamodule=L.LightningDataModule())
    with pytest.raises(ValueError, match=r"set data\.init_args\.targets"):
        trainer(tmp_path).fit(sft, datamodule=datamodule(tiny_model, tmp_path, targets=None))
    assert sft.model is None  # each failed before the model was built


def test_missing_model_path_is_a_clear_error(tmp_path):
    sft = SFTModule(policy=PolicyOptions(model_path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match=r"no config\.json there"):
        sft.configure_model()


def test_quantization_without_lora_is_rejected():
    with pytest.raises(ValueError, match="needs LoRA"):
        SFTModule(policy=PolicyOptions(model_path="tiny", lora=None, quantization="nf4"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msathinker", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cli_rejects_a_mistyped_key(tmp_path):
    result = cli("fit", "--config", str(REPO / "experiments/quickstart/sft.yaml"),
                 "--model.init_args.policy.lroa.r", "4", cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "lroa" in result.stderr


def test_cli_fit_logs_params_metrics_and_completions_to_mlflow(tiny_model, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "msathinker", "fit", "--config", str(REPO / "experiments/quickstart/sft.yaml"),
         "--model.init_args.policy.model_path", tiny_model, "--trainer.max_steps", "2",
         "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
         "--model.init_args.generation.max_new_tokens", "8", "--data.init_args.max_clips", "8",
         "--data.init_args.batch_size", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
         "--trainer.callbacks.dirpath", str(tmp_path / "run/checkpoints")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["quickstart"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.model.init_args.policy.lora.r"] == "16"
    assert "metrics.train/loss" in runs.columns and "metrics.val/demo_mosi/MAE" in runs.columns
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "completions", "adapter"} <= artifacts
    tables = [a.path for a in client.list_artifacts(run.run_id, "completions")]
    assert tables and tables[0].startswith("completions/val_demo_mosi_step")
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_export_merged_reproduces_the_adapter_logits(tiny_model, tmp_path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    dm = datamodule(tiny_model, tmp_path)
    sft = module(tiny_model)
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(sft, datamodule=dm)
    adapter = sft.save_adapter(tmp_path / "adapter")
    result = cli("export-merged", str(adapter), str(tmp_path / "merged"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    batch = next(iter(dm.val_dataloader()))["inputs"]
    sft.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, sft.model(**batch).logits, rtol=1e-4, atol=1e-4)


def test_full_fine_tune_freezes_the_towers_and_checkpointing_trains(tiny_model, tmp_path):
    policy = PolicyOptions(model_path=tiny_model, lora=None, gradient_checkpointing=True)
    sft = SFTModule(policy=policy, generation=GenerationOptions(max_new_tokens=4))
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(sft, datamodule=datamodule(tiny_model, tmp_path))
    params = dict(sft.model.named_parameters())
    assert not any(p.requires_grad for n, p in params.items() if ".audio_tower." in n or ".visual." in n)
    assert all(p.requires_grad for n, p in params.items() if ".language_model." in n)
    assert sft.model.is_gradient_checkpointing
