"""Hint reliance: does the policy come to find, without a hint, the verdicts it was once given?

Every training rollout samples each clip's G completions without a hint first. `HintReliance` remembers the clips
a hint was given to and, for each, the share of its unhinted completions that had the label's polarity the next
time it was sampled (a later epoch). Logged at each validation (docs/method.md, Hint diagnostics):

- `hint_reliance/clips_hinted`: clips hinted so far;
- `hint_reliance/clips_resampled`: of those, the ones sampled again since they were first hinted;
- `hint_reliance/solved_without_hint`: of those, the share whose latest unhinted completions had the label's
  polarity in more than half of the G;
- `hint_reliance/unhinted_accuracy`: their mean share of unhinted completions with the label's polarity.

These are training-rollout statistics (sampled at the GRPO temperature), not a held-out evaluation.
"""

from __future__ import annotations

import torch


class HintReliance:
    """Per clip id: the step it was first hinted, and (step, unhinted accuracy) of its latest rollout since."""

    def __init__(self) -> None:
        self.first_hinted: dict[str, int] = {}
        self.latest: dict[str, tuple[int, float]] = {}

    def update(self, step: int, clip_ids: list[str], correct: torch.Tensor, hinted: torch.Tensor) -> None:
        """One rollout: `correct` (P, G) bool, which unhinted completions had the label's polarity; `hinted` (P,)
        which groups the strategy hinted at this step."""
        for clip_id, row, was_hinted in zip(clip_ids, correct, hinted.tolist(), strict=True):
            if clip_id in self.first_hinted and self.first_hinted[clip_id] < step:
                self.latest[clip_id] = (step, float(row.float().mean()))
            if was_hinted:
                self.first_hinted.setdefault(clip_id, step)

    def metrics(self) -> dict[str, float]:
        shares = [share for _, share in self.latest.values()]
        result = {"clips_hinted": float(len(self.first_hinted)), "clips_resampled": float(len(shares))}
        if shares:
            result["solved_without_hint"] = sum(share > 0.5 for share in shares) / len(shares)
            result["unhinted_accuracy"] = sum(shares) / len(shares)
        return result

    def state_dict(self) -> dict[str, dict]:
        return {"first_hinted": dict(self.first_hinted), "latest": dict(self.latest)}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.first_hinted, self.latest = dict(state["first_hinted"]), dict(state["latest"])

    @classmethod
    def merged(cls, states: list[dict[str, dict]]) -> HintReliance:
        """One view of several processes' states (each process samples its own share of the clips; a clip seen on
        several keeps its earliest hint and its latest accuracy)."""
        merged = cls()
        for state in states:
            for clip_id, step in state["first_hinted"].items():
                merged.first_hinted[clip_id] = min(step, merged.first_hinted.get(clip_id, step))
            for clip_id, (step, share) in state["latest"].items():
                if clip_id not in merged.latest or merged.latest[clip_id][0] <= step:
                    merged.latest[clip_id] = (step, share)
        return merged
