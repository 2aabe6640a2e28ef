"""The rule-based rationale writer: a deterministic stand-in for the teacher model (method.md section 3).

This is NOT a model and is never presented as one. The real stage 0 asks a teacher (Qwen3-Omni) for a DC
chain-of-thought; for offline demos and tests, where no teacher exists, this writer fills the same slot from what it
knows, which is only the clip's label and transcript. It does not look at audio or video: the "voice and face"
sentence is a fixed phrase, and polarity, intensity and score all come from the label.

The completions are short (about 40 words) on purpose: a tiny random-init model must learn to reproduce the format
in a few minutes of CPU training. Example (MOSEI scale, label -1.4):

    <think>
    <discrimination> Words: "i did not like the ending". Weighing them with the voice and face, the cues read
    negative. Polarity: negative </discrimination>
    <calibration> Moderate intensity on the -3 to 3 scale, so the score is -1.4. </calibration>
    </think>
    <answer>-1.4</answer>
"""

from __future__ import annotations

import re

from msathinker.dc_format import DCReasoning, Format, format_score, polarity_of, render_completion
from msathinker.scales import Scale

QUOTE_WORDS = 8
"""At most this many whitespace-separated words of the transcript are quoted."""
QUOTE_CHARS = 60
"""...and at most this many characters."""
QUOTE_CHARS_UNSPACED = 16
"""Character cap for a transcript written without spaces (Chinese: one "word"); about 8 words' worth."""

_INTENSITY = ((0.05, "no clear"), (0.25, "slight"), (0.5, "moderate"), (0.8, "strong"))
"""(upper bound of |label| / max |scale|, word); above the last bound the intensity is "extreme"."""

_UNSAFE = re.compile(r"[<>:]")
"""Characters removed from the quote so a transcript can never form a tag or a "Polarity:" statement."""


def _quote(text: str) -> str:
    """A short, markup-safe excerpt of the transcript."""
    words = _UNSAFE.sub(" ", text).split()
    quote = " ".join(words[:QUOTE_WORDS])
    limit = QUOTE_CHARS if len(words) > 1 else QUOTE_CHARS_UNSPACED
    if len(quote) > limit:
        quote = quote[:limit].rstrip()
    if len(words) > QUOTE_WORDS or len(quote) < len(" ".join(words)):
        quote += "..."
    return quote


def _intensity(label: float, scale: Scale) -> str:
    relative = abs(label) / max(abs(scale.low), abs(scale.high))
    return next((word for bound, word in _INTENSITY if relative < bound), "extreme")


def rule_based_rationale(text: str, label: float, scale: Scale, fmt: Format = "dc") -> str:
    """A deterministic completion for a clip from its transcript and label (see the module docstring).

    Stated polarity = polarity_of(label, scale); answer = format_score(label). `fmt` "plain" renders the same
    sentences without DC tags or stated polarity (the ablation's SFT targets).
    """
    polarity = polarity_of(label, scale)
    quote = _quote(text)
    words = f'Words: "{quote}".' if quote else "No words."
    reasoning = DCReasoning(
        polarity=polarity,
        score=label,
        discrimination=f"{words} Weighing them with the voice and face, the cues read {polarity}.",
        calibration=(
            f"{_intensity(label, scale).capitalize()} intensity on the {format_score(scale.low)} to "
            f"{format_score(scale.high)} scale, so the score is {format_score(label)}."
        ),
    )
    return render_completion(reasoning, fmt)
