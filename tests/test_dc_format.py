"""The completion format (docs/method.md, Output format): the parser never raises, parse(render(x)) == x, every invalid
reason is reported, and the hint / instruction wording fits the format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msathinker.dc_format import (
    POLARITIES,
    DCReasoning,
    ParsedCompletion,
    format_score,
    hint_prefix,
    hint_sentence,
    parse_completion,
    polarity_of,
    render_completion,
    task_instruction,
    verdict_sentence,
)
from msathinker.demo.rationale import rule_based_rationale
from msathinker.scales import SCALES

MOSEI, SIMS = SCALES["mosei"], SCALES["sims"]

FRAGMENTS = ["<think>", "</think>", "<discrimination>", "</discrimination>", "<calibration>", "</calibration>",
             "<answer>", "</answer>", "< /Think >", "<ANSWER>", "</ answer>", "<", ">", "/", "Polarity:",
             "polarity :", "POLARITY", " positive", " Negative", " neutral", "-1.4", "+2", ".5", "3.", "-", "1e-1",
             "abc", "nan", "inf", "9" * 400, "\n", " ", "\t", "\u3000", "是"]  # fmt: skip
scores = st.integers(-300, 300).map(lambda n: n / 100)
polarities = st.sampled_from(POLARITIES)
clean_text = st.text(st.characters(exclude_characters="<>", exclude_categories=["Cs"]), max_size=60).filter(
    lambda s: "polarity" not in s.lower()
)
"""Inner texts the round trip is guaranteed for: no '<' or '>' (no tags) and no "polarity" (no statement)."""
reasonings = st.builds(
    DCReasoning, polarity=polarities, score=scores, discrimination=clean_text, calibration=clean_text
)
tag_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def _check_consistent(parsed: ParsedCompletion, fmt: str) -> None:
    """Invariants of every parse result."""
    assert parsed.valid == (parsed.error is None)
    if parsed.valid:
        assert parsed.has_think and parsed.has_answer and parsed.score is not None
        if fmt == "dc":
            assert parsed.has_discrimination and parsed.has_calibration and parsed.polarity in POLARITIES
    if parsed.score is not None:
        assert parsed.has_answer
    if fmt == "plain":
        assert parsed.polarity is None and parsed.discrimination is None and parsed.calibration is None


@pytest.mark.parametrize("fmt", ["dc", "plain"])
@given(text=st.text())
def test_parser_never_raises_on_any_text(fmt, text):
    _check_consistent(parse_completion(text, fmt), fmt)


@pytest.mark.parametrize("fmt", ["dc", "plain"])
@settings(max_examples=300)
@given(text=tag_soup)
def test_parser_never_raises_on_tag_soup(fmt, text):
    _check_consistent(parse_completion(text, fmt), fmt)


@settings(max_examples=200)
@given(reasoning=reasonings)
def test_parse_of_render_is_identity_dc(reasoning):
    """Round-trip contract (dc). For a DCReasoning whose score is a multiple of 0.01 and whose texts contain no
    tag and (discrimination) no polarity statement, parse_completion(render_completion(r)) is valid and gives
    polarity == r.polarity, score == r.score exactly, discrimination == r.discrimination.strip() and
    calibration == r.calibration.strip() (str.strip: surrounding whitespace is not part of the content)."""
    parsed = parse_completion(render_completion(reasoning))
    assert parsed.valid, parsed.error
    assert parsed.polarity == reasoning.polarity
    assert parsed.score == reasoning.score
    assert parsed.discrimination == reasoning.discrimination.strip()
    assert parsed.calibration == reasoning.calibration.strip()


@settings(max_examples=200)
@given(reasoning=reasonings)
def test_parse_of_render_is_identity_plain(reasoning):
    """Round-trip contract (plain): valid, score == r.score; the plain format carries no polarity and does not
    separate the two texts, so polarity, discrimination and calibration are None."""
    parsed = parse_completion(render_completion(reasoning, "plain"), "plain")
    assert parsed.valid, parsed.error
    assert parsed.score == reasoning.score
    assert (parsed.polarity, parsed.discrimination, parsed.calibration) == (None, None, None)


@settings(max_examples=300)
@given(polarity=polarities, score=st.floats(-1e6, 1e6), disc=st.text() | tag_soup, cal=st.text() | tag_soup)
def test_render_either_refuses_or_round_trips(polarity, score, disc, cal):
    """For any texts and any finite score, render raises ValueError or the result parses back (score rounded to
    2 decimals): render never emits a completion that silently means something else."""
    reasoning = DCReasoning(polarity, score, disc, cal)
    try:
        text = render_completion(reasoning)
    except ValueError:
        return
    parsed = parse_completion(text)
    assert parsed.valid, parsed.error
    assert parsed.polarity == polarity and parsed.score == float(format_score(score))
    assert (parsed.discrimination, parsed.calibration) == (disc.strip(), cal.strip())


def test_render_refuses_what_cannot_round_trip():
    for bad in (
        DCReasoning("negative", -1.0, "x </discrimination> y", "z"),
        DCReasoning("negative", -1.0, "x", "<answer>2</answer>"),
        DCReasoning("negative", -1.0, "Polarity: positive", "z"),
        DCReasoning("negative", float("nan"), "x", "z"),
        DCReasoning("angry", -1.0, "x", "z"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            render_completion(bad)
    with pytest.raises(ValueError):
        render_completion(DCReasoning("negative", -1.0, "x", "z"), "json")  # type: ignore[arg-type]


def test_render_shows_the_documented_format():
    text = render_completion(DCReasoning("negative", -1.4, "cues ...", "intensity reasoning ..."))
    assert text == (
        "<think>\n<discrimination> cues ... Polarity: negative </discrimination>\n"
        "<calibration> intensity reasoning ... </calibration>\n</think>\n<answer>-1.4</answer>"
    )
    plain = render_completion(DCReasoning("negative", -1.4, "cues.", "strong."), "plain")
    assert plain == "<think>\ncues. strong.\n</think>\n<answer>-1.4</answer>"


VALID = render_completion(DCReasoning("negative", -1.4, "sad words, low voice.", "The cues are strong."))
DISC = "<discrimination> sad words, low voice. Polarity: negative </discrimination>"
CAL = "<calibration> The cues are strong. </calibration>"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (VALID.replace("<answer>-1.4</answer>", ""), "no <answer> tag"),
        (VALID + "<answer>2</answer>", "2 <answer> tags"),
        (VALID.replace("</answer>", "</answer></answer>"), "2 </answer> tags"),
        (VALID.replace("<answer>-1.4</answer>", "<answer>-1.4"), "unclosed <answer> tag"),
        (VALID.replace("<answer>-1.4</answer>", "-1.4</answer>"), "</answer> without <answer>"),
        (VALID.replace("<answer>-1.4</answer>", "</answer>-1.4<answer>"), "</answer> before <answer>"),
        (VALID.replace("-1.4", "abc"), "answer is not a number: 'abc'"),
        (VALID.replace("-1.4", ""), "answer is not a number: ''"),
        (VALID.replace("-1.4", "-1.4 or -2"), "answer is not a number: '-1.4 or -2'"),
        (VALID.replace("-1.4", "nan"), "answer is not a number: 'nan'"),
        (VALID.replace("-1.4", "inf"), "answer is not a number: 'inf'"),
        (VALID.replace("-1.4", "1e-1"), "answer is not a number: '1e-1'"),
        (VALID.replace("-1.4", "9" * 400), "answer is not finite"),
        (VALID.replace("<think>", ""), "</think> without <think>"),
        (VALID.replace("</think>", ""), "unclosed <think> tag"),
        ("<think></think>" + VALID, "2 <think> tags"),
        ("Sure! " + VALID, "text before <think>"),
        (VALID + " thanks", "text after </answer>"),
        (VALID.replace("</think>\n<answer>", "</think>\nSo:\n<answer>"), "text between </think> and <answer>"),
        (
            f"<think>\n{DISC}\n{CAL}\n<answer>-1.4</answer>\n</think>",
            "<answer> before </think>",
        ),
        (VALID.replace(CAL + "\n", ""), "no <calibration> tag"),
        (VALID.replace(DISC + "\n", ""), "no <discrimination> tag"),
        (VALID.replace(CAL, CAL + CAL), "2 <calibration> tags"),
        (VALID.replace("</discrimination>", ""), "unclosed <discrimination> tag"),
        (f"<think>\n{CAL}\n{DISC}\n</think>\n<answer>-1.4</answer>", "calibration before discrimination"),
        (
            f"<think>\n<discrimination> x Polarity: negative {CAL} </discrimination>\n</think>\n<answer>-1</answer>",
            "<calibration> inside <discrimination>",
        ),
        (f"{DISC}\n<think>\n{CAL}\n</think>\n<answer>-1.4</answer>", "text before <think>"),
        (f"<think>\n{CAL}\n</think>\n{DISC}\n<answer>-1.4</answer>", "text between </think> and <answer>"),
        (f"<think>\n{DISC}\n</think>\n{CAL}<answer>-1.4</answer>", "text between </think> and <answer>"),
        (VALID.replace("<think>\n", "<think>\nLet me see. "), "text between <think> and <discrimination>"),
        (VALID.replace(CAL, "Then: " + CAL), "text between </discrimination> and <calibration>"),
        (VALID.replace(CAL, CAL + " Done."), "text between </calibration> and </think>"),
        (VALID.replace("Polarity: negative", ""), "no polarity statement in <discrimination>"),
        (VALID.replace("Polarity: negative", "Polarity: sad"), "no polarity statement in <discrimination>"),
        (VALID.replace("Polarity: negative", "polarity: negative, Polarity: neutral"), "2 polarity statements"),
    ],
)
def test_invalid_reasons(text, error):
    parsed = parse_completion(text)
    assert not parsed.valid
    assert parsed.error.startswith(error), parsed.error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (VALID, "DC tags in plain format"),
        ("<think>\nx <calibration>\n</think>\n<answer>1</answer>", "DC tags in plain format"),
        ("<think>x</think>", "no <answer> tag"),
        ("<think>x</think> so <answer>1</answer>", "text between </think> and <answer>"),
    ],
)
def test_invalid_reasons_plain(text, error):
    parsed = parse_completion(text, "plain")
    assert not parsed.valid
    assert parsed.error.startswith(error), parsed.error


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_completion(VALID, "json")  # type: ignore[arg-type]


def test_score_and_polarity_survive_a_sloppy_completion():
    parsed = parse_completion("I think it is <answer> 2.5 </answer>")
    assert not parsed.valid and parsed.score == 2.5 and parsed.polarity is None
    assert parsed.has_answer and not parsed.has_think
    assert parsed.effective_polarity(MOSEI) == "positive"
    sloppy = parse_completion("Sure! " + VALID)
    assert not sloppy.valid and sloppy.polarity == "negative" and sloppy.score == -1.4
    assert parse_completion(VALID + "<answer>2</answer>").score is None  # two answers: no score


def test_effective_polarity():
    assert parse_completion(VALID).effective_polarity(MOSEI) == "negative"
    plain = parse_completion("<think>x</think><answer>0.3</answer>", "plain")
    assert plain.valid and plain.effective_polarity(MOSEI) == "neutral" and plain.effective_polarity(SIMS) == "positive"
    assert parse_completion("nothing").effective_polarity(MOSEI) is None


def test_stated_polarity_wins_over_the_score():
    text = VALID.replace("Polarity: negative", "Polarity: neutral")
    parsed = parse_completion(text)
    assert parsed.valid and parsed.effective_polarity(MOSEI) == "neutral"


def test_whitespace_and_case_tolerance():
    text = (
        "  \n<THINK><Discrimination>cues POLARITY :  Neutral</ DISCRIMINATION >\n\n\t"
        "< calibration >x</calibration></think>  <Answer>\n +0.2 \n</answer>\n"
    )
    parsed = parse_completion(text)
    assert parsed.valid, parsed.error
    assert (parsed.polarity, parsed.score, parsed.discrimination, parsed.calibration) == ("neutral", 0.2, "cues", "x")


@pytest.mark.parametrize(("answer", "score"), [("-1.4", -1.4), ("+2", 2.0), (".5", 0.5), ("3.", 3.0), ("-0", 0.0)])
def test_answer_number_forms(answer, score):
    parsed = parse_completion(VALID.replace("-1.4", answer))
    assert parsed.valid and parsed.score == score


def test_polarity_statement_may_stand_anywhere_in_discrimination():
    parsed = parse_completion(VALID.replace("sad words, low voice. Polarity: negative", "a Polarity: negative b"))
    assert parsed.valid and parsed.polarity == "negative" and parsed.discrimination == "a b"
    chinese = parse_completion(VALID.replace("sad words, low voice.", "声音低沉。"))
    assert chinese.valid and chinese.discrimination == "声音低沉。"


def test_polarity_word_must_be_whole():
    parsed = parse_completion(VALID.replace("Polarity: negative", "Polarity: negatively"))
    assert not parsed.valid and parsed.polarity is None


@pytest.mark.parametrize("polarity", POLARITIES)
def test_hint_prefix_plus_continuation_parses(polarity):
    continuation = (
        f" The voice is low. Polarity: {polarity} </discrimination>\n"
        "<calibration> strong </calibration>\n</think>\n<answer>-2</answer>"
    )
    parsed = parse_completion(hint_prefix(polarity) + continuation)
    assert parsed.valid, parsed.error
    assert parsed.polarity == polarity and parsed.score == -2.0
    assert parsed.discrimination.startswith(verdict_sentence(polarity))
    # the hint alone is not a statement: the model must still state the polarity
    unstated = parse_completion(hint_prefix(polarity) + continuation.replace(f"Polarity: {polarity}", ""))
    assert not unstated.valid and unstated.polarity is None


@pytest.mark.parametrize("polarity", POLARITIES)
def test_plain_hint_prefix_plus_continuation_parses(polarity):
    text = hint_prefix(polarity, "plain") + " The voice is low and strong.\n</think>\n<answer>-2</answer>"
    parsed = parse_completion(text, "plain")
    assert parsed.valid, parsed.error
    assert parsed.score == -2.0 and "<discrimination>" not in hint_prefix(polarity, "plain")


def test_hint_wording_is_shared():
    """The prefix hint forces the verdict sentence the rationale writer opens with; the prompt hint states it."""

    assert hint_prefix("negative") == "<think>\n<discrimination> The overall sentiment is negative."
    assert rule_based_rationale("meh", -1.4, SCALES["mosei"]).startswith(hint_prefix("negative"))
    assert hint_sentence("negative") == "Hint: The overall sentiment is negative."
    assert "Polarity:" not in hint_prefix("negative")
    with pytest.raises(ValueError):
        hint_sentence("angry")  # type: ignore[arg-type]


def test_long_adversarial_inputs_are_handled():
    """200 KB inputs aimed at backtracking and at the tag bookkeeping finish (quickly: no quadratic regex)."""
    inputs = [
        "<" + " " * 200_000,
        "< /" + " " * 200_000 + "x",
        "<think>" * 20_000 + "<answer>" + "1" * 50_000 + "polarity: " * 5_000,
        "<answer>" + "1" * 200_000 + "x</answer>",
        "<think><discrimination>" + "polarity :" * 20_000 + " " * 50_000 + "</discrimination>",
        VALID.replace("-1.4", "." + "5" * 200_000),
        ("< think " * 30_000)[:200_000],
    ]
    for text in inputs:
        for fmt in ("dc", "plain"):
            parsed = parse_completion(text, fmt)
            assert parsed.valid == (parsed.error is None)
    assert parse_completion(inputs[5]).valid  # a long but plain decimal number is a number


@pytest.mark.parametrize(
    ("label", "scale", "polarity"),
    [(0.5, "mosei", "neutral"), (0.51, "mosei", "positive"), (-0.5, "mosei", "neutral"), (-0.51, "mosei", "negative"),
     (0.0, "mosei", "neutral"), (3.0, "mosei", "positive"), (0.1, "sims", "neutral"), (0.11, "sims", "positive"),
     (-0.1, "sims", "neutral"), (-0.11, "sims", "negative"), (-1.0, "sims", "negative")],
)  # fmt: skip
def test_polarity_band(label, scale, polarity):
    assert polarity_of(label, SCALES[scale]) == polarity


@pytest.mark.parametrize(
    ("score", "text"),
    [(-1.4, "-1.4"), (2.0, "2"), (0.333, "0.33"), (-0.001, "0"), (0.0, "0"), (-0.0, "0"), (3, "3"), (10.0, "10"),
     (-2.999, "-3"), (0.1, "0.1"), (-0.666, "-0.67"), (1 / 6, "0.17")],
)  # fmt: skip
def test_format_score(score, text):
    assert format_score(score) == text


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_format_score_refuses_non_finite(bad):
    with pytest.raises(ValueError):
        format_score(bad)


@given(scores)
def test_format_score_round_trips(score):
    assert float(format_score(score)) == score


def test_instruction_states_range_words_and_format():
    for scale, fmt in [(MOSEI, "dc"), (SIMS, "dc"), (MOSEI, "plain")]:
        text = task_instruction(scale, fmt)
        assert f"from {format_score(scale.low)} (strongly negative) to {format_score(scale.high)}" in text
        assert "<answer>" in text and len(text.split()) < 70
    dc = task_instruction(SIMS)
    assert all(word in dc for word in POLARITIES) and "Polarity:" in dc and "0.1" in dc
    assert "<discrimination>" not in task_instruction(MOSEI, "plain")
