"""The rule-based rationale writer: a deterministic stand-in for the teacher model (docs/method.md, Teacher synthesis).

This is NOT a model and is never presented as one. The real stage 0 asks a teacher (Qwen3-Omni) for a DC
chain-of-thought; for offline demos and tests, where no teacher exists, this writer fills the same slot from what it
knows, which is only the clip's label and transcript. It does not look at audio or video: the "voice and face"
sentence is a fixed phrase, and polarity, intensity and score all come from the label.

With `read_words=True` it imitates a teacher that trusts the words: where the transcript holds a word of the demo
sentiment lexicon, the stated polarity is that word's (and the score's sign follows it), so on clips whose words
mislead (the demo's sarcastic clips) it is wrong and the label filter rejects the record, as it would reject a real
teacher's misreading. The student then never sees those clips in SFT: the hard samples of stage 2.

The discrimination holds only the verdict sentence and the "Polarity:" statement; the evidence (the quoted words)
opens the calibration. A small student copies its statement from the nearest text that carries a polarity, and the
"prefix" hint (which forces the verdict sentence) can only steer the statement when that text is the verdict.

The completions are short (about 40 words) on purpose: a tiny random-init model must learn to reproduce the format
in a few minutes of CPU training. Example (MOSEI scale, label -1.4):

    <think>
    <discrimination> The overall sentiment is negative. Polarity: negative </discrimination>
    <calibration> Words: "i did not like the ending", weighed with the voice and face. Moderate intensity on the
    -3 to 3 scale, so the score is -1.4. </calibration>
    </think>
    <answer>-1.4</answer>
"""

from __future__ import annotations

import re
from typing import cast

from msathinker.dc_format import (
    DCReasoning,
    Format,
    Polarity,
    format_score,
    polarity_of,
    render_completion,
    verdict_sentence,
)
from msathinker.demo.data import DOMAINS
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


def lexicon_polarity(text: str) -> Polarity | None:
    """The polarity of the first demo sentiment word in `text` (substring match, so Chinese works), else None."""
    hits = [
        (text.find(word), polarity)
        for domain in DOMAINS.values()
        for polarity, words in domain.words.items()
        for word in words
        if polarity != "neutral" and word in text
    ]
    return cast(Polarity, min(hits)[1]) if hits else None


def rule_based_rationale(text: str, label: float, scale: Scale, fmt: Format = "dc", read_words: bool = False) -> str:
    """A deterministic completion for a clip from its transcript and label (see the module docstring).

    Stated polarity = polarity_of(label, scale); answer = format_score(label). With `read_words`, a polar lexicon
    word in the transcript overrides the polarity and the score's sign. `fmt` "plain" renders the cue and intensity
    sentences without the verdict, DC tags or stated polarity (the ablation's SFT targets).
    """
    polarity = polarity_of(label, scale)
    said = lexicon_polarity(text) if read_words else None
    score = label
    if said is not None and said != polarity:
        polarity, score = said, abs(label) if said == "positive" else -abs(label)
    quote = _quote(text)
    words = f'Words: "{quote}", weighed with the voice and face.' if quote else "No words; the voice and face."
    intensity = (
        f"{_intensity(score, scale).capitalize()} intensity on the {format_score(scale.low)} to "
        f"{format_score(scale.high)} scale, so the score is {format_score(score)}."
    )
    if fmt == "plain":  # no verdict: the cue sentence, then the intensity
        discrimination, calibration = words, intensity
    else:
        discrimination, calibration = verdict_sentence(polarity), f"{words} {intensity}"
    reasoning = DCReasoning(polarity=polarity, score=score, discrimination=discrimination, calibration=calibration)
    return render_completion(reasoning, fmt)
