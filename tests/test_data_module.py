"""MSADataModule on the demo data: batches, labels masking, modalities, the media cache and every bad input."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import DataError, DemoDataModule, MSADataModule, read_label_table
from msathinker.demo.data import LABEL_COLUMNS, write_mp4
from msathinker.media import decode_clip
from msathinker.modeling import load_thinker
from msathinker.scales import SCALES


def make_dm(tiny_model: str, media_cache: str, cls: type[MSADataModule] = MSADataModule, **kwargs) -> MSADataModule:
    defaults = {
        "dataset": "demo_mosi",
        "processor_path": tiny_model,
        "media_cache_dir": media_cache,
        "max_clips": 6,
        "batch_size": 3,
    }
    return cls(**{**defaults, **kwargs})


def first_batch(dm: MSADataModule, stage: str = "fit", loader: str = "train_dataloader") -> dict:
    dm.setup(stage)
    return next(iter(getattr(dm, loader)()))


def count(ids: torch.Tensor, token_id: int) -> int:
    return int((ids == token_id).sum())


def test_batch_matches_stock_processor(tiny_model, media_cache):
    """Placeholder counts per clip equal what the stock processor gives for the same decoded clip."""
    dm = make_dm(tiny_model, media_cache)
    batch = first_batch(dm, "validate", "val_dataloader")
    inputs, meta = batch["inputs"], batch["meta"]
    assert inputs["input_ids"].shape[0] == 3 and len(meta["id"]) == 3
    assert meta["label"].dtype == torch.float32 and all("$_$" in i for i in meta["id"])
    assert set(meta) == {"id", "label"}  # what the modules read, nothing else
    assert inputs["video_grid_thw"].shape == (3, 3) and inputs["feature_attention_mask"].shape[0] == 3
    processor = dm.collator.processor
    tok = processor.tokenizer
    for row, item in enumerate(dm.datasets["valid"][i] for i in range(3)):
        alone = processor(
            text=dm.collator.prompts([item]),
            videos=[item["frames"]],
            audio=[item["audio"]],
            videos_kwargs=dm.collator.videos_kwargs(item),
            return_tensors="pt",
        )
        for token in ("<|AUDIO|>", "<|VIDEO|>"):
            token_id = tok.convert_tokens_to_ids(token)
            assert count(inputs["input_ids"][row], token_id) == count(alone["input_ids"][0], token_id) > 0
        assert torch.equal(inputs["video_grid_thw"][row], alone["video_grid_thw"][0])
        assert inputs["video_second_per_grid"][row] == alone["video_second_per_grid"][0]


def test_hinted_prompts_are_rendered_from_the_conversation(tiny_model, media_cache):
    """The collator builds the hinted prompt from the conversation: the prompt line ends the user turn and the
    prefix starts the assistant turn. On this tokenizer that is token for token the plain prompt with the hint
    tokens put in place. A strategy that never hints adds nothing to the batch."""
    from callbacks import NoHint, PolarityHint
    from data_modules.collator import chat_turn_markers
    from msathinker.dc_format import hint_prefix, hint_sentence, polarity_of

    dm = make_dm(tiny_model, media_cache)
    dm.setup("fit")
    collator, items = dm.collator, [dm.datasets["train"][i] for i in range(3)]
    assert chat_turn_markers(collator.processor) == ("<|im_start|>assistant\n", "<|im_end|>")
    tok = collator.processor.tokenizer
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for placement in ("prompt", "prefix"):
        batch = collator(items, hint=PolarityHint(placement=placement))
        for row, item in enumerate(items):
            ids = batch["inputs"]["input_ids"][row][batch["inputs"]["attention_mask"][row].bool()]
            polarity = polarity_of(item["label"], dm.scale)
            hinted, prefix = batch["hinted"]["input_ids"][row], batch["hinted"]["assistant_prefix"][row]
            if placement == "prompt":
                cut = int((ids == end_of_turn).nonzero()[-1])
                line = tok("\n" + hint_sentence(polarity), add_special_tokens=False)["input_ids"]
                expected = torch.cat([ids[:cut], torch.tensor(line), ids[cut:]])
                assert prefix == ""
            else:
                assert prefix == hint_prefix(polarity, "dc")
                expected = torch.cat([ids, torch.tensor(tok(prefix, add_special_tokens=False)["input_ids"])])
            assert torch.equal(hinted, expected), placement
    dm.connect(NoHint())
    assert "hinted" not in next(iter(dm.train_dataloader()))
    dm.connect(PolarityHint())
    assert len(next(iter(dm.train_dataloader()))["hinted"]["input_ids"]) == 3


def test_video_time_is_each_clips_real_frame_spacing(tiny_model, media_cache, tmp_path):
    """A 40 s clip (16 frames: 2.5 s apart, not 1 / fps) and a 1 s clip (min_frames 4: 0.25 s apart) in one batch:
    each gets video_second_per_grid = its frame spacing x temporal_patch_size, also with use_audio_in_video."""
    root = tmp_path / "data"
    rows = []
    for clip, seconds in (("long", 40), ("short", 1)):
        (root / "Raw" / "v").mkdir(parents=True, exist_ok=True)
        frames = np.full((10 * seconds, 32, 32, 3), 90, np.uint8)
        write_mp4(root / "Raw" / "v" / f"{clip}.mp4", frames, 10, np.zeros(16000 * seconds, np.float32), 16000)
        rows.append({"video_id": "v", "clip_id": clip, "text": "fine", "label": "0.5", "mode": "test"})
    write_table(root, rows)
    for use_audio_in_video in (False, True):
        dm = make_dm(
            tiny_model, media_cache, dataset="mosi", data_root=str(root), batch_size=2, fps=2.0, min_frames=4,
            max_frames=16, use_audio_in_video=use_audio_in_video,
        )  # fmt: skip
        inputs = first_batch(dm, "test", "test_dataloader")["inputs"]
        patch = dm.collator.processor.video_processor.temporal_patch_size
        assert inputs["video_grid_thw"][:, 0].tolist() == [16 // patch, 4 // patch]
        assert inputs["video_second_per_grid"].tolist() == pytest.approx([2.5 * patch, 0.25 * patch])
    model, _ = load_thinker(tiny_model)
    with torch.no_grad():  # the interleaved placeholders agree with the positions the model computes
        assert torch.isfinite(model(**inputs).logits).all()


def test_media_cache_holds_the_frame_spacing_and_its_format_is_in_the_key(tiny_model, media_cache, monkeypatch):
    import data_modules.media_cache as cache_module

    dm = make_dm(tiny_model, media_cache, max_clips=1)
    dm.setup("validate")
    (entry,) = Path(media_cache).rglob("*.npz")
    with np.load(entry) as cached:
        assert float(cached["frame_spacing"]) == decode_clip(dm.datasets["valid"].records[0].path).frame_spacing
    monkeypatch.setattr(cache_module, "MEDIA_CACHE_FORMAT", cache_module.MEDIA_CACHE_FORMAT + 1)
    make_dm(tiny_model, media_cache, max_clips=1).setup("validate")
    assert len(list(Path(media_cache).rglob("*.npz"))) == 2  # an entry of another format is never read


def test_targets_mask_everything_but_the_assistant_turn(tiny_model, media_cache, tmp_path, demo_mosi):
    ids = []
    with open(demo_mosi / "label.csv", encoding="utf-8") as f:
        ids = [f"{r['video_id']}$_${r['clip_id']}" for r in csv.DictReader(f) if r["mode"] == "train"][:6]
    targets = tmp_path / "targets.jsonl"
    records = [{"id": i, "completion": f"<think>\nclip {n}\n</think>\n<answer>{n}</answer>"} for n, i in enumerate(ids)]
    records.append({"id": "unused", "completion": "x", "kept": False})
    targets.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    dm = make_dm(tiny_model, media_cache, targets=str(targets))
    batch = first_batch(dm)
    labels, input_ids = batch["inputs"]["labels"], batch["inputs"]["input_ids"]
    tok = dm.collator.processor.tokenizer
    by_id = {r["id"]: r["completion"] for r in records}
    for row, clip in enumerate(batch["meta"]["id"]):
        kept = labels[row][labels[row] != -100]
        assert tok.decode(kept) == by_id[clip] + "<|im_end|>"
        assert torch.equal(kept, input_ids[row][labels[row] != -100])


def test_rule_based_targets(tiny_model, media_cache):
    from msathinker.dc_format import parse_completion

    dm = make_dm(tiny_model, media_cache, targets="rules")
    batch = first_batch(dm)
    tok = dm.collator.processor.tokenizer
    for row in range(3):
        kept = batch["inputs"]["labels"][row]
        text = tok.decode(kept[kept != -100], skip_special_tokens=True)
        parsed = parse_completion(text)
        assert parsed.valid and parsed.score == pytest.approx(float(batch["meta"]["label"][row]))


def test_blank_fraction_blanks_a_fixed_share_of_training_clips_only(tiny_model, media_cache):
    dm = make_dm(tiny_model, media_cache, DemoDataModule, targets="rules", blank_fraction=0.3, max_clips=40)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["valid"]
    blank = [train[i] for i, r in enumerate(train.records) if r.id in train.blank_ids]
    assert 4 <= len(blank) <= 20 and not val.blank_ids
    assert all(b["text"] == "" and not b["frames"].any() and not b["audio"].any() and b["target"] for b in blank)
    other = next(train[i] for i, r in enumerate(train.records) if r.id not in train.blank_ids)
    assert other["text"] and other["frames"].any()
    again = make_dm(tiny_model, media_cache, DemoDataModule, targets="rules", blank_fraction=0.3, max_clips=40)
    again.setup("fit")
    assert again.datasets["train"].blank_ids == train.blank_ids
    with pytest.raises(ValueError, match="blank_fraction"):
        make_dm(tiny_model, media_cache, DemoDataModule, blank_fraction=1.0)


@pytest.mark.parametrize(
    ("modalities", "has_video", "has_audio", "has_transcript"),
    [(["text"], False, False, True), (["text", "audio"], False, True, True), (["audio", "video"], True, True, False)],
)
def test_modalities(tiny_model, media_cache, modalities, has_video, has_audio, has_transcript):
    dm = make_dm(tiny_model, media_cache, modalities=modalities)
    batch = first_batch(dm, "validate", "val_dataloader")
    inputs = batch["inputs"]
    assert ("pixel_values_videos" in inputs) == has_video
    assert ("input_features" in inputs) == has_audio
    text = dm.collator.processor.tokenizer.decode(inputs["input_ids"][0])
    assert ("Transcript:" in text) == has_transcript


def test_use_audio_in_video_interleaves_and_runs(tiny_model, media_cache):
    dm = make_dm(tiny_model, media_cache, use_audio_in_video=True)
    inputs = first_batch(dm, "validate", "val_dataloader")["inputs"]
    tok = dm.collator.processor.tokenizer
    text = tok.decode(inputs["input_ids"][-1])
    assert "<|vision_bos|><|audio_bos|>" in text and inputs["use_audio_in_video"] is True
    model, _ = load_thinker(tiny_model)
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all()


def test_media_is_decoded_once(tiny_model, media_cache, monkeypatch):
    import data_modules.media_cache as cache_module

    calls = []
    real = cache_module.decode_clip

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "decode_clip", counting)
    dm = make_dm(tiny_model, media_cache)
    dm.setup("validate")
    for _ in range(2):  # two epochs
        list(dm.val_dataloader())
    make_dm(tiny_model, media_cache).setup("validate")  # a second run reuses the cache
    assert len(calls) == 6 and len(set(calls)) == 6


def test_prepare_data_fills_the_cache_and_setup_builds_what_the_loaders_serve(tiny_model, media_cache, monkeypatch):
    import data_modules.media_cache as cache_module

    dm = make_dm(tiny_model, media_cache)
    with pytest.raises(RuntimeError, match=r"split 'valid' is not set up; call setup\('validate'\)"):
        dm.val_dataloader()
    dm.prepare_data()  # no trainer: every split
    assert not dm.datasets  # nothing kept on self: Lightning runs it on one rank per node
    calls = []
    monkeypatch.setattr(cache_module, "decode_clip", lambda *args, **kwargs: calls.append(args[0]))
    dm.setup("validate")
    assert len(next(iter(dm.val_dataloader()))["meta"]["id"]) == 3 and not calls  # setup only read the cache


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.fixture()
def dataset_copy(tmp_path, demo_mosi):
    """A writable 6-clip copy of the demo (4 train, 2 valid) whose label.csv and files tests can break."""
    root = tmp_path / "data"
    with open(demo_mosi / "label.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["mode"] == "train"][:4] + [r for r in rows if r["mode"] == "valid"][:2]
    for r in rows:
        (root / "Raw" / r["video_id"]).mkdir(parents=True, exist_ok=True)
        src = demo_mosi / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4"
        shutil.copy(src, root / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4")
    write_table(root, rows)
    return root, rows


def write_table(root: Path, rows: list[dict], columns: list[str] = LABEL_COLUMNS) -> None:
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def clip_path(root: Path, row: dict) -> Path:
    return root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"


def no_audio(root, rows):
    clip = decode_clip(clip_path(root, rows[1]), audio=False)
    write_mp4(clip_path(root, rows[1]), clip.frames, 2, None, 16000)
    return "no audio track"


def no_frame(root, rows):
    """Keep the container intact but zero every media byte: streams exist, nothing decodes."""
    data = bytearray(clip_path(root, rows[1]).read_bytes())
    start = data.index(b"mdat") + 4
    size = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start : start - 8 + size] = bytes(size - 8)
    clip_path(root, rows[1]).write_bytes(bytes(data))
    return "no decodable video frame"


def single_frame(root, rows):
    """A video stream of one frame: no time between frames can be derived."""
    clip = decode_clip(clip_path(root, rows[1]))
    write_mp4(clip_path(root, rows[1]), clip.frames[:1], 10, clip.audio, 16000)
    return "too short to give a time between frames"


def corrupt(root, rows):
    clip_path(root, rows[1]).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return "cannot open as a media file"


def missing(root, rows):
    clip_path(root, rows[1]).unlink()
    return "file not found"


def label_out_of_scale(root, rows):
    rows[1]["label"] = "3.4"
    write_table(root, rows)
    return "outside the mosei scale"


def duplicate_id(root, rows):
    write_table(root, [*rows, dict(rows[1])])
    return "duplicate id"


def escaping_id(root, rows):
    rows[1]["video_id"] = "../../outside"
    write_table(root, rows)
    return "outside the dataset's Raw/ directory"


BAD_CLIPS = [missing, corrupt, no_audio, no_frame, single_frame, label_out_of_scale, duplicate_id, escaping_id]


@pytest.mark.parametrize("breaker", BAD_CLIPS, ids=lambda f: f.__name__)
def test_bad_clip_errors_name_the_clip(tiny_model, media_cache, dataset_copy, breaker):
    root, rows = dataset_copy
    problem = breaker(root, rows)
    dm = make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root))
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert problem in message
    assert rows[1]["clip_id"] in message and rows[1]["video_id"] in message


@pytest.mark.parametrize("breaker", BAD_CLIPS, ids=lambda f: f.__name__)
def test_bad_clip_skipped_with_warning_and_count(tiny_model, media_cache, dataset_copy, breaker, caplog):
    root, rows = dataset_copy
    problem = breaker(root, rows)
    dm = make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root), on_bad_clip="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and dm.skipped["train"] == 1
    assert any(problem in r.getMessage() for r in caplog.records)
    assert any("1 clip(s) skipped" in r.getMessage() for r in caplog.records)
    bad_id = f"{rows[1]['video_id']}$_${rows[1]['clip_id']}"
    assert all(r.id != bad_id for r in dm.datasets["train"].records)


def test_missing_column(tiny_model, media_cache, dataset_copy):
    root, rows = dataset_copy
    write_table(root, rows, [c for c in LABEL_COLUMNS if c != "label"])
    with pytest.raises(DataError, match=r"label\.csv: missing column\(s\) label"):
        make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root), on_bad_clip="skip").setup("fit")


@pytest.mark.parametrize(
    ("encoding", "line_end"),
    [("utf-8-sig", "\r\n"), ("utf-8-sig", "\n"), ("utf-8", "\r\n")],
    ids=["excel", "bom", "crlf"],
)
def test_label_csv_with_bom_or_crlf_loads(dataset_copy, encoding, line_end):
    """Excel's "CSV UTF-8" starts with a byte order mark and ends lines with CRLF; both read as plain UTF-8."""
    root, rows = dataset_copy
    rows[0]["text"] = "Un café très agréable"
    with open(root / "label.csv", "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, extrasaction="ignore", lineterminator=line_end)
        writer.writeheader()
        writer.writerows(rows)
    records, problems = read_label_table(root, SCALES["mosei"])
    assert problems == []
    assert [(r.video_id, r.clip_id, r.text, r.label, r.mode) for r in records] == [
        (r["video_id"], r["clip_id"], r["text"], float(r["label"]), r["mode"]) for r in rows
    ]


def test_label_csv_not_utf8_names_the_line(dataset_copy):
    root, rows = dataset_copy
    rows[2]["text"] = "Un café très agréable"
    with open(root / "label.csv", "w", newline="", encoding="cp1252") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"label\.csv:4: not UTF-8 \(byte 0xe9\); save the table as UTF-8"):
        read_label_table(root, SCALES["mosei"])


def test_empty_split(tiny_model, media_cache, dataset_copy):
    root, _rows = dataset_copy
    with pytest.raises(DataError, match=r"split 'test' has no clips \(modes present: \['train', 'valid'\]\)"):
        make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root)).setup("test")


def test_bad_targets_file(tiny_model, media_cache, tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "a", "completion": "x"}\n{"id": broken\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: not valid JSON"):
        make_dm(tiny_model, media_cache, targets=str(bad)).setup("fit")


def test_ids_are_strings_with_leading_zeros(tiny_model, media_cache):
    dm = make_dm(tiny_model, media_cache, dataset="demo_sims")
    dm.setup("validate")
    record = dm.datasets["valid"].records[0]
    assert record.clip_id.startswith("0") and len(record.clip_id) == 4
    assert dm.scale.name == "sims"


def test_real_dataset_needs_root():
    with pytest.raises(ValueError, match="needs data_root"):
        MSADataModule(dataset="mosei", processor_path="tiny")


def test_the_real_path_imports_no_demo_code(tmp_path):
    """Only a demo alias ("tiny", "demo_mosi", ...) imports msathinker.demo; a real model path and data root do not."""
    code = (
        "import sys; from data_modules import MSADataModule; from msathinker.assets import resolve_model_path; "
        f"dm = MSADataModule(dataset='mosi', processor_path='Qwen/Qwen2.5-Omni-7B', data_root={str(tmp_path)!r}); "
        "assert dm.root.name and resolve_model_path('Qwen/Qwen2.5-Omni-7B') == 'Qwen/Qwen2.5-Omni-7B'; "
        "print(sorted(m for m in sys.modules if m.startswith('msathinker.demo')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_slice_column_values_and_a_missing_one(tiny_model, media_cache, dataset_copy):
    root, rows = dataset_copy
    rows[0]["annotation"] = " Sarcastic "
    rows[1]["annotation"] = ""
    write_table(root, rows)
    dm = make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root))
    dm.setup("fit")
    ids = [f"{r['video_id']}$_${r['clip_id']}" for r in rows]
    assert dm.slices[ids[0]] == "Sarcastic" and ids[1] not in dm.slices  # stripped; an empty value is no slice
    assert dm.slices[ids[2]] == rows[2]["annotation"]
    write_table(root, rows, [c for c in LABEL_COLUMNS if c != "annotation"])
    with pytest.raises(DataError, match=r"label\.csv: no column 'annotation' to report metrics per slice of .* "
                                        r"set slice_column: null"):  # fmt: skip
        make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root)).setup("fit")
    dm = make_dm(tiny_model, media_cache, dataset="mosi", data_root=str(root), slice_column=None)
    dm.setup("fit")
    assert dm.slices == {}
