"""Dynamic sampling's group buffer: staleness bound, oldest-first order, and the checkpoint round trip; and a
Hint-GRPO run with dynamic sampling that resumes from a checkpoint bit-exactly."""

from __future__ import annotations

import io

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from msathinker.group_buffer import GroupBuffer
from msathinker.qwen_omni import VideoEncoding
from msathinker.rollout import PromptMedia, Row
from msathinker.rollouts import Completions


def group(step: int, size: int = 2) -> Completions:
    video = VideoEncoding(torch.full((3, 4), float(step)), (torch.ones(3, 4), torch.zeros(3, 4)))
    media = PromptMedia(torch.ones(5, 4), video, torch.tensor([2, 2, 2]), 100, torch.tensor(1.0), None, None)
    rows = [Row(torch.tensor([1, 2, step]), media, torch.tensor([7, g]), g == 1, forced=g) for g in range(size)]
    rewards = torch.tensor([float(step), step + 1.0], dtype=torch.float64)
    per_reward = torch.stack([rewards, rewards / 2], dim=1)
    return Completions(rows, rewards, per_reward, torch.tensor([False, True]))


def test_groups_without_reward_variance_are_left_out_and_stale_ones_dropped():
    buffer = GroupBuffer(max_staleness=1)
    for step in range(3):
        both = Completions.cat([group(step), group(step)])
        std = torch.tensor([1.0, 0.0 if step else float("nan")])  # the second group of each step has no variance
        dropped = buffer.add_varied(step, both, std, size=2)
        assert dropped == (1 if step == 2 else 0)  # at step 2, the group of step 0 is 2 steps old
    taken, staleness = buffer.take(1, step=2)
    assert [int(r.prompt_ids[-1]) for r in taken.rows] == [1, 1] and staleness.tolist() == [1.0]
    assert taken.rewards.tolist() == [1.0, 2.0] and taken.per_reward[:, 1].tolist() == [0.5, 1.0]
    assert taken.hinted.tolist() == [False, True] and len(buffer) == 1


def test_the_buffer_round_trips_through_a_weights_only_checkpoint():
    buffer = GroupBuffer(max_staleness=None)
    for step in range(2):
        buffer.add_varied(step, group(step), torch.tensor([1.0]), size=2)
    file = io.BytesIO()
    torch.save({"group_buffers": [buffer.state_dict()]}, file)
    file.seek(0)
    restored = GroupBuffer(max_staleness=None)
    restored.load_rank_state(torch.load(file, weights_only=True)["group_buffers"], rank=0, world_size=1)
    assert [g.step for g in restored.groups] == [0, 1]
    for ours, theirs in zip(restored.groups, buffer.groups, strict=True):
        ours, theirs = ours.completions, theirs.completions
        for name in ("rewards", "per_reward", "hinted"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0)
        for a, b in zip(ours.rows, theirs.rows, strict=True):
            assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.completion_ids, b.completion_ids)
            assert (a.truncated, a.forced) == (b.truncated, b.forced)
            assert torch.equal(a.media.video.features, b.media.video.features)
            assert all(torch.equal(x, y) for x, y in zip(a.media.video.deepstack, b.media.video.deepstack, strict=True))
        assert all(r.media is ours.rows[0].media for r in ours.rows)  # one clip's media, shared as when sampled
    try:
        restored.load_rank_state([[], []], rank=0, world_size=1)
    except ValueError as exc:
        assert "buffers of 2 processes, this run has 1: resume with as many processes" in str(exc)
    else:
        raise AssertionError("a checkpoint of another process count must be refused")


def test_dynamic_sampling_resumes_bit_exactly_with_a_buffer_in_the_checkpoint(tiny_dc, tmp_path):
    """tiny-dc writes the DC format about half of the time, so groups differ in reward variance; with seed 1 the
    first update leaves one group in the buffer, which the checkpoint must carry."""
    from callbacks import PolarityHint
    from tests.test_hint_grpo import datamodule, grpo_module, trainer

    def run(root, steps: int, ckpt_path: str | None = None):
        L.seed_everything(1)
        module = grpo_module(tiny_dc, dynamic_sampling=True, max_completion_length=48)
        module.hint = PolarityHint(trigger="fraction", fraction=0.5)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
        t = trainer(root, max_steps=steps, max_epochs=6, callbacks=[checkpoint], enable_checkpointing=True)
        t.fit(module, datamodule=datamodule(tiny_dc, tmp_path, dataset="demo_sims"), ckpt_path=ckpt_path)
        assert t.global_step == steps
        weights = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        return weights, module

    straight, _ = run(tmp_path / "a", 3)
    _, first = run(tmp_path / "b", 1)
    saved = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=False)["hint_grpo"]["group_buffers"]
    assert len(saved) == 1 and len(saved[0]) == len(first.group_buffer) > 0  # the checkpoint holds a buffer
    resumed, _ = run(tmp_path / "b", 3, "last")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
