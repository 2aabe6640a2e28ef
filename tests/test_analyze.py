"""`python -m msathinker analyze`: new clips (mp4, mkv, webm) through a trained adapter on the tiny checkpoint, the
prompt equal to training's, the output lines, and each bad input's error."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from msathinker.analyze import NewClip, analysis_record, read_run_config
from msathinker.commands import analyze
from msathinker.scales import SCALES

FIELDS = {"id", "file", "polarity", "score", "scale", "discrimination", "calibration", "parse_status", "parse_error",
          "completion"}  # fmt: skip
RUN_CONFIG = """\
model:
  class_path: msathinker.SFTModule
  init_args:
    policy:
      model_path: {model}
      lora: {{r: 4, alpha: 8}}
    generation:
      max_new_tokens: 6
data:
  class_path: data_modules.MSADataModule
  init_args:
    dataset: demo_mosi
    targets: rules
    max_frames: 8
    system_prompt: You are a careful annotator.
"""


def demo_clips(demo_mosi: Path, n: int) -> list[dict]:
    with open(demo_mosi / "label.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["mode"] == "test"][:n]
    return [{**r, "path": demo_mosi / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4"} for r in rows]


def write_media(path: Path, source: Path, video_codec: str | None, audio_codec: str | None) -> Path:
    """Re-encode a demo clip's decoded frames and audio into another container with PyAV."""
    import av

    from msathinker.media import decode_clip

    clip = decode_clip(source, max_pixels=64 * 64)
    with av.open(str(path), "w") as out:  # every stream is added before the first packet is muxed
        video = out.add_stream(video_codec, rate=Fraction(4)) if video_codec else None
        audio = out.add_stream(audio_codec, rate=48000 if audio_codec == "libopus" else 16000) if audio_codec else None
        if audio is not None:
            audio.layout = "mono"
        if video is not None:
            video.width, video.height, video.pix_fmt = clip.frames.shape[2], clip.frames.shape[1], "yuv420p"
            video.options = {"deadline": "realtime", "cpu-used": "8"} if video_codec == "libvpx-vp9" else {}
            for frame in np.repeat(clip.frames, 2, axis=0):
                out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(video.encode())
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(clip.audio[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            resampler = av.AudioResampler(format=audio.format.name, layout="mono", rate=audio.rate)
            for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
                out.mux(audio.encode(chunk))
            out.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny checkpoint (random, non-zero update) with the run config fit would write beside it."""
    import torch

    from msathinker.policy import LoraOptions, PolicyOptions, build_policy

    run = tmp_path_factory.mktemp("run")
    model, _ = build_policy(PolicyOptions(model_path=tiny_model, lora=LoraOptions(r=4, alpha=8, dropout=0.0)))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(RUN_CONFIG.format(model=tiny_model))
    return run / "adapter"


@pytest.fixture(scope="module")
def clips(demo_mosi, tmp_path_factory) -> tuple[Path, Path]:
    """A directory with a demo mp4, an mkv (H.264 + FLAC) and a webm (VP9 + Opus) of other demo clips, and their
    transcripts (JSONL, one row by id, two by file)."""
    directory = tmp_path_factory.mktemp("clips")
    first, second, third = demo_clips(demo_mosi, 3)
    (directory / "talk.mp4").write_bytes(first["path"].read_bytes())
    write_media(directory / "review.mkv", second["path"], "libx264", "flac")
    write_media(directory / "vlog.webm", third["path"], "libvpx-vp9", "libopus")
    transcripts = directory.parent / f"{directory.name}-transcripts.jsonl"
    rows = [{"id": "talk", "text": first["text"]}, {"file": "review.mkv", "text": second["text"]},
            {"file": str(directory / "vlog.webm"), "text": third["text"]}]  # fmt: skip
    transcripts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory, transcripts


def test_analyze_reads_mp4_mkv_and_webm_through_the_adapter(tiny_model, adapter, clips, tmp_path, capsys):
    from msathinker.__main__ import main

    directory, transcripts = clips
    main(["analyze", str(adapter), str(directory), "--transcripts", str(transcripts), "--media_cache_dir",
          str(tmp_path / "media"), "--batch_size", "2"])  # fmt: skip
    result = capsys.readouterr()
    assert f"prompt settings from {adapter.parent / 'config.yaml'}" in result.err
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [r["id"] for r in lines] == ["review", "talk", "vlog"]
    assert all(set(r) == FIELDS and r["scale"] == "mosei" and r["file"].startswith(str(directory)) for r in lines)
    for r in lines:  # the random-init model writes no valid DC text; the status says what could be read
        assert r["parse_status"] in ("valid", "partial", "unparsed") and isinstance(r["completion"], str)
        assert (r["parse_status"] == "unparsed") == (r["score"] is None and r["polarity"] is None)
        assert (r["parse_status"] == "valid") == (r["parse_error"] is None)

    base = tmp_path / "base.jsonl"  # the same prompts on the base checkpoint: the adapter changes the answers
    analyze(tiny_model, str(directory), transcripts=str(transcripts), output=str(base),
            run_config=str(adapter.parent / "config.yaml"), media_cache_dir=str(tmp_path / "media"),
            progress=False)  # fmt: skip
    without = [json.loads(line) for line in base.read_text().splitlines()]
    assert [r["id"] for r in without] == ["review", "talk", "vlog"]
    assert [r["completion"] for r in without] != [r["completion"] for r in lines]


def test_analysis_record_parses_maps_and_reports_the_status():
    clip = NewClip("talk", Path("clips/talk.mkv"), "")
    dc = (
        "<think>\n<discrimination> flat voice, grey picture. Polarity: negative </discrimination>\n"
        "<calibration> strong. </calibration>\n</think>\n<answer>-1.8</answer>"
    )
    mosei, sims = SCALES["mosei"], SCALES["sims"]
    record = analysis_record(clip, dc, "dc", mosei, mosei)
    assert record == {
        "id": "talk", "file": "clips/talk.mkv", "polarity": "negative", "score": -1.8, "scale": "mosei",
        "discrimination": "flat voice, grey picture.", "calibration": "strong.", "parse_status": "valid",
        "parse_error": None, "completion": dc,
    }  # fmt: skip
    assert analysis_record(clip, dc, "dc", mosei, sims)["score"] == -0.6
    partial = analysis_record(clip, "I think <answer>0.4</answer>", "dc", mosei, mosei)
    assert (partial["parse_status"], partial["polarity"], partial["score"]) == ("partial", "neutral", 0.4)
    assert partial["parse_error"] == "no <think> tag"
    unparsed = analysis_record(clip, "no idea", "dc", mosei, mosei)
    assert (unparsed["parse_status"], unparsed["polarity"], unparsed["score"]) == ("unparsed", None, None)


def test_the_prompt_is_the_one_training_builds(tiny_model, demo_mosi, tmp_path):
    """Same run config -> the same token ids, video pixels and audio features as MSADataModule gives in training."""
    import torch

    from data_modules import MSADataModule
    from msathinker.modeling import load_processor

    config = tmp_path / "config.yaml"
    config.write_text(RUN_CONFIG.format(model=tiny_model))
    settings = read_run_config(config)
    assert settings.prompt["max_frames"] == 8 and settings.prompt["system_prompt"] == "You are a careful annotator."
    assert settings.scale == SCALES["mosei"] and settings.generation == {"max_new_tokens": 6}
    dm = MSADataModule(dataset="demo_mosi", processor_path=tiny_model, max_frames=8, max_clips=2,
                       system_prompt="You are a careful annotator.",
                       media_cache_dir=str(tmp_path / "train"))  # fmt: skip
    dm.setup("test")
    training = dm.collator([dm.datasets["test"][i] for i in range(2)])["inputs"]
    cache = settings.media_cache(tmp_path / "analyze")
    items = [{"id": r.clip_id, "text": r.text, **cache.load(r.path)} for r in dm.datasets["test"].records]
    analyzing = settings.prompt_builder(load_processor(tiny_model), settings.scale)(items)["inputs"]
    assert training.keys() == analyzing.keys()
    for key, value in training.items():
        assert torch.equal(value, analyzing[key]) if isinstance(value, torch.Tensor) else value == analyzing[key], key


def test_a_file_with_no_video_stream_is_an_error_naming_it(adapter, demo_mosi, tmp_path):
    sound = write_media(tmp_path / "interview.m4a", demo_clips(demo_mosi, 1)[0]["path"], None, "aac")
    with pytest.raises(SystemExit, match=rf"analyze: {sound}: no video stream \(the model reads text, audio, video\)"):
        analyze(str(adapter), str(sound), media_cache_dir=str(tmp_path / "media"), progress=False)


def test_a_missing_adapter_is_an_error_naming_it(demo_mosi, tmp_path):
    missing = tmp_path / "runs" / "sft" / "adapter"
    with pytest.raises(SystemExit, match=rf"analyze: {missing}: no adapter_config.json \(a peft adapter"):
        analyze(str(missing), str(demo_clips(demo_mosi, 1)[0]["path"]), progress=False)


def test_transcripts_matching_no_clip_are_an_error_naming_the_file(adapter, clips, tmp_path):
    directory, _ = clips
    transcripts = tmp_path / "transcripts.csv"
    transcripts.write_text("id,text\r\nclip_001,so good\r\nclip_002,not for me\r\n", encoding="utf-8-sig")
    with pytest.raises(
        SystemExit,
        match=rf"analyze: transcripts {transcripts}: no row matches a clip \(rows name "
        r"\['clip_001', 'clip_002'\], the clips are \['review', 'talk', 'vlog'\]\)",
    ):
        analyze(str(adapter), str(directory), transcripts=str(transcripts), progress=False)
