"""The demo dataset: MMSA layout, determinism, and cues that make a text-only shortcut insufficient."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from msathinker.demo.data import DOMAINS, LABEL_COLUMNS, PITCH_HZ, sample_clips
from msathinker.media import decode_clip
from msathinker.scales import SCALES


def read_rows(root):
    with open(root / "label.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == LABEL_COLUMNS
        return list(reader)


def test_layout_and_sizes(demo_mosi):
    rows = read_rows(demo_mosi)
    domain = DOMAINS["demo_mosi"]
    for mode, n in domain.splits.items():
        assert sum(r["mode"] == mode for r in rows) == n
    assert all((demo_mosi / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4").is_file() for r in rows)
    assert all(r["label_T"] == r["label_A"] == r["label_V"] == "" for r in rows)
    videos = {r["video_id"]: r["mode"] for r in rows}
    assert all(videos[r["video_id"]] == r["mode"] for r in rows), "a video's clips all sit in one split"


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_sampling_is_deterministic_and_hard(domain):
    clips = sample_clips(DOMAINS[domain], seed=0)
    assert clips == sample_clips(DOMAINS[domain], seed=0)
    assert clips != sample_clips(DOMAINS[domain], seed=1)
    scale = SCALES[DOMAINS[domain].scale]
    assert all(scale.contains(c.label) for c in clips)
    sarcastic = np.mean([c.sarcastic for c in clips])
    assert 0.18 <= sarcastic <= 0.32, sarcastic
    # The best a text-only reader can do: trust the words' polarity.
    words = {w: p for p, ws in DOMAINS[domain].words.items() for w in ws}
    said = [next(p for w, p in words.items() if w in c.text) for c in clips]
    text_accuracy = np.mean([s == c.polarity for s, c in zip(said, clips, strict=True)])
    assert text_accuracy <= 0.82, text_accuracy


def test_audio_and_video_carry_the_delivered_polarity(demo_mosi):
    """The true polarity, except in sarcastic clips: their delivery is deadpan (neutral pitch and colour)."""
    rows = read_rows(demo_mosi)[:30]
    clips = sample_clips(DOMAINS["demo_mosi"], seed=0)[:30]
    assert any(c.sarcastic for c in clips) and all(c.delivered == "neutral" for c in clips if c.sarcastic)
    for row, clip in zip(rows, clips, strict=True):
        assert row["text"] == clip.text
        media = decode_clip(demo_mosi / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4")
        spectrum = np.abs(np.fft.rfft(media.audio))
        peak_hz = np.argmax(spectrum) * 16000 / media.audio.size
        assert abs(peak_hz - PITCH_HZ[clip.delivered]) < 40, (peak_hz, clip.delivered)
        r, g, _ = media.frames.reshape(-1, 3).mean(0)
        colour = "positive" if g - r > 40 else "negative" if r - g > 40 else "neutral"
        assert colour == clip.delivered


def test_sims_domain_conventions(tmp_path):
    from msathinker.demo.assets import demo_dataset

    rows = read_rows(demo_dataset("demo_sims"))
    assert all(len(r["clip_id"]) == 4 and r["clip_id"].isdigit() for r in rows)
    assert all(r["label_T"] != "" for r in rows)
    assert all(-1 <= float(r["label"]) <= 1 for r in rows)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in rows[0]["text"])


def test_generate_refuses_a_non_empty_directory(tmp_path):
    from msathinker.demo.data import generate_demo_dataset

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_demo_dataset(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_sarcastic_clips_are_marked_in_the_annotation_column(demo_mosi):
    """Evaluation's default slice column (annotation) tells the sarcastic clips apart; the others keep MMSA's
    polarity words."""
    rows = read_rows(demo_mosi)
    clips = {(c.video_id, c.clip_id): c for c in sample_clips(DOMAINS["demo_mosi"], seed=0)}
    for row in rows:
        clip = clips[(row["video_id"], row["clip_id"])]
        assert row["annotation"] == ("Sarcastic" if clip.sarcastic else clip.polarity.capitalize())
    assert sum(r["annotation"] == "Sarcastic" and r["mode"] == "test" for r in rows) == 31
