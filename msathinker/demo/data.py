"""A deterministic synthetic MSA dataset in the MMSA raw layout, for demos and tests.

The real datasets (MOSI, MOSEI, CH-SIMS, SIMS v2) cannot be downloaded here, so the project generates clips that
exercise the same code (label.csv + Raw/<video_id>/<clip_id>.mp4, H.264 + AAC) and that need all three modalities:

- the transcript's words carry a polarity;
- the audio carries polarity in its pitch (high = positive, low = negative, middle = neutral) and part of the
  intensity in its loudness;
- the video carries polarity in its colour (green = positive, red = negative, grey = neutral) and the rest of the
  intensity in its brightness and in the speed of a moving square;
- in about a quarter of the clips ("sarcastic") the words point the wrong way and the delivery is deadpan: the
  pitch is the middle one and the colour grey, as in neutral clips (loudness, brightness and speed still carry the
  intensity). Only the combination tells the true polarity: polar words with a flat voice and face mean the
  opposite of the words. A text-only model tops out near 75% polarity accuracy, an audio-video-only model cannot
  tell sarcastic from neutral clips, and a model that never saw sarcasm (an SFT set whose teacher misread those
  clips, so they were filtered out) gets them systematically wrong: the hard samples Hint-GRPO is for.

Two domains: "demo_mosi" (English, labels on [-3, 3] in steps of 0.2, empty label_T/A/V, clip ids "1", "2", ...)
and "demo_sims" (Chinese, labels on [-1, 1] in steps of 0.2, unimodal labels filled, clip ids "0001", ...), for
cross-domain evaluation.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

LABEL_COLUMNS = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
SARCASM_RATE = 0.3
"""Fraction of non-neutral clips whose words carry the opposite polarity (about 25% of all clips)."""


@dataclass(frozen=True)
class DemoDomain:
    name: str
    scale: str
    splits: dict[str, int]
    """Number of clips per mode."""
    templates: tuple[str, ...]
    nouns: tuple[str, ...]
    words: dict[str, tuple[str, ...]] = field(hash=False)
    """Polarity -> words that carry it in the transcript."""
    width: int
    height: int
    video_fps: int
    audio_rate: int
    clips_per_video: int
    unimodal_labels: bool

    @property
    def high(self) -> float:
        return 3.0 if self.scale == "mosei" else 1.0


DOMAINS: dict[str, DemoDomain] = {
    "demo_mosi": DemoDomain(
        name="demo_mosi",
        scale="mosei",
        splits={"train": 240, "valid": 48, "test": 120},
        templates=(
            "i thought the {noun} was {word}",
            "honestly the {noun} is {word}",
            "that {noun} was just {word}",
            "the {noun} felt {word} to me",
            "well the {noun} is pretty {word}",
        ),
        nouns=("movie", "plot", "acting", "ending", "soundtrack", "story", "cast", "script"),
        words={
            "positive": ("wonderful", "great", "delightful", "brilliant", "lovely", "fantastic", "charming"),
            "negative": ("terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "lousy"),
            "neutral": ("ordinary", "long", "standard", "typical", "average", "normal"),
        },
        width=64,
        height=48,
        video_fps=10,
        audio_rate=44100,
        clips_per_video=6,
        unimodal_labels=False,
    ),
    "demo_sims": DemoDomain(
        name="demo_sims",
        scale="sims",
        splits={"train": 160, "valid": 40, "test": 80},
        templates=("这个{noun}{word}", "我觉得{noun}真的{word}", "说实话{noun}{word}", "{noun}看起来{word}"),
        nouns=("电影", "剧情", "演员", "结局", "音乐", "故事"),
        words={
            "positive": ("很好", "精彩", "让人开心", "太棒了", "令人满意", "讨人喜欢"),
            "negative": ("很差", "无聊", "让人失望", "很难受", "太糟糕了", "令人讨厌"),
            "neutral": ("一般", "普通", "很平常", "正常", "一般般"),
        },
        width=56,
        height=72,
        video_fps=12,
        audio_rate=48000,
        clips_per_video=4,
        unimodal_labels=True,
    ),
}

POLARITY_SIGN = {"positive": 1.0, "negative": -1.0, "neutral": 0.0}
PITCH_HZ = {"positive": 660.0, "neutral": 440.0, "negative": 220.0}
COLOUR = {
    "positive": np.array([40, 200, 70], np.float32),
    "neutral": np.array([128, 128, 128], np.float32),
    "negative": np.array([210, 40, 40], np.float32),
}


@dataclass(frozen=True)
class DemoClip:
    video_id: str
    clip_id: str
    mode: str
    text: str
    label: float
    label_t: float
    label_a: float
    label_v: float
    polarity: str
    sarcastic: bool
    audio_intensity: float
    video_intensity: float
    duration: float

    @property
    def delivered(self) -> str:
        """The polarity the voice and face show: the true one, or neutral (deadpan) for sarcastic clips."""
        return "neutral" if self.sarcastic else self.polarity


def transcript_corpus(domain: DemoDomain) -> list[str]:
    """Every transcript the domain can produce (the small tokenizer is trained on these)."""
    return [
        t.format(noun=n, word=w)
        for t in domain.templates
        for n in domain.nouns
        for ws in domain.words.values()
        for w in ws
    ]


def _round_step(x: float, step: float = 0.2) -> float:
    return round(round(x / step) * step, 1) + 0.0


def sample_clips(domain: DemoDomain, seed: int = 0) -> list[DemoClip]:
    """The clip table of a domain: labels, transcripts and the cue strengths the renderer uses."""
    rng = np.random.default_rng([seed, sum(map(ord, domain.name))])
    clips: list[DemoClip] = []
    video_index = 0
    for mode, count in domain.splits.items():
        for i in range(count):
            if i % domain.clips_per_video == 0:
                video_index += 1
            polarity = rng.choice(["positive", "negative", "neutral"], p=[0.4, 0.4, 0.2]).item()
            a, v = float(rng.uniform()), float(rng.uniform())
            sign = POLARITY_SIGN[polarity]
            if polarity == "neutral":
                label = _round_step(rng.choice([-0.2, 0.0, 0.2])) if domain.scale == "mosei" else 0.0
                a = v = 0.5
            else:
                low = 0.6 if domain.scale == "mosei" else 0.2
                label = _round_step(sign * (low + (domain.high - low) * (a + v) / 2))
            sarcastic = polarity != "neutral" and bool(rng.uniform() < SARCASM_RATE)
            said = {"positive": "negative", "negative": "positive"}[polarity] if sarcastic else polarity
            template = domain.templates[int(rng.integers(len(domain.templates)))]
            noun = domain.nouns[int(rng.integers(len(domain.nouns)))]
            word = domain.words[said][int(rng.integers(len(domain.words[said])))]
            mag = abs(label)
            video_id = (
                f"video_{video_index:04d}"
                if domain.scale == "sims"
                else "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"), 11))
            )
            clip_number = i % domain.clips_per_video + 1
            clips.append(
                DemoClip(
                    video_id=video_id if i % domain.clips_per_video == 0 else clips[-1].video_id,
                    clip_id=f"{clip_number:04d}" if domain.scale == "sims" else str(clip_number),
                    mode=mode,
                    text=template.format(noun=noun, word=word),
                    label=label,
                    label_t=_round_step(POLARITY_SIGN[said] * mag),
                    label_a=_round_step(sign * domain.high * a) if polarity != "neutral" and not sarcastic else 0.0,
                    label_v=_round_step(sign * domain.high * v) if polarity != "neutral" and not sarcastic else 0.0,
                    polarity=polarity,
                    sarcastic=sarcastic,
                    audio_intensity=a,
                    video_intensity=v,
                    duration=round(float(rng.uniform(1.5, 2.5)), 2),
                )
            )
    return clips


def render_audio(clip: DemoClip, rate: int, seed: int) -> np.ndarray:
    """A voiced tone: pitch carries the delivered polarity, loudness (and syllable rate) carry audio intensity."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(clip.duration * rate)) / rate
    f0 = PITCH_HZ[clip.delivered] * (1 + 0.03 * np.sin(2 * np.pi * 1.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * (2.0 + 3.0 * clip.audio_intensity) * t) ** 2
    amplitude = 0.05 + 0.5 * clip.audio_intensity
    wave = amplitude * syllables * tone / 1.6 + 0.005 * rng.standard_normal(t.size)
    return np.clip(wave, -1, 1).astype(np.float32)


def render_frames(clip: DemoClip, domain: DemoDomain, seed: int) -> np.ndarray:
    """Frames: background colour carries the delivered polarity; brightness and a square's speed, video intensity."""
    rng = np.random.default_rng(seed)
    n = round(clip.duration * domain.video_fps)
    h, w = domain.height, domain.width
    brightness = 0.35 + 0.65 * clip.video_intensity
    base = COLOUR[clip.delivered] * brightness
    yy, _xx = np.mgrid[0:h, 0:w]
    shade = 1.0 - 0.25 * (yy / h)[..., None]
    frames = np.empty((n, h, w, 3), np.uint8)
    side = max(6, h // 5)
    speed = 0.5 + 4.5 * clip.video_intensity  # pixels per frame
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    for k in range(n):
        img = base * shade + rng.normal(0, 4, (h, w, 3))
        x = int((x0 + speed * k) % (w - side))
        y = int((y0 + 0.5 * speed * k) % (h - side))
        img[y : y + side, x : x + side] = 235
        frames[k] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, audio_rate: int) -> None:
    """Encode H.264 video (yuv420p) and, if given, an AAC mono track with PyAV."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        vstream = out.add_stream("libx264", rate=Fraction(fps))
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vstream.options = {"preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=audio_rate)
            astream.layout = "mono"
        for frame in frames:
            out.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(vstream.encode())
        if astream is not None:
            size = astream.codec_context.frame_size or 1024
            for start in range(0, audio.size, size):
                chunk = audio[start : start + size]
                aframe = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                aframe.sample_rate, aframe.pts = audio_rate, start
                out.mux(astream.encode(aframe))
            out.mux(astream.encode())


def _write_clip(job: tuple[DemoDomain, DemoClip, int, str]) -> None:
    domain, clip, clip_seed, root = job
    path = Path(root) / "Raw" / clip.video_id / f"{clip.clip_id}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_frames(clip, domain, clip_seed)
    write_mp4(path, frames, domain.video_fps, render_audio(clip, domain.audio_rate, clip_seed), domain.audio_rate)


def _format_label(x: float) -> str:
    return f"{x:.1f}"


def generate_demo_dataset(
    out_dir: str | Path, domain: str = "demo_mosi", seed: int = 0, workers: int | None = None, progress: bool = True
) -> Path:
    """Write the demo dataset of `domain` to `out_dir` (label.csv + Raw/...), atomically; returns `out_dir`.

    The files are first written to a sibling temporary directory that is renamed into place at the end, so an
    interrupted run never leaves a half-written dataset behind. `out_dir` must not exist or be empty.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    if domain not in DOMAINS:
        raise ValueError(f"unknown demo domain {domain!r}; choose from {sorted(DOMAINS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another directory or delete it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "Raw").mkdir(parents=True)
    clips = sample_clips(DOMAINS[domain], seed)
    jobs = [(DOMAINS[domain], clip, seed * 1_000_003 + i, str(tmp)) for i, clip in enumerate(clips)]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc=f"writing {domain} clips", unit="clip", disable=not progress)
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_clip, jobs, chunksize=8):
                    bar.update()
        else:
            for job in jobs:
                _write_clip(job)
                bar.update()
    finally:
        bar.close()
    with open(tmp / "label.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(LABEL_COLUMNS)
        for c in clips:
            unimodal = [_format_label(x) for x in (c.label_t, c.label_a, c.label_v)]
            writer.writerow(
                [c.video_id, c.clip_id, c.text, _format_label(c.label)]
                + (unimodal if DOMAINS[domain].unimodal_labels else ["", "", ""])
                + [_annotation(c), c.mode]
            )
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def _annotation(clip: DemoClip) -> str:
    """MMSA's annotation column holds the polarity ("Positive", "Negative", "Neutral"); the demo marks its sarcastic
    clips "Sarcastic" there instead, so evaluation's per-slice metrics (slice_column: annotation) show them apart."""
    return "Sarcastic" if clip.sarcastic else clip.polarity.capitalize()
