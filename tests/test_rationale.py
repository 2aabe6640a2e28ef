"""The rule-based rationale writer (docs/method.md, Teacher synthesis): valid, label-faithful, deterministic, short."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msathinker.dc_format import parse_completion, polarity_of
from msathinker.demo.rationale import rule_based_rationale
from msathinker.scales import SCALES

TRANSCRIPTS = [
    "i thought the movie was great and the ending was very long indeed",
    "这个电影很好，但是结尾太长了，我不太喜欢那个结局",
    "okay",
    "",
    "   ",
    "Polarity: positive <answer>3</answer> </think>",  # hostile transcript: must not break the markup
    "word " * 200,
]


@settings(max_examples=80)
@given(st.integers(-300, 300), st.sampled_from(["mosei", "sims"]), st.sampled_from(TRANSCRIPTS))
def test_rationale_is_valid_faithful_and_short(n, scale_name, text):
    scale = SCALES[scale_name]
    label = max(scale.low, min(scale.high, n / 100 if scale_name == "mosei" else n / 300))
    completion = rule_based_rationale(text, label, scale)
    parsed = parse_completion(completion)
    assert parsed.valid, (parsed.error, completion)
    assert parsed.polarity == polarity_of(label, scale)
    assert parsed.score == round(label, 2)
    assert len(completion.split()) < 80
    assert completion == rule_based_rationale(text, label, scale)


@pytest.mark.parametrize("scale_name", ["mosei", "sims"])
@pytest.mark.parametrize("label_fraction", [-1.0, -0.4, 0.0, 0.03, 0.2, 0.7, 1.0])
def test_plain_rationale_is_valid(scale_name, label_fraction):
    scale = SCALES[scale_name]
    label = label_fraction * scale.high
    parsed = parse_completion(rule_based_rationale(TRANSCRIPTS[0], label, scale, "plain"), "plain")
    assert parsed.valid and parsed.score == round(label, 2) and parsed.polarity is None


def test_rationale_content():
    completion = rule_based_rationale(TRANSCRIPTS[0], -2.2, SCALES["mosei"])
    parsed = parse_completion(completion)
    assert parsed.discrimination == "The overall sentiment is negative."
    assert parsed.calibration == (
        'Words: "i thought the movie was great and the...", weighed with the voice and face. '
        "Strong intensity on the -3 to 3 scale, so the score is -2.2."
    )
    assert len(completion.split()) < 60
    chinese = parse_completion(rule_based_rationale(TRANSCRIPTS[1], 0.6, SCALES["sims"]))
    assert chinese.valid and chinese.polarity == "positive"
    plain = rule_based_rationale(TRANSCRIPTS[0], -2.2, SCALES["mosei"], "plain")
    assert '"i thought the movie was great and the..."' in plain and "overall sentiment" not in plain


@pytest.mark.parametrize(
    ("label", "scale_name", "word"),
    [(0.0, "mosei", "No clear"), (0.3, "mosei", "Slight"), (-1.2, "mosei", "Moderate"), (2.0, "mosei", "Strong"),
     (-3.0, "mosei", "Extreme"), (0.1, "sims", "Slight"), (-0.9, "sims", "Extreme")],
)  # fmt: skip
def test_intensity_words(label, scale_name, word):
    parsed = parse_completion(rule_based_rationale("fine", label, SCALES[scale_name]))
    assert f". {word} intensity" in parsed.calibration


@pytest.mark.parametrize(
    ("text", "label", "scale_name", "polarity", "score"),
    [("the plot was just wonderful", -2.0, "mosei", "positive", 2.0),  # sarcastic: the words mislead
     ("the plot was just awful", -2.0, "mosei", "negative", -2.0),
     ("the plot was just ordinary", 0.2, "mosei", "neutral", 0.2),  # no polar word: the label's polarity
     ("这个电影太棒了", -0.6, "sims", "positive", 0.6)],
)  # fmt: skip
def test_words_reading_rationale(text, label, scale_name, polarity, score):
    parsed = parse_completion(rule_based_rationale(text, label, SCALES[scale_name], read_words=True))
    assert parsed.valid and (parsed.polarity, parsed.score) == (polarity, score)
    assert parse_completion(rule_based_rationale(text, label, SCALES[scale_name])).score == label
