"""The completion format: rendering, parsing, polarity of a label, and the wording of hints and instructions.

A valid Discrimination-Calibration ("dc") completion is exactly (tolerant of whitespace and case):

    <think>
    <discrimination> cues from text, audio and video ... Polarity: negative </discrimination>
    <calibration> intensity reasoning ... </calibration>
    </think>
    <answer>-1.4</answer>

The "plain" ablation format is `<think> ... </think>\\n<answer>x</answer>` with no DC parts and no stated polarity.
The parser never raises and never evaluates text: it uses linear-time regexes and float(), and reports what it
found (polarity, score, which parts are present, why invalid) so rewards and metrics can score any output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from msathinker.scales import Scale

Polarity = Literal["positive", "negative", "neutral"]
POLARITIES: tuple[str, ...] = ("positive", "negative", "neutral")
Format = Literal["dc", "plain"]

_TAG = re.compile(r"<\s*(/?)\s*(think|discrimination|calibration|answer)\s*>", re.IGNORECASE)
_POLARITY = re.compile(r"polarity\s*:\s*(positive|negative|neutral)\b", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def polarity_of(label: float, scale: Scale) -> Polarity:
    """positive if label > band, negative if label < -band, else neutral (band = the scale's neutral band)."""
    if label > scale.neutral_band:
        return "positive"
    if label < -scale.neutral_band:
        return "negative"
    return "neutral"


def format_score(score: float) -> str:
    """Canonical answer text: 2 decimals at most, no trailing zeros, no "-0"."""
    text = f"{round(score, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class DCReasoning:
    """What a completion says: the discrimination cues, the calibration text, the polarity and the score."""

    polarity: Polarity
    score: float
    discrimination: str
    calibration: str


def render_completion(reasoning: DCReasoning, fmt: Format = "dc") -> str:
    """The completion text of `reasoning` in the given format."""
    answer = f"<answer>{format_score(reasoning.score)}</answer>"
    if fmt == "plain":
        return f"<think>\n{reasoning.discrimination} {reasoning.calibration}\n</think>\n{answer}"
    return (
        f"<think>\n<discrimination> {reasoning.discrimination} Polarity: {reasoning.polarity} </discrimination>\n"
        f"<calibration> {reasoning.calibration} </calibration>\n</think>\n{answer}"
    )


@dataclass(frozen=True)
class ParsedCompletion:
    """What the parser found. `score` is set whenever exactly one <answer> holds a number, even if other parts are
    invalid, so metrics can use the answer of a sloppy completion; `valid` is the exact-format check."""

    valid: bool
    polarity: Polarity | None
    """The stated polarity ("Polarity: X" in <discrimination>); None in plain format or when absent."""
    score: float | None
    has_think: bool
    has_discrimination: bool
    has_calibration: bool
    has_answer: bool
    error: str | None
    """Why the completion is not valid (None when valid)."""
    discrimination: str | None = None
    """Inner text of <discrimination> without the polarity statement."""
    calibration: str | None = None
    """Inner text of <calibration>."""

    def effective_polarity(self, scale: Scale) -> Polarity | None:
        """The stated polarity, else the polarity of the score, else None."""
        if self.polarity is not None:
            return self.polarity
        return polarity_of(self.score, scale) if self.score is not None else None


def _parse_score(inner: str) -> tuple[float | None, str | None]:
    text = inner.strip()
    if not _NUMBER.fullmatch(text):
        return None, f"answer is not a number: {text[:40]!r}"
    value = float(text)
    if not math.isfinite(value):
        return None, f"answer is not finite: {text[:40]!r}"
    return value, None


def parse_completion(text: str, fmt: Format = "dc") -> ParsedCompletion:
    """Parse any text into a ParsedCompletion; never raises."""
    if not isinstance(text, str):
        text = str(text)
    tags = [(m.group(2).lower(), m.group(1) == "/", m.start(), m.end()) for m in _TAG.finditer(text)]
    opens = {
        name: [t for t in tags if t[0] == name and not t[1]]
        for name in ("think", "discrimination", "calibration", "answer")
    }
    closes = {name: [t for t in tags if t[0] == name and t[1]] for name in opens}

    def span(name: str) -> tuple[int, int, int, int] | None:
        if len(opens[name]) == 1 and len(closes[name]) == 1 and opens[name][0][3] <= closes[name][0][2]:
            return opens[name][0][2], opens[name][0][3], closes[name][0][2], closes[name][0][3]
        return None

    think, disc, cal, answer = span("think"), span("discrimination"), span("calibration"), span("answer")
    score, error = None, None
    answer_count = len(opens["answer"])
    if answer is not None:
        score, error = _parse_score(text[answer[1] : answer[2]])
    elif answer_count == 0:
        error = "no <answer> tag"
    elif answer_count > 1:
        error = f"{answer_count} <answer> tags"
    else:
        error = "unclosed <answer> tag"

    polarity = None
    discrimination = calibration = None
    if disc is not None:
        inner = text[disc[1] : disc[2]]
        found = list(_POLARITY.finditer(inner))
        if len(found) == 1:
            polarity = found[0].group(1).lower()
            discrimination = (inner[: found[0].start()] + inner[found[0].end() :]).strip()
        elif fmt == "dc" and error is None:
            error = "no polarity statement in <discrimination>" if not found else "more than one polarity statement"
    if cal is not None:
        calibration = text[cal[1] : cal[2]].strip()

    if error is None:
        error = _structure_error(text, tags, think, disc, cal, answer, fmt)
    return ParsedCompletion(
        valid=error is None,
        polarity=polarity if fmt == "dc" else None,
        score=score,
        has_think=think is not None,
        has_discrimination=disc is not None,
        has_calibration=cal is not None,
        has_answer=answer is not None,
        error=error,
        discrimination=discrimination,
        calibration=calibration,
    )


def _structure_error(text, tags, think, disc, cal, answer, fmt: Format) -> str | None:
    """The first ordering / presence problem of an otherwise parsable completion, or None."""
    if think is None:
        return "missing or repeated <think>...</think>"
    if text[: think[0]].strip():
        return "text before <think>"
    if text[think[3] : answer[0]].strip():
        return "text between </think> and <answer>"
    if text[answer[3] :].strip():
        return "text after </answer>"
    if answer[0] < think[3]:
        return "<answer> inside <think>"
    if fmt == "plain":
        return "DC tags in plain format" if len(tags) != 4 else None
    if disc is None:
        return "missing or repeated <discrimination>...</discrimination>"
    if cal is None:
        return "missing or repeated <calibration>...</calibration>"
    if len(tags) != 8:
        return "unexpected extra tags"
    if not (think[1] <= disc[0] and disc[3] <= think[2]):
        return "<discrimination> outside <think>"
    if not (think[1] <= cal[0] and cal[3] <= think[2]):
        return "<calibration> outside <think>"
    if cal[0] < disc[3]:
        return "calibration before discrimination"
    if text[think[1] : disc[0]].strip() or text[disc[3] : cal[0]].strip() or text[cal[3] : think[2]].strip():
        return "text outside the DC parts inside <think>"
    return None


def hint_sentence(polarity: Polarity) -> str:
    """The hint's wording (one source for both placements)."""
    return f"Hint: the overall sentiment is {polarity}."


def hint_prefix(polarity: Polarity) -> str:
    """Assistant-turn prefix of the "prefix" hint placement; the model continues the discrimination after it."""
    return f"<think>\n<discrimination> {hint_sentence(polarity)} "


def task_instruction(scale: Scale, fmt: Format = "dc") -> str:
    """The task instruction of the user turn, with the scale's label range."""
    low, high = format_score(scale.low), format_score(scale.high)
    if fmt == "plain":
        return (
            f"Rate the speaker's sentiment from {low} (strongly negative) to {high} (strongly positive). "
            "Reason inside <think></think>, then give the score inside <answer></answer>."
        )
    return (
        f"Rate the speaker's sentiment from {low} (strongly negative) to {high} (strongly positive). "
        "Inside <think>, first judge the polarity in <discrimination> from the words, voice and face, ending with "
        "'Polarity: positive', 'Polarity: negative' or 'Polarity: neutral'; then judge the intensity in "
        "<calibration>. Give the score inside <answer></answer>."
    )
