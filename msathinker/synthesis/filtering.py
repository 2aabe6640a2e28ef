"""Judging teacher completions against the labels (docs/method.md, Filter), and the run summary. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msathinker.dc_format import ParsedCompletion, parse_completion, polarity_of
from msathinker.scales import Scale


@dataclass(frozen=True)
class FilterRules:
    """Which teacher completions are kept for SFT."""

    require_format: bool = True
    """Keep only completions in the exact DC format."""
    require_polarity: bool = True
    """Keep only completions whose polarity (stated, else their score's band) is the label's."""
    tolerance: float | None = None
    """Keep only completions with |score - label| <= tolerance; None uses the scale's (0.5 on [-3, 3], 1/6 on
    [-1, 1]); a negative value disables the check."""


def judge(parsed: ParsedCompletion, label: float, scale: Scale, rules: FilterRules) -> str | None:
    """None when the completion is kept, else the reason it is rejected."""
    if rules.require_format and not parsed.valid:
        return f"invalid format: {parsed.error}"
    if parsed.score is None:
        return "no score"
    truth = polarity_of(label, scale)
    said = parsed.effective_polarity(scale)
    if rules.require_polarity and said != truth:
        return f"wrong polarity: said {said}, label is {truth}"
    tolerance = scale.filter_tolerance if rules.tolerance is None else rules.tolerance
    if tolerance >= 0 and abs(parsed.score - label) > tolerance + 1e-9:
        return f"score off by {abs(parsed.score - label):.2f} > {tolerance:.2f}"
    return None


def best_sample(completions: list[str], label: float, scale: Scale, rules: FilterRules, fmt: str = "dc"):
    """The first kept completion, else the least bad one (valid format over invalid, then the closest score).

    Returns (completion, parsed, reason) with reason None when kept.
    """
    judged = []
    for text in completions:
        parsed = parse_completion(text, fmt)
        reason = judge(parsed, label, scale, rules)
        if reason is None:
            return text, parsed, None
        distance = abs(parsed.score - label) if parsed.score is not None else float("inf")
        judged.append((not parsed.valid, distance, text, parsed, reason))
    _, _, text, parsed, reason = min(judged, key=lambda j: (j[0], j[1]))
    return text, parsed, reason


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts kept / rejected by reason kind / refused by the teacher (teacher errors), and the teacher's polarity
    accuracy and score MAE against the labels over the clips it answered."""
    reasons: dict[str, int] = {}
    correct = scored = teacher_errors = 0
    errors: list[float] = []
    for r in records:
        if r.get("teacher_error"):
            teacher_errors += 1
            continue
        if not r["kept"]:
            kind = r["reason"].split(":")[0].split(" by ")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        if r.get("polarity") is not None:
            correct += r["polarity"] == r["label_polarity"]
        if r.get("score") is not None:
            scored += 1
            errors.append(abs(r["score"] - r["label"]))
    answered = len(records) - teacher_errors
    return {
        "clips": len(records),
        "kept": sum(r["kept"] for r in records),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": reasons,
        "teacher_errors": teacher_errors,
        "teacher_polarity_accuracy": correct / answered if answered else 0.0,
        "teacher_score_mae": sum(errors) / len(errors) if errors else float("nan"),
        "unparsed": answered - scored,
    }
