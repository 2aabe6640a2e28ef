"""The completion format: the parser never raises, parse(render(x)) == x, and each invalid reason is reported."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msathinker.dc_format import (
    DCReasoning,
    format_score,
    hint_prefix,
    parse_completion,
    polarity_of,
    render_completion,
    task_instruction,
)
from msathinker.rationale import rule_based_rationale
from msathinker.scales import SCALES

FRAGMENTS = ["<think>", "</think>", "<discrimination>", "</discrimination>", "<calibration>", "</calibration>",
             "<answer>", "</answer>", "Polarity:", " positive", " negative", " neutral", "-1.4", "2", "abc", "\n",
             " ", "< think >", "<ANSWER>", "nan", "inf", "1e5", "."]  # fmt: skip
inner_text = st.text(st.characters(blacklist_characters="<>"), max_size=60).filter(
    lambda s: "polarity" not in s.lower()
)
reasonings = st.builds(
    DCReasoning,
    polarity=st.sampled_from(["positive", "negative", "neutral"]),
    score=st.integers(-300, 300).map(lambda n: n / 100),
    discrimination=inner_text,
    calibration=inner_text,
)


@given(st.text())
def test_parser_never_raises_on_any_text(text):
    for fmt in ("dc", "plain"):
        parsed = parse_completion(text, fmt)
        assert parsed.valid == (parsed.error is None)


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_parser_never_raises_on_tag_soup(text):
    for fmt in ("dc", "plain"):
        parsed = parse_completion(text, fmt)
        assert parsed.valid == (parsed.error is None)
        if parsed.score is not None:
            assert parsed.has_answer


@given(reasonings)
def test_parse_of_render_is_identity_dc(reasoning):
    """Round trip contract: polarity and score exactly, inner texts up to surrounding whitespace."""
    parsed = parse_completion(render_completion(reasoning))
    assert parsed.valid, parsed.error
    assert parsed.polarity == reasoning.polarity and parsed.score == reasoning.score
    assert parsed.discrimination == reasoning.discrimination.strip()
    assert parsed.calibration == reasoning.calibration.strip()


@given(reasonings)
def test_parse_of_render_is_identity_plain(reasoning):
    parsed = parse_completion(render_completion(reasoning, "plain"), "plain")
    assert parsed.valid, parsed.error
    assert parsed.polarity is None and parsed.score == reasoning.score


VALID = render_completion(DCReasoning("negative", -1.4, "sad words, low voice.", "The cues are strong."))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (VALID.replace("<answer>-1.4</answer>", ""), "no <answer> tag"),
        (VALID + "<answer>2</answer>", "2 <answer> tags"),
        (VALID.replace("-1.4", "abc"), "answer is not a number: 'abc'"),
        (VALID.replace("-1.4", "nan"), "answer is not a number: 'nan'"),
        (VALID + " thanks", "text after </answer>"),
        ("Sure! " + VALID, "text before <think>"),
        (VALID.replace("Polarity: negative", ""), "no polarity statement in <discrimination>"),
        (VALID.replace("<calibration> The cues are strong. </calibration>\n", ""), "missing or repeated <calibration>"),
        (
            "<think>\n<calibration> x </calibration>\n<discrimination> y Polarity: negative </discrimination>\n"
            "</think>\n<answer>1</answer>",
            "calibration before discrimination",
        ),
        (VALID.replace("<answer>-1.4</answer>", "<answer>-1.4"), "unclosed <answer> tag"),
    ],
)
def test_invalid_reasons(text, error):
    parsed = parse_completion(text)
    assert not parsed.valid and parsed.error.startswith(error)


def test_score_survives_a_sloppy_completion():
    parsed = parse_completion("I think it is <answer> 2.5 </answer>")
    assert not parsed.valid and parsed.score == 2.5


def test_whitespace_and_case_tolerance():
    text = "  <THINK>\n< discrimination >cues POLARITY :  Neutral</Discrimination><calibration>x</calibration>"
    parsed = parse_completion(text + "</think>  <Answer> +0.2 </answer>\n")
    assert parsed.valid and parsed.polarity == "neutral" and parsed.score == 0.2


def test_hint_prefix_plus_continuation_parses():
    continuation = "the voice is low. Polarity: negative </discrimination>\n<calibration> strong </calibration>\n"
    parsed = parse_completion(hint_prefix("negative") + continuation + "</think>\n<answer>-2</answer>")
    assert parsed.valid and parsed.polarity == "negative"


def test_long_adversarial_input_is_handled():
    text = "<think>" * 20000 + "<answer>" + "1" * 100000 + "polarity: " * 5000
    assert not parse_completion(text).valid


@pytest.mark.parametrize(
    ("label", "scale", "polarity"),
    [(0.5, "mosei", "neutral"), (0.51, "mosei", "positive"), (-0.5, "mosei", "neutral"), (-0.6, "mosei", "negative"),
     (0.1, "sims", "neutral"), (0.2, "sims", "positive"), (-0.1, "sims", "neutral"), (-1.0, "sims", "negative")],
)  # fmt: skip
def test_polarity_band(label, scale, polarity):
    assert polarity_of(label, SCALES[scale]) == polarity


@pytest.mark.parametrize(("score", "text"), [(-1.4, "-1.4"), (2.0, "2"), (0.333, "0.33"), (-0.001, "0"), (3, "3")])
def test_format_score(score, text):
    assert format_score(score) == text


def test_instruction_states_the_range():
    assert "-3" in task_instruction(SCALES["mosei"]) and "-1" in task_instruction(SCALES["sims"])


@settings(max_examples=60)
@given(st.integers(-300, 300).map(lambda n: n / 100), st.sampled_from(["mosei", "sims"]))
def test_rule_based_rationale_is_valid_and_short(label, scale_name):
    scale = SCALES[scale_name]
    label = max(scale.low, min(scale.high, label))
    for text in ("i thought the movie was great and the ending was very long indeed", "这个电影很好"):
        completion = rule_based_rationale(text, label, scale)
        parsed = parse_completion(completion)
        assert parsed.valid, parsed.error
        assert parsed.polarity == polarity_of(label, scale) and parsed.score == round(label, 2)
        assert len(completion.split()) < 60
        assert completion == rule_based_rationale(text, label, scale)
