"""The completion format: rendering, parsing, the polarity of a label, and the wording of hints and instructions.

This is the one module that knows the markup (docs/method.md, Output format). A valid Discrimination-Calibration ("dc")
completion is exactly, up to whitespace and letter case:

    <think>
    <discrimination> cues from text, audio and video ... Polarity: negative </discrimination>
    <calibration> intensity reasoning ... </calibration>
    </think>
    <answer>-1.4</answer>

The "plain" ablation format drops the DC parts and the stated polarity:

    <think>
    reasoning ...
    </think>
    <answer>-1.4</answer>

Parsing rules (`parse_completion`):

- Never raises on any text and never evaluates it: linear-time regexes (no nested or ambiguous quantifiers, so no
  catastrophic backtracking) and `float()` on a string that already matched a plain decimal number.
- Tolerant of whitespace and case: `< /Think >`, `POLARITY :  Neutral` and blank lines between parts are fine.
  Tags and the polarity keyword are matched with ASCII case folding only.
- Strict on structure: exactly one pair of each tag, in the order think > discrimination > calibration > /think >
  answer, nothing but whitespace outside the parts, exactly one "Polarity: X" statement inside <discrimination>
  (anywhere in it; `render_completion` puts it at the end).
- The answer is one plain decimal number: optional sign, digits with an optional fraction (`-1.4`, `+2`, `.5`,
  `3.`). Exponents (`1e-1`), `nan`, `inf` and numbers that overflow a float are rejected: the canonical form
  (`format_score`) never uses them and a model that writes them is not following the format. The parser does not
  check the label range (it does not know the dataset); metrics clip.
- Partial results: `score` is set whenever there is exactly one <answer>...</answer> pair holding a number, and
  `polarity` whenever there is exactly one <discrimination>...</discrimination> pair holding exactly one
  statement, even when the completion is otherwise invalid (`valid=False`). Metrics and the polarity / score
  rewards can then still use what a sloppy completion said; the format reward uses `valid`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, cast

from msathinker.scales import Scale

Polarity = Literal["positive", "negative", "neutral"]
POLARITIES: tuple[str, ...] = ("positive", "negative", "neutral")
Format = Literal["dc", "plain"]
FORMATS: tuple[str, ...] = ("dc", "plain")

_FLAGS = re.IGNORECASE | re.ASCII
# "<", optional "/", a tag name, ">", with optional whitespace around the parts. The slash and its whitespace form
# one optional group, so no two quantifiers compete for the same characters (the version with `\s*/?\s*` backtracks
# quadratically on "<" followed by a long run of spaces).
_TAG = re.compile(r"<\s*(?:(/)\s*)?(think|discrimination|calibration|answer)\s*>", _FLAGS)
_POLARITY = re.compile(r"\bpolarity\s*:\s*(positive|negative|neutral)\b", _FLAGS)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_DC_TAGS = ("discrimination", "calibration")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown completion format {fmt!r}; choose from {', '.join(FORMATS)}")


def polarity_of(label: float, scale: Scale) -> Polarity:
    """Polarity of a label: positive if label > band, negative if label < -band, else neutral.

    The band is the scale's neutral band (0.5 on [-3, 3], 0.1 on [-1, 1]); a label on the band edge is neutral. On
    [-3, 3] that is the class 0 of MMSA's Mult_acc_7 rounding; MMSA's SIMS Mult_acc_3 agrees except at exactly -0.1,
    which it counts as negative.
    """
    if label > scale.neutral_band:
        return "positive"
    if label < -scale.neutral_band:
        return "negative"
    return "neutral"


def format_score(score: float) -> str:
    """Canonical answer text: rounded to 2 decimals, trailing zeros stripped, never "-0" (-1.4 -> "-1.4", 2.0 -> "2").

    One canonical spelling per value keeps SFT targets consistent and makes parse(render(x)) exact.
    Raises ValueError for NaN and infinities, which no completion may contain.
    """
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score!r}")
    text = f"{round(score, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class DCReasoning:
    """What a DC completion says, independent of the markup.

    `discrimination` is the cue text before the "Polarity: X" statement; `calibration` the intensity text.
    """

    polarity: Polarity
    score: float
    discrimination: str
    calibration: str


def render_completion(reasoning: DCReasoning, fmt: Format = "dc") -> str:
    """The completion text of `reasoning` in the given format (see the module docstring).

    "dc" appends "Polarity: <p>" to the discrimination text; "plain" joins the two texts in one <think> with no
    stated polarity. Raises ValueError when the result would not parse back to `reasoning`: an unknown polarity, a
    non-finite score, a tag inside a text, or a polarity statement inside the discrimination text.
    """
    _check_format(fmt)
    if reasoning.polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {reasoning.polarity!r}; choose from {', '.join(POLARITIES)}")
    for part, text in (("discrimination", reasoning.discrimination), ("calibration", reasoning.calibration)):
        if _TAG.search(text):
            raise ValueError(f"{part} text contains a tag: {text[:60]!r}")
    if _POLARITY.search(reasoning.discrimination):
        raise ValueError(f"discrimination text contains a polarity statement: {reasoning.discrimination[:60]!r}")
    answer = f"<answer>{format_score(reasoning.score)}</answer>"
    if fmt == "plain":
        return f"<think>\n{reasoning.discrimination} {reasoning.calibration}\n</think>\n{answer}"
    return (
        f"<think>\n<discrimination> {reasoning.discrimination} Polarity: {reasoning.polarity} </discrimination>\n"
        f"<calibration> {reasoning.calibration} </calibration>\n</think>\n{answer}"
    )


@dataclass(frozen=True)
class ParsedCompletion:
    """What the parser found in a completion; built by `parse_completion`, never raised as an error.

    `polarity` and `score` are set whenever their own part is well formed, even if `valid` is False (see the module
    docstring), so metrics and rewards can score any output. `has_*` say whether exactly one <tag>...</tag> pair
    (opening before closing) is present, wherever it is.
    """

    valid: bool
    """The completion is exactly in the requested format."""
    polarity: Polarity | None
    """The stated polarity ("Polarity: X" in <discrimination>); None in plain format or when absent or repeated."""
    score: float | None
    """The number in the single <answer>; None when missing, repeated, not a number or not finite."""
    has_think: bool
    has_discrimination: bool
    has_calibration: bool
    has_answer: bool
    error: str | None
    """Why the completion is not valid, for humans and logs (None when valid). The first problem found."""
    discrimination: str | None = None
    """Inner text of <discrimination> without the polarity statement, stripped (None when absent or plain)."""
    calibration: str | None = None
    """Inner text of <calibration>, stripped (None when absent or plain)."""

    def effective_polarity(self, scale: Scale) -> Polarity | None:
        """The stated polarity, else the polarity of the score on `scale`, else None.

        Lets the polarity reward and the hint trigger judge plain-format completions (which state no polarity).
        """
        if self.polarity is not None:
            return self.polarity
        return polarity_of(self.score, scale) if self.score is not None else None


@dataclass(frozen=True)
class _Tag:
    name: str
    closing: bool
    start: int
    end: int


@dataclass(frozen=True)
class _Pair:
    """A well-formed <name> ... </name>: outer start, inner start, inner end, outer end."""

    start: int
    inner_start: int
    inner_end: int
    end: int


def _pair(tags: list[_Tag], name: str) -> tuple[_Pair | None, str | None]:
    """The single <name>...</name> pair, or why there is none."""
    opens = [t for t in tags if t.name == name and not t.closing]
    closes = [t for t in tags if t.name == name and t.closing]
    if not opens and not closes:
        return None, f"no <{name}> tag"
    if len(opens) > 1:
        return None, f"{len(opens)} <{name}> tags"
    if len(closes) > 1:
        return None, f"{len(closes)} </{name}> tags"
    if not opens:
        return None, f"</{name}> without <{name}>"
    if not closes:
        return None, f"unclosed <{name}> tag"
    if closes[0].start < opens[0].end:
        return None, f"</{name}> before <{name}>"
    return _Pair(opens[0].start, opens[0].end, closes[0].start, closes[0].end), None


def _parse_score(inner: str) -> tuple[float | None, str | None]:
    text = inner.strip()
    if not _NUMBER.fullmatch(text):
        return None, f"answer is not a number: {text[:40]!r}"
    value = float(text)
    if not math.isfinite(value):
        return None, f"answer is not finite: {text[:40]!r}"
    return value, None


def _gap(text: str, start: int, end: int, before: str, after: str) -> str | None:
    """Error if anything but whitespace lies between two parts."""
    return f"text between {before} and {after}" if text[start:end].strip() else None


def parse_completion(text: str, fmt: Format = "dc") -> ParsedCompletion:
    """Parse a completion in format `fmt` ("dc" or "plain"); never raises on any text (see the module docstring).

    An unknown `fmt` is a programming error and raises ValueError.
    """
    _check_format(fmt)
    if not isinstance(text, str):
        text = str(text)
    tags = [_Tag(m.group(2).lower(), m.group(1) is not None, m.start(), m.end()) for m in _TAG.finditer(text)]
    think, think_error = _pair(tags, "think")
    disc, disc_error = _pair(tags, "discrimination")
    cal, cal_error = _pair(tags, "calibration")
    answer, answer_error = _pair(tags, "answer")

    score, error = None, answer_error
    if answer is not None:
        score, error = _parse_score(text[answer.inner_start : answer.inner_end])

    polarity: Polarity | None = None
    discrimination = calibration = None
    statements: list[re.Match[str]] = []
    if fmt == "dc" and disc is not None:
        inner = text[disc.inner_start : disc.inner_end]
        statements = list(_POLARITY.finditer(inner))
        if len(statements) == 1:
            found = statements[0]
            polarity = cast(Polarity, found.group(1).lower())
            rest = (inner[: found.start()].strip(), inner[found.end() :].strip())
            discrimination = " ".join(part for part in rest if part)
    if fmt == "dc" and cal is not None:
        calibration = text[cal.inner_start : cal.inner_end].strip()

    if error is None:
        error = think_error
    if error is None:
        assert think is not None and answer is not None
        error = _outer_error(text, think, answer)
    if error is None and fmt == "plain":
        error = "DC tags in plain format" if any(t.name in _DC_TAGS for t in tags) else None
    elif error is None:
        error = disc_error or cal_error
        if error is None:
            assert think is not None and disc is not None and cal is not None
            error = _inner_error(text, think, disc, cal)
        if error is None and len(statements) != 1:
            error = (
                "no polarity statement in <discrimination>"
                if not statements
                else f"{len(statements)} polarity statements in <discrimination>"
            )
    return ParsedCompletion(
        valid=error is None,
        polarity=polarity,
        score=score,
        has_think=think is not None,
        has_discrimination=disc is not None,
        has_calibration=cal is not None,
        has_answer=answer is not None,
        error=error,
        discrimination=discrimination,
        calibration=calibration,
    )


def _outer_error(text: str, think: _Pair, answer: _Pair) -> str | None:
    """Problems of the outer layout: nothing before <think>, <answer> after </think>, nothing after </answer>."""
    if text[: think.start].strip():
        return "text before <think>"
    if answer.start < think.end:
        return "<answer> before </think>"
    if text[answer.end :].strip():
        return "text after </answer>"
    return _gap(text, think.end, answer.start, "</think>", "<answer>")


def _inner_error(text: str, think: _Pair, disc: _Pair, cal: _Pair) -> str | None:
    """Problems inside <think>: both DC parts in it, discrimination first, nothing else."""
    for name, part in (("discrimination", disc), ("calibration", cal)):
        if part.start < think.inner_start or part.end > think.inner_end:
            return f"<{name}> outside <think>"
    if cal.start < disc.start:
        return "calibration before discrimination"
    if cal.start < disc.end:
        return "<calibration> inside <discrimination>"
    return (
        _gap(text, think.inner_start, disc.start, "<think>", "<discrimination>")
        or _gap(text, disc.end, cal.start, "</discrimination>", "<calibration>")
        or _gap(text, cal.end, think.inner_end, "</calibration>", "</think>")
    )


def discrimination_end(text: str) -> int | None:
    """Where the discrimination part of a completion ends: the offset just past its single </discrimination> tag
    (whitespace and case tolerated as by the parser), or None when the text has no closing tag or more than one. DC
    span credit splits a completion's tokens there: the discrimination span before, calibration and answer after.
    The text may start inside the discrimination (a prefix hint opened it in the prompt)."""
    closes = [m for m in _TAG.finditer(text) if m.group(1) is not None and m.group(2).lower() == "discrimination"]
    return closes[0].end() if len(closes) == 1 else None


def verdict_sentence(polarity: Polarity) -> str:
    """The sentence a DC discrimination opens with: the polarity verdict, before the "Polarity: X" statement.

    The rule-based rationale writer opens with it, and the "prefix" hint forces exactly it, so a hinted completion
    is one the model could have written itself: it continues from its own kind of opening. Not the "Polarity: X"
    form, so the statement the parser reads still comes from the model.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}; choose from {', '.join(POLARITIES)}")
    return f"The overall sentiment is {polarity}."


def hint_sentence(polarity: Polarity) -> str:
    """The hint as a line of the user turn ("prompt" placement) or of a plain-format prefix: states the label's
    polarity, never the score."""
    return f"Hint: {verdict_sentence(polarity)}"


def hint_prefix(polarity: Polarity, fmt: Format = "dc") -> str:
    """Assistant-turn prefix of the "prefix" hint placement: the model continues the discrimination after it.

    prefix + continuation must parse like a normal completion, so in "dc" the prefix opens <think> and
    <discrimination> and gives the verdict sentence; the continuation supplies the cues, "Polarity: X", and the
    rest. In "plain" (no DC tags allowed) the prefix is <think> and the hint sentence only. The prefix ends at the
    full stop, not a space: BPE attaches a space to the word after it, so a trailing space would be a token the
    model never saw there, and it derails the continuation.
    """
    _check_format(fmt)
    if fmt == "plain":
        return f"<think>\n{hint_sentence(polarity)}"
    return f"<think>\n<discrimination> {verdict_sentence(polarity)}"


def task_instruction(scale: Scale, fmt: Format = "dc") -> str:
    """The task instruction of the user turn: the label range of `scale`, the polarity words and the exact format.

    Kept short because it is part of every prompt; the neutral band is stated so stated polarity and score agree.
    """
    _check_format(fmt)
    low, high, band = format_score(scale.low), format_score(scale.high), format_score(scale.neutral_band)
    task = (
        f"Rate the speaker's sentiment from {low} (strongly negative) to {high} (strongly positive) "
        "from the words, voice and face. Reply in exactly this format, "
    )
    if fmt == "plain":
        return task + "where S is one number:\n<think>\nreasoning ...\n</think>\n<answer>S</answer>"
    return task + (
        f"where P is positive, negative or neutral (|S| <= {band}) and S is one number:\n"
        "<think>\n<discrimination> cues ... Polarity: P </discrimination>\n"
        "<calibration> intensity ... </calibration>\n</think>\n<answer>S</answer>"
    )
