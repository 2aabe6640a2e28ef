"""The rule-based rationale writer: a stand-in for the teacher model in offline demos and tests.

It is not a model. It knows only a clip's label and transcript and writes a short, deterministic DC completion
whose polarity and score are the label's, so the SFT stage has targets when no teacher (Qwen3-Omni) is available.
Completions are kept short on purpose: a tiny random-init model must learn to reproduce the format on a CPU.
"""

from __future__ import annotations

from msathinker.dc_format import DCReasoning, Format, polarity_of, render_completion
from msathinker.scales import Scale

_INTENSITY = ((0.2, "slight"), (0.5, "moderate"), (0.8, "strong"), (1.01, "extreme"))
_CUES = {
    "positive": "the voice and the picture look positive",
    "negative": "the voice and the picture look negative",
    "neutral": "the voice and the picture look calm",
}


def rule_based_rationale(text: str, label: float, scale: Scale, fmt: Format = "dc") -> str:
    """A DC completion for a clip from its transcript and label (see the module docstring)."""
    polarity = polarity_of(label, scale)
    words = text.split()
    quote = " ".join(words[:8]) if len(words) > 1 else text[:16]
    relative = abs(label) / scale.high
    intensity = next(name for bound, name in _INTENSITY if relative < bound)
    reasoning = DCReasoning(
        polarity=polarity,
        score=label,
        discrimination=f'The words say "{quote}"; {_CUES[polarity]}.',
        calibration=f"The cues are {intensity}.",
    )
    return render_completion(reasoning, fmt)
