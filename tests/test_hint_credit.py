"""Hint credit and DC span credit: the off-policy term of forced tokens (LUFFY), the split baseline, span advantages
against hand-computed values; the token spans on the real tokenizer; hint reliance; and the module wiring on the
tiny checkpoints, with the bad configurations the options name."""

from __future__ import annotations

import math

import pytest
import torch

from callbacks import FormatReward, PolarityHint, PolarityReward, ScoreReward
from msathinker.credit import credit_forced_prefix, discrimination_token_count, forced_mask, span_masks
from msathinker.dc_format import DCReasoning, discrimination_end, render_completion
from msathinker.grpo import (
    ADVANTAGE_EPS,
    decoupled_advantages,
    group_advantages,
    policy_loss,
    shaped_offpolicy_weight,
    token_advantages,
)
from msathinker.grpo_options import GRPOOptions
from msathinker.hint_grpo import HintGRPOModule
from msathinker.hint_reliance import HintReliance
from msathinker.policy import PolicyOptions
from msathinker.rollout import Row
from tests.test_hint_grpo import datamodule, grpo_module, trainer

# --- the off-policy term of forced tokens (hint credit "policy") ------------------------------------------------


def test_forced_tokens_get_luffys_shaped_term_by_hand():
    """Two tokens, advantage 2, gamma 0.1, bnpo (token mean). Token 0 was forced, with policy probability 0.4:
    L0 = -2 * 0.4 / (0.4 + 0.1) = -1.6 and dL0/dlogp0 = -2 * 0.1 * 0.4 / 0.5^2 = -0.32. Token 1 was sampled: ratio 1,
    L1 = -2, dL1/dlogp1 = -2. The loss is (L0 + L1) / 2 = -1.8, the gradients halved."""
    logp = torch.log(torch.tensor([[0.4, 0.1]], dtype=torch.float64)).requires_grad_()
    forced = torch.tensor([[True, False]])
    loss, metrics = policy_loss(logp, None, None, torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 2),
                                loss_type="bnpo", forced=forced, gamma=0.1)  # fmt: skip
    loss.backward()
    assert loss.item() == pytest.approx(-1.8)
    assert logp.grad[0].tolist() == pytest.approx([-0.16, -1.0])
    assert metrics["forced_token_prob"].item() == metrics["forced_token_min_prob"].item() == pytest.approx(0.4)
    assert shaped_offpolicy_weight(torch.log(torch.tensor([0.4, 1.0])), 0.1).tolist() == pytest.approx([0.8, 1 / 1.1])
    with pytest.raises(ValueError, match="gamma must be > 0"):
        shaped_offpolicy_weight(torch.zeros(1), 0.0)


def test_forced_tokens_are_not_clipped_and_sampled_ones_are():
    """With an old policy (num_iterations > 1) the sampled token's ratio is clipped at 1 + 0.2; the forced one has
    no ratio: its term is -A f(p) whatever the old log-prob."""
    logp = torch.log(torch.tensor([[0.9, 0.9]], dtype=torch.float64))
    old = torch.log(torch.tensor([[0.3, 0.3]], dtype=torch.float64))
    loss, _ = policy_loss(logp, old, None, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2),
                          loss_type="bnpo", forced=torch.tensor([[True, False]]))  # fmt: skip
    assert loss.item() == pytest.approx((-0.9 / 1.0 - 1.2) / 2)


def test_per_token_advantages_reach_only_their_tokens():
    logp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0, 0.0]], dtype=torch.float64)
    loss, _ = policy_loss(logp, None, None, advantages, torch.ones(1, 3), loss_type="bnpo")
    loss.backward()
    assert loss.item() == pytest.approx(1 / 3) and logp.grad[0].tolist() == pytest.approx([-1 / 3, 2 / 3, 0.0])
    with pytest.raises(ValueError, match=r"advantages must be \(B,\) = \(1,\) or \(B, T\)"):
        policy_loss(logp, None, None, torch.zeros(1, 2), torch.ones(1, 3), loss_type="bnpo")


# --- the split baseline ------------------------------------------------------------------------------------------


def test_split_baseline_by_hand():
    """One group of 4: two unhinted (rewards 1, 0) and two hinted (3, 1). Each side against its own mean and
    (n-1) std: unhinted 0.5 and sqrt(0.5), hinted 2 and sqrt(2)."""
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    split = torch.tensor([False, False, True, True])
    expected = [0.5 / (math.sqrt(0.5) + ADVANTAGE_EPS), -0.5 / (math.sqrt(0.5) + ADVANTAGE_EPS),
                1 / (math.sqrt(2) + ADVANTAGE_EPS), -1 / (math.sqrt(2) + ADVANTAGE_EPS)]  # fmt: skip
    assert group_advantages(rewards, 4, "group", split).tolist() == pytest.approx(expected)
    assert group_advantages(rewards, 4, "none", split).tolist() == pytest.approx([0.5, -0.5, 1.0, -1.0])
    batch_std = torch.std(rewards).item()  # one std over the batch
    assert group_advantages(rewards, 4, "batch", split).tolist() == pytest.approx(
        [a / (batch_std + ADVANTAGE_EPS) for a in (0.5, -0.5, 1.0, -1.0)]
    )
    unsplit = torch.zeros(4, dtype=torch.bool)  # all on one side: the plain group baseline
    assert group_advantages(rewards, 4, "group", unsplit).tolist() == pytest.approx(
        group_advantages(rewards, 4, "group").tolist()
    )
    lonely = torch.tensor([False, True, True, True])  # one unhinted completion: no baseline, advantage 0
    assert group_advantages(rewards, 4, "group", lonely)[0] == 0


# --- DC span credit ----------------------------------------------------------------------------------------------


def test_span_credit_on_a_hand_built_group():
    """A group of two completions, rewards format / polarity / score. Format is 1 for both (std 0: advantage 0);
    polarity 1 and 0: +-0.5 / (sqrt(0.5) + 1e-4); score 0.2 and 0.6: -+0.2 / (sqrt(0.08) + 1e-4). Completion 0 has
    its </discrimination> at token 2: tokens 0-1 get the polarity advantage (times its weight 2), tokens 2-3 the
    score's (times 0.5), all four the format's. Completion 1 has no </discrimination>: every reward on every token."""
    per_reward = torch.tensor([[1.0, 1.0, 0.2], [1.0, 0.0, 0.6]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    polarity = 0.5 / (math.sqrt(0.5) + ADVANTAGE_EPS)
    score = 0.2 / (math.sqrt(0.08) + ADVANTAGE_EPS)
    each = decoupled_advantages(per_reward, weights, 2)
    assert each.flatten().tolist() == pytest.approx([0.0, 2 * polarity, -0.5 * score, 0.0, -2 * polarity, 0.5 * score])
    spans = ["all", "discrimination", "calibration"]
    masks = span_masks(spans, [2, None], 4)
    assert masks[0].tolist() == [[True] * 4, [True, True, False, False], [False, False, True, True]]
    assert masks[1].all()
    per_token = token_advantages(each, masks)
    assert per_token[0].tolist() == pytest.approx([2 * polarity] * 2 + [-0.5 * score] * 2)
    assert per_token[1].tolist() == pytest.approx([-2 * polarity + 0.5 * score] * 4)
    one = decoupled_advantages(per_reward[:, 2:], torch.ones(1, dtype=torch.float64), 2)  # one reward, span "all"
    whole = token_advantages(one, span_masks(["all"], [2, None], 3))
    assert whole.flatten().tolist() == pytest.approx(
        group_advantages(per_reward[:, 2], 2).repeat_interleave(3).tolist()
    )


def test_discrimination_end_and_its_token_count_on_the_real_tokenizer(omni_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(omni_model)
    text = render_completion(DCReasoning("negative", -1.2, "low voice, red face.", "strong words."))
    end = discrimination_end(text)
    assert text[:end].endswith("</discrimination>")
    assert discrimination_end(" cues. Polarity: neutral < /Discrimination >\n<calibration>") is not None  # hinted
    assert discrimination_end("<think> no closing tag") is None
    assert discrimination_end("</discrimination> </discrimination>") is None
    ids = torch.tensor(tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"])
    count = discrimination_token_count(tok, ids)
    assert tok.decode(ids[:count]).endswith("</discrimination>")
    assert "</discrimination>" not in tok.decode(ids[: count - 1])
    assert discrimination_token_count(tok, ids[:5]) is None


# --- hint credit "policy" rows -------------------------------------------------------------------------------------


def test_forced_prefix_becomes_the_start_of_an_unhinted_completion():
    row = Row(torch.tensor([1, 2, 3, 9, 8]), media=None, completion_ids=torch.tensor([5, 6]), truncated=True)
    credited = credit_forced_prefix(row, torch.tensor([1, 2, 3]))
    assert credited.prompt_ids.tolist() == [1, 2, 3] and credited.completion_ids.tolist() == [9, 8, 5, 6]
    assert credited.forced == 2 and credited.truncated
    assert forced_mask([credited, Row(torch.tensor([1]), None, torch.tensor([4]))], 4).tolist() == [
        [True, True, False, False],
        [False] * 4,
    ]
    with pytest.raises(ValueError, match="does not extend the prompt"):
        credit_forced_prefix(row, torch.tensor([1, 2, 4]))


def test_hinted_prefix_prompts_extend_the_plain_prompt(omni_model, tmp_path):
    """The collator's hinted prompt is the plain prompt's ids followed by the prefix's, for both families' tokenizers
    (so hint credit "policy" can move the prefix into the completion)."""
    dm = datamodule(omni_model, tmp_path)
    dm.setup("fit")
    dm.connect(PolarityHint(trigger="always", credit="policy"))
    batch = next(iter(dm.train_dataloader()))
    tok = dm.collator.processor.tokenizer
    for plain, mask, hinted, prefix in zip(batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"],
                                           batch["hinted"]["input_ids"], batch["hinted"]["assistant_prefix"],
                                           strict=True):  # fmt: skip
        row = credit_forced_prefix(Row(hinted, None, torch.tensor([], dtype=torch.long)), plain[mask.bool()])
        assert tok.decode(row.completion_ids) == prefix


# --- hint reliance -----------------------------------------------------------------------------------------------


def test_hint_reliance_counts_clips_hinted_earlier_and_solved_since():
    reliance = HintReliance()
    wrong, right = torch.zeros(4, dtype=torch.bool), torch.tensor([True, True, True, False])
    reliance.update(0, ["a", "b"], torch.stack([wrong, wrong]), torch.tensor([True, True]))
    assert reliance.metrics() == {"clips_hinted": 2.0, "clips_resampled": 0.0}
    reliance.update(0, ["a"], wrong[None], torch.tensor([False]))  # the same step: not "since"
    reliance.update(3, ["a", "c"], torch.stack([right, wrong]), torch.tensor([False, True]))
    assert reliance.metrics() == {"clips_hinted": 3.0, "clips_resampled": 1.0, "solved_without_hint": 1.0,
                                  "unhinted_accuracy": 0.75}  # fmt: skip
    other = HintReliance()  # another process, which hinted a and b later
    other.first_hinted.update(a=2, b=4)
    other.update(5, ["a", "b"], torch.stack([wrong, right]), torch.tensor([False, False]))
    merged = HintReliance.merged([reliance.state_dict(), other.state_dict()])
    assert merged.first_hinted == {"a": 0, "b": 0, "c": 3} and merged.latest["a"] == (5, 0.0)
    assert merged.metrics()["solved_without_hint"] == 0.5


# --- the module --------------------------------------------------------------------------------------------------


def test_policy_credit_trains_forced_tokens_under_the_unhinted_prompt(omni_model, tmp_path):
    module = grpo_module(omni_model)
    module.hint = PolarityHint(trigger="always", use="mix", num_unhinted=2, credit="policy", baseline="split")
    t = trainer(tmp_path, max_steps=1, limit_val_batches=1, val_check_interval=1)
    t.fit(module, datamodule=datamodule(omni_model, tmp_path))
    rollout = module.last_rollout
    plain = [rollout.rows[p * 4].prompt_ids for p in range(2)]
    for i, (row, sample) in enumerate(zip(rollout.rows, rollout.samples, strict=True)):
        assert torch.equal(row.prompt_ids, plain[i // 4])  # every completion of a group under the plain prompt
        assert (row.forced > 0) == bool(rollout.hinted[i]) == (i % 4 >= 2)
        assert sample.completion.startswith(rollout.prefixes[i])
        if row.forced:
            assert rollout.prefixes[i].startswith("<think>\n<discrimination> The overall sentiment is ")
    assert (
        0
        < float(t.callback_metrics["train/forced_token_min_prob"])
        <= float(t.callback_metrics["train/forced_token_prob"])
        < 1
    )
    assert t.callback_metrics["val/hint_reliance/clips_hinted"] == 2  # both clips of the step, logged at validation
    assert t.callback_metrics["val/hint_reliance/clips_resampled"] == 0
    slices = {key.split("/")[2] for key in t.callback_metrics if key.endswith("/polarity_acc") and key.count("/") == 3}
    assert slices and slices <= {"positive", "negative", "neutral", "sarcastic"}  # the demo's annotation values


def test_span_credit_runs_a_step(tiny_dc, tmp_path):
    module = grpo_module(tiny_dc, span_credit=True, max_completion_length=48)
    module.rewards = [FormatReward(), PolarityReward(), ScoreReward()]
    t = trainer(tmp_path, max_steps=1)
    t.fit(module, datamodule=datamodule(tiny_dc, tmp_path))
    assert math.isfinite(float(t.callback_metrics["train/loss"]))


def test_bad_credit_configurations(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"placement 'prompt' forces none .* use placement 'prefix'"):
        PolarityHint(placement="prompt", credit="policy")
    with pytest.raises(ValueError, match=r"baseline 'split' .* use 'replace' .* use 'mix'"):
        PolarityHint(use="replace", baseline="split")
    with pytest.raises(ValueError, match=r"each side needs at least 2: set hint.num_unhinted in \[2, 2\]"):
        HintGRPOModule(policy=PolicyOptions(model_path=tiny_model), grpo=GRPOOptions(num_generations=4),
                       hint=PolarityHint(use="mix", num_unhinted=1, baseline="split"))  # fmt: skip
    with pytest.raises(ValueError, match="shaping_gamma must be > 0"):
        PolarityHint(credit="policy", shaping_gamma=0.0)
    module = grpo_module(tiny_model, span_credit=True)
    with pytest.raises(ValueError, match=r"span_credit .* output_format 'plain' has none"):
        plain = datamodule(tiny_model, tmp_path, output_format="plain")
        trainer(tmp_path, max_steps=1).fit(module, datamodule=plain)
