"""CompletionEvaluator: each clip counts once when the distributed sampler gave it to two ranks."""

from __future__ import annotations

import pytest
import torch

from msathinker.dc_format import DCReasoning, render_completion
from msathinker.evaluation import CompletionEvaluator
from msathinker.scales import SCALES

MOSEI = SCALES["mosei"]
IDS = [f"v{i}$_$1" for i in range(5)]
LABELS = [-2.0, -0.4, 0.0, 1.2, 2.6]
COMPLETIONS = [
    render_completion(DCReasoning("negative", -1.5, "flat voice.", "strong.")),
    render_completion(DCReasoning("positive", 0.8, "smile.", "mild.")),
    "no answer here",
    render_completion(DCReasoning("positive", 1.4, "bright.", "moderate.")),
    "<answer>2.2</answer>",
]


def evaluate(clips: list[int], completions: dict[int, str] | None = None) -> CompletionEvaluator:
    evaluator = CompletionEvaluator(MOSEI)
    texts = [(completions or {}).get(i, COMPLETIONS[i]) for i in clips]
    evaluator.update([IDS[i] for i in clips], texts, torch.tensor([LABELS[i] for i in clips]))
    return evaluator


def test_a_clip_padded_onto_another_rank_counts_once():
    one_process = evaluate([0, 1, 2, 3, 4]).compute()
    rank0 = evaluate([0, 2, 4])  # DistributedSampler(5 clips, 2 ranks): positions 0..5 of [0, 1, 2, 3, 4, 0]
    rank1 = evaluate([1, 3, 0], completions={0: "<answer>3</answer>"})  # sampled again: another completion
    remote = iter([torch.cat(state) for state in rank1.metric_state.values()])
    rank0.dist_sync_fn = lambda tensor, group=None: [tensor, next(remote)]  # a 2-rank all_gather, state by state
    rank0.distributed_available_fn = lambda: True
    gathered = rank0.compute()
    assert gathered.keys() == one_process.keys()
    for key, value in one_process.items():
        assert gathered[key].item() == value.item(), key  # rank 0's completion of clip 0 counts, once
    assert gathered["parse_failure_rate"].item() == pytest.approx(1 / 5)  # not 1 / 6
    assert [row["id"] for row in rank0.rows] == [IDS[0], IDS[2], IDS[4]]  # this rank's completions table


def test_every_metric_per_slice_equals_the_metrics_of_its_clips_alone():
    from msathinker.evaluation import slice_key

    slices = {IDS[0]: "Sarcastic", IDS[1]: "Sarcastic", IDS[3]: "Positive", IDS[4]: "Positive"}  # clip 2: none
    evaluator = CompletionEvaluator(MOSEI, slices=slices)
    evaluator.update(IDS, COMPLETIONS, torch.tensor(LABELS))
    results = evaluator.compute()
    for name, members in (("sarcastic", [0, 1]), ("positive", [3, 4])):
        alone = evaluate(members).compute()
        for key, value in alone.items():
            assert results[f"{name}/{key}"].item() == pytest.approx(value.item()), (name, key)
    assert results["sarcastic/polarity_acc"].item() == 0.5 and results["positive/format_rate"].item() == 0.5
    assert not any(key.startswith("/") for key in results)
    assert slice_key(" Very Positive! ") == "very positive_"
