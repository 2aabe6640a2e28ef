"""Dynamic sampling's buffer: GRPO groups whose rewards differ, kept across steps until a full batch is collected.

Each group remembers the training step whose rollout sampled it, so how stale a group gets before it is trained on
(in optimizer steps of the policy since its completions were sampled) is bounded (`max_staleness`) and logged. The
buffer is part of the checkpoint as plain tensors (`state_dict`), so a resumed run trains on the same groups as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from msathinker.qwen_omni import VideoEncoding
from msathinker.rollout import PromptMedia, Row
from msathinker.rollouts import Completions


@dataclass
class BufferedGroup:
    step: int
    """The training step whose rollout sampled the group."""
    completions: Completions
    """Its G completions with their prompts and rewards."""


class GroupBuffer:
    """Groups of G completions in the order they were sampled; `take` hands out the oldest first."""

    def __init__(self, max_staleness: int | None):
        self.max_staleness = max_staleness
        self.groups: list[BufferedGroup] = []

    def __len__(self) -> int:
        return len(self.groups)

    def add_varied(self, step: int, completions: Completions, std: torch.Tensor, size: int) -> int:
        """Add the groups (of `size` completions each, sharing their clip's PromptMedia) whose reward std is > 0,
        sampled at `step`; then drop the groups sampled more than max_staleness steps before it. Returns how many
        were dropped."""
        for g in range(len(completions) // size):
            if torch.nan_to_num(std[g], nan=0.0) > 0:
                self.groups.append(BufferedGroup(step, completions.group(g, size)))
        if self.max_staleness is None:
            return 0
        kept = [g for g in self.groups if step - g.step <= self.max_staleness]
        dropped, self.groups = len(self.groups) - len(kept), kept
        return dropped

    def take(self, count: int, step: int) -> tuple[Completions, torch.Tensor]:
        """The `count` oldest groups (removed from the buffer), joined, and each one's staleness."""
        groups, self.groups = self.groups[:count], self.groups[count:]
        staleness = torch.tensor([float(step - g.step) for g in groups])
        return Completions.cat([g.completions for g in groups]), staleness

    def state_dict(self) -> list[dict]:
        """The buffer as nested dicts and lists of tensors (what torch.load reads with weights_only). A group's
        rows share one PromptMedia object (its clip's), saved once: the rollouts group rows into prompts by that
        object, so sharing it again on load keeps the shared-prompt passes, and their numbers, as they were."""
        return [
            {
                "step": g.step,
                "rewards": g.completions.rewards,
                "per_reward": g.completions.per_reward,
                "hinted": g.completions.hinted,
                "media": asdict(g.completions.rows[0].media),
                "rows": [
                    {
                        "prompt_ids": r.prompt_ids,
                        "completion_ids": r.completion_ids,
                        "truncated": r.truncated,
                        "forced": r.forced,
                    }
                    for r in g.completions.rows
                ],
            }
            for g in self.groups
        ]

    def load_state_dict(self, state: list[dict]) -> None:
        self.groups = []
        for g in state:
            media = _media(g["media"])
            rows = [Row(r["prompt_ids"], media, r["completion_ids"], r["truncated"], r["forced"]) for r in g["rows"]]
            completions = Completions(rows, g["rewards"], g["per_reward"], g["hinted"])
            self.groups.append(BufferedGroup(g["step"], completions))

    def load_rank_state(self, states: list[list[dict]], rank: int, world_size: int) -> None:
        """Load this process's buffer from the checkpoint's list of every process's (empty: an empty buffer)."""
        if states and len(states) != world_size:
            raise ValueError(
                f"the checkpoint holds the dynamic-sampling buffers of {len(states)} processes, this run has "
                f"{world_size}: resume with as many processes"
            )
        self.load_state_dict(states[rank] if states else [])


def _media(state: dict) -> PromptMedia:
    media = dict(state)
    if media["video"] is not None:
        video = media["video"]
        media["video"] = VideoEncoding(video["features"], tuple(video["deepstack"]) if video["deepstack"] else None)
    return PromptMedia(**media)
