"""Hint-GRPO: reward and hint plug-ins, encode-once equivalence, the training loop on the tiny checkpoint, resume,
and the bad inputs (G < 2, indivisible micro-batches, failing rewards, missing adapter)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import FormatReward, NoHint, PolarityHint, PolarityReward, Reward, RewardInput, ScoreReward
from data_modules import MSADataModule
from msathinker.dc_format import DCReasoning, parse_completion, render_completion
from msathinker.evaluation import GenerationOptions
from msathinker.grpo import group_advantages
from msathinker.grpo_options import GRPOOptions
from msathinker.hint_grpo import HintGRPOModule
from msathinker.hints import HintStrategy
from msathinker.policy import LoraOptions, PolicyOptions
from msathinker.rewards import compute_rewards
from msathinker.scales import SCALES

MOSEI = SCALES["mosei"]


def sample(text: str, label: float = -1.4) -> RewardInput:
    return RewardInput("v$_$1", text, parse_completion(text), label, MOSEI, hinted=False)


GOOD = render_completion(DCReasoning("negative", -1.0, "low voice.", "moderate."))


def test_default_rewards():
    s = sample(GOOD)
    assert FormatReward().score(s) == 1.0 and PolarityReward().score(s) == 1.0
    assert ScoreReward().score(s) == pytest.approx(1 - 0.4 / 1.0)
    assert ScoreReward().score(sample("no number")) == 0.0
    sims = RewardInput("v$_$1", GOOD.replace("-1", "-0.5"), parse_completion(GOOD.replace("-1", "-0.5")), -0.4,
                       SCALES["sims"], False)  # fmt: skip
    assert ScoreReward().score(sims) == pytest.approx(1 - 0.1 * 3)


class Flaky(Reward):
    name = "flaky"

    def score(self, s: RewardInput) -> float:
        if s.label > 0:
            raise RuntimeError("boom")
        return float("nan") if s.label == 0 else 2.0


def test_a_failing_reward_is_excluded_per_sample_and_counted():
    samples = [sample(GOOD, -1.0), sample(GOOD, 1.0), sample(GOOD, 0.0)]
    table, total, failures = compute_rewards([FormatReward(weight=0.5), Flaky()], samples)
    assert failures == {"flaky": 2}
    assert total.tolist() == [0.5 + 2.0, 0.5, 0.5]
    assert math.isnan(table[1, 1]) and math.isnan(table[2, 1])
    _, total, _ = compute_rewards([Flaky()], samples)
    assert math.isnan(total[1]) and math.isnan(total[2])
    advantages = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), 4, "group")
    assert advantages[1] == 0 and torch.isfinite(advantages).all()


def test_hint_triggers():
    correct = torch.tensor([[False, False], [True, False], [False, False]])
    std = torch.tensor([0.0, 0.5, 0.3])
    g = torch.Generator().manual_seed(0)
    assert PolarityHint().select(correct, std, g).tolist() == [True, False, True]
    assert PolarityHint(trigger="zero_std").select(correct, std, g).tolist() == [True, False, False]
    assert PolarityHint(trigger="always").select(correct, std, g).all()
    assert not NoHint().select(correct, std, g).any()
    picks = PolarityHint(trigger="fraction", fraction=0.5).select(torch.zeros(1000, 2, dtype=torch.bool),
                                                                   torch.zeros(1000), g)  # fmt: skip
    assert 400 < int(picks.sum()) < 600
    with pytest.raises(ValueError, match="unknown trigger"):
        PolarityHint(trigger="sometimes")


# --- the module on the tiny checkpoint -----------------------------------------------------------------------


def datamodule(tiny_model: str, tmp_path: Path, **kwargs) -> MSADataModule:
    defaults = dict(dataset="demo_mosi", processor_path=tiny_model, max_clips=8, batch_size=2, eval_batch_size=4,
                    media_cache_dir=str(tmp_path / "media"))  # fmt: skip
    return MSADataModule(**{**defaults, **kwargs})


def grpo_module(tiny_model: str, adapter: str | None = None, **grpo) -> HintGRPOModule:
    options = {"num_generations": 4, "max_completion_length": 12, **grpo}
    return HintGRPOModule(
        policy=PolicyOptions(model_path=tiny_model, adapter_path=adapter, lora=LoraOptions(r=4, alpha=8)),
        grpo=GRPOOptions(**options),
        hint=PolarityHint(trigger="always"),
        generation=GenerationOptions(max_new_tokens=6),
    )


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                    default_root_dir=str(tmp_path))  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_encode_once_matches_re_encoding(omni_model, tmp_path):
    from msathinker.rollout import Row, completion_logprobs, split_prompt_media, unpadded_prompts

    module = grpo_module(omni_model)
    module.configure_model()
    dm = datamodule(omni_model, tmp_path)
    dm.setup("validate")
    inputs = next(iter(dm.val_dataloader()))["inputs"]
    prompts = unpadded_prompts(inputs)
    completion = torch.tensor(module.processor.tokenizer("<think> hi </think><answer>1</answer>")["input_ids"])
    results = []
    for once in (True, False):
        media = split_prompt_media(module.model, inputs, once)
        rows = [Row(p, m, completion) for p, m in zip(prompts, media, strict=True) for _ in range(3)]
        logp, _mask, _ = completion_logprobs(module.model, rows, temperature=0.7, pad_id=0, use_audio_in_video=False)
        results.append(logp)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_shared_prompts_give_the_same_samples_logprobs_and_gradients(omni_model, tmp_path):
    from msathinker.rollout import Row, completion_logprobs, sample, split_prompt_media, unpadded_prompts

    module = HintGRPOModule(policy=PolicyOptions(model_path=omni_model, lora=LoraOptions(r=4, alpha=8, dropout=0.0)))
    module.configure_model()
    torch.manual_seed(0)
    for param in module.model.parameters():  # a non-zero adapter, so the gradient reaches the prompt's activations
        if param.requires_grad:
            param.data.normal_(0, 0.05)
    dm = datamodule(omni_model, tmp_path)
    dm.setup("validate")
    inputs = next(iter(dm.val_dataloader()))["inputs"]
    prompts, media = unpadded_prompts(inputs), split_prompt_media(module.model, inputs, True)
    hinted = torch.cat([prompts[1], torch.tensor([11, 12, 13])])  # a hinted row: same media, longer prompt
    tok = module.processor.tokenizer
    rows = [Row(p, m) for p, m in zip(prompts, media, strict=True) for _ in range(3)] + [Row(hinted, media[1])]
    torch.manual_seed(1)
    completions, _ = sample(module.model, rows, tok, max_new_tokens=8, temperature=1.0, top_p=1.0,
                            use_audio_in_video=False)  # fmt: skip
    for row, ids in zip(rows, completions, strict=True):
        row.completion_ids = ids[: 2 + len(row.prompt_ids) % 5]  # ragged lengths
    results = []
    for share in (False, True):
        module.model.zero_grad()
        logp, mask, _ = completion_logprobs(module.model, rows, temperature=0.7, pad_id=tok.pad_token_id,
                                            use_audio_in_video=False, share_prompts=share)  # fmt: skip
        (logp * mask).sum().backward()
        grads = [p.grad.clone() for p in module.model.parameters() if p.requires_grad]
        results.append((logp * mask, mask, grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1])
    for shared, full in zip(results[1][2], results[0][2], strict=True):  # fp32 summation order: ~1e-6 of the scale
        torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


def test_towers_run_once_per_step_and_hints_are_prompt(omni_model, tmp_path):
    module = grpo_module(omni_model, num_iterations=2, micro_batch_size=4)
    module.configure_model()
    thinker = module.model.get_base_model()
    calls = {"audio": 0, "video": 0}
    thinker.model.audio_tower.register_forward_hook(lambda *_: calls.__setitem__("audio", calls["audio"] + 1))
    thinker.model.visual.register_forward_hook(lambda *_: calls.__setitem__("video", calls["video"] + 1))
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, datamodule=datamodule(omni_model, tmp_path))
    assert calls == {"audio": 1, "video": 1}  # 1 training step of 2 prompts x 4 completions, 2 iterations
    assert module.counters == {"groups": 2, "hinted_groups": 2}
    rollout = module.last_rollout
    assert len(rollout.samples) == 8 and rollout.hinted.all() and all(s.hinted for s in rollout.samples)
    assert all(s.completion.startswith("<think>\n<discrimination> The overall sentiment is ") for s in rollout.samples)
    assert {"train/reward_before_hint", "train/frac_reward_zero_std_before_hint"} <= set(t.callback_metrics)


def test_prompt_placement_and_mix(tiny_model, tmp_path):
    module = grpo_module(tiny_model)
    module.hint = PolarityHint(trigger="always", placement="prompt", use="mix", num_unhinted=1)
    trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(tiny_model, tmp_path))
    rollout = module.last_rollout
    assert rollout.hinted.tolist() == [s.hinted for s in rollout.samples] == [False, True, True, True] * 2
    assert not any(s.completion.startswith("<think>\n<discrimination> The overall") for s in rollout.samples)


def test_reference_adapter_stays_frozen_and_kl_is_logged(tiny_model, tmp_path):
    from msathinker.sft import SFTModule

    sft = SFTModule(policy=PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8)))
    trainer(tmp_path, max_steps=1).fit(sft, datamodule=datamodule(tiny_model, tmp_path, targets="rules"))
    adapter = str(sft.save_adapter(tmp_path / "adapter"))
    module = grpo_module(tiny_model, adapter=adapter, beta=0.1)
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, datamodule=datamodule(tiny_model, tmp_path))
    assert module.reference_adapter
    frozen = [n for n, p in module.model.named_parameters() if ".ref." in n]
    assert frozen and not any(p.requires_grad for n, p in module.model.named_parameters() if ".ref." in n)
    assert "train/kl" in t.callback_metrics


def test_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root: Path, steps: int, ckpt_path: str | None = None):
        L.seed_everything(0)
        module = grpo_module(tiny_model)
        module.hint = PolarityHint(trigger="fraction", fraction=0.5)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
        t = trainer(root, max_steps=steps, callbacks=[checkpoint], enable_checkpointing=True)
        t.fit(module, datamodule=datamodule(tiny_model, tmp_path), ckpt_path=ckpt_path)
        weights = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        return weights, dict(module.counters), module.hint_reliance.state_dict()

    straight, counters, reliance = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, resumed_counters, resumed_reliance = run(tmp_path / "b", 3, "last")
    assert counters == resumed_counters == {"groups": 6, "hinted_groups": counters["hinted_groups"]}
    assert reliance == resumed_reliance and reliance["first_hinted"]  # the hint history is in the checkpoint
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


class AlwaysWithoutHintedPrompts(HintStrategy):
    """Chooses every group but does not say it gives hints (gives_hints stays False)."""

    def select(self, correct_polarity, reward_std, generator):
        return torch.ones(len(reward_std), dtype=torch.bool)


def test_bad_configurations(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        grpo_module(tiny_model, num_generations=1)
    module = grpo_module(tiny_model, micro_batch_size=3)
    with pytest.raises(ValueError, match=r"micro_batch_size 3 must divide the completions per step"):
        trainer(tmp_path).fit(module, datamodule=datamodule(tiny_model, tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json there"):
        grpo_module(tiny_model, adapter=str(tmp_path / "missing")).configure_model()
    module = grpo_module(tiny_model)
    module.hint = AlwaysWithoutHintedPrompts()
    with pytest.raises(ValueError, match=r"AlwaysWithoutHintedPrompts chose groups to hint .* gives_hints = True"):
        trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(tiny_model, tmp_path))
    with pytest.raises(ValueError, match="num_unhinted"):
        HintGRPOModule(
            policy=PolicyOptions(model_path=tiny_model),
            grpo=GRPOOptions(num_generations=4),
            hint=PolarityHint(use="mix", num_unhinted=4),
        )


class EveryOtherFails(Reward):
    name = "every_other"
    calls = 0

    def score(self, s: RewardInput) -> float:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("boom")
        return 1.0


def test_a_raising_reward_does_not_stop_training(tiny_model, tmp_path):
    module = grpo_module(tiny_model)
    module.rewards = [FormatReward(), EveryOtherFails()]
    t = trainer(tmp_path, max_steps=1)
    t.fit(module, datamodule=datamodule(tiny_model, tmp_path))
    assert t.callback_metrics["train/rewards/every_other/failures"] > 0
    assert t.callback_metrics["train/rewards/every_other/mean"] == 1.0


class LengthReward(Reward):
    name = "length"

    def score(self, s: RewardInput) -> float:
        return float(len(s.completion) % 7)


def test_dynamic_sampling_trains_on_groups_with_reward_variance(tiny_model, tmp_path):
    module = grpo_module(tiny_model, dynamic_sampling=True)
    module.rewards = [FormatReward(), LengthReward()]
    t = trainer(tmp_path, max_steps=2, max_epochs=2)
    t.fit(module, datamodule=datamodule(tiny_model, tmp_path))
    assert t.global_step == 2
    assert "train/dynamic_sampling_buffer" in t.callback_metrics
    assert t.callback_metrics["train/frac_reward_zero_std"] < 1.0


def test_rollout_table_is_logged_to_mlflow(tiny_model, tmp_path):
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from callbacks import RolloutTable

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="rollouts", tracking_uri=uri)
    t = trainer(tmp_path, max_steps=2, logger=logger, callbacks=[RolloutTable(every_n_steps=1, max_rows=3)])
    t.fit(grpo_module(tiny_model), datamodule=datamodule(tiny_model, tmp_path))
    client = mlflow.MlflowClient(uri)
    tables = [a.path for a in client.list_artifacts(logger.run_id, "rollouts")]
    assert tables == ["rollouts/step000001.json", "rollouts/step000002.json"]
    table = client.load_table(logger.experiment_id, run_ids=[logger.run_id], artifact_file=tables[0])
    assert len(table) == 3 and {"id", "completion", "hinted", "forced_prefix", "reward", "format"} <= set(table.columns)
    for hinted, prefix, completion in zip(table["hinted"], table["forced_prefix"], table["completion"], strict=True):
        assert hinted and prefix.startswith("<think>\n<discrimination> The overall sentiment is ")  # trigger always
        assert completion.startswith(prefix)
