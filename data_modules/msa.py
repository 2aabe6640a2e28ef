"""The one multimodal DataModule shared by teacher synthesis, SFT, Hint-GRPO and evaluation.

Reads an MMSA raw dataset (label.csv + Raw/<video_id>/<clip_id>.mp4), validates the table, decodes every clip once
(PyAV; cached on disk so later epochs and runs only read arrays), and collates batches with the checkpoint's own
processor, so the placeholder tokens, TMRoPE inputs and features are exactly what the model expects.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from msathinker.dc_format import task_instruction
from msathinker.media import SAMPLE_RATE, MediaError, decode_clip
from msathinker.scales import SCALES, Scale, scale_of

log = logging.getLogger(__name__)

Modality = Literal["text", "audio", "video"]
REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MMSA_COLUMNS = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode")
MODES = ("train", "valid", "test")


class DataError(ValueError):
    """Bad dataset input; the message names the file, clip or key and the problem."""


@dataclass(frozen=True)
class ClipRecord:
    id: str
    """MMSA's sample id: video_id + "$_$" + clip_id."""
    video_id: str
    clip_id: str
    text: str
    label: float
    mode: str
    path: Path


@dataclass(frozen=True)
class MediaOptions:
    video: bool
    audio: bool
    fps: float
    min_frames: int
    max_frames: int
    max_pixels: int
    max_audio_seconds: float


def clip_id_of(video_id: str, clip_id: str) -> str:
    return f"{video_id}$_${clip_id}"


def read_label_table(
    root: Path, scale: Scale, on_bad_clip: Literal["error", "skip"] = "error"
) -> tuple[list[ClipRecord], list[str]]:
    """Parse and validate `root`/label.csv. Returns the good records and one message per skipped row.

    Table-level problems (missing file or column) always raise; per-clip problems raise DataError unless
    on_bad_clip == "skip", where they are returned as messages and the clip is left out.
    """
    label_csv = root / "label.csv"
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: file not found (expected the MMSA layout: <root>/label.csv, <root>/Raw/...)")
    data = label_csv.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{label_csv}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the table as UTF-8 "
            "(in Excel: CSV UTF-8)"
        ) from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": csv itself reads \n and \r\n line ends
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{label_csv}: missing column(s) {', '.join(missing)}; has {reader.fieldnames}")
    rows = list(reader)
    raw_root = (root / "Raw").resolve()
    problems: list[str] = []
    records: list[ClipRecord] = []
    first_line: dict[str, int] = {}
    duplicated: set[str] = set()

    def bad(line: int, cid: str, problem: str) -> None:
        message = f"{label_csv}:{line}: clip {cid!r}: {problem}"
        if on_bad_clip == "error":
            raise DataError(message)
        problems.append(message)

    for line, row in enumerate(rows, start=2):
        video_id, clip = (row["video_id"] or "").strip(), (row["clip_id"] or "").strip()
        cid = clip_id_of(video_id, clip)
        if cid in first_line:
            bad(line, cid, f"duplicate id (first seen on line {first_line[cid]})")
            duplicated.add(cid)
            continue
        first_line[cid] = line
        path = (raw_root / video_id / f"{clip}.mp4").resolve()
        if not video_id or not clip or raw_root not in path.parents:
            bad(line, cid, f"id would resolve outside the dataset's Raw/ directory ({path})")
            continue
        try:
            label = float(row["label"])
        except (TypeError, ValueError):
            bad(line, cid, f"label {row['label']!r} is not a number")
            continue
        if not math.isfinite(label) or not scale.contains(label):
            bad(line, cid, f"label {label} outside the {scale.name} scale [{scale.low}, {scale.high}]")
            continue
        mode = (row["mode"] or "").strip()
        if mode not in MODES:
            bad(line, cid, f"mode {mode!r} is not one of {MODES}")
            continue
        records.append(ClipRecord(cid, video_id, clip, row["text"] or "", label, mode, path))
    if duplicated:  # which of two rows is right is unknown: with skip, drop every row of a duplicated id
        records = [r for r in records if r.id not in duplicated]
    return records, problems


def read_targets(path: Path) -> dict[str, str]:
    """SFT targets from a JSONL of {"id", "completion"} records (synthesis output: rows with kept=false ignored)."""
    targets: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "id" not in record or "completion" not in record:
                raise DataError(f"{path}:{line_no}: a target record needs the keys 'id' and 'completion'")
            if record.get("kept") is False:
                continue
            if record["id"] in targets:
                raise DataError(f"{path}:{line_no}: duplicate target for clip {record['id']!r}")
            targets[record["id"]] = record["completion"]
    return targets


MEDIA_CACHE_FORMAT = 2
"""What a cache entry holds; part of the key, so entries of an older format are never read (bump it when it
changes). 2: frame_spacing added."""


class MediaCache:
    """Decoded clips as .npz files keyed by file identity, decode options and MEDIA_CACHE_FORMAT, written atomically.

    An entry holds `frames` and `frame_spacing` (seconds between frames, a 0-d array) when video is decoded, and
    `audio` when audio is.
    """

    def __init__(self, directory: Path | None, options: MediaOptions):
        self.directory = directory
        self.options = options

    def _path(self, media: Path) -> Path | None:
        if self.directory is None:
            return None
        stat = media.stat()
        identity = [MEDIA_CACHE_FORMAT, str(media), stat.st_size, stat.st_mtime_ns, self.options.__dict__]
        key = json.dumps(identity, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.npz"

    def load(self, media: Path) -> dict[str, np.ndarray]:
        """The decoded media of a clip's file, from the cache or by decoding (and then caching) it."""
        path = self._path(media) if media.is_file() else None
        if path is not None and path.is_file():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        o = self.options
        clip = decode_clip(
            media,
            video=o.video,
            audio=o.audio,
            fps=o.fps,
            min_frames=o.min_frames,
            max_frames=o.max_frames,
            max_pixels=o.max_pixels,
        )
        media = {}
        if clip.frames is not None:
            media["frames"] = clip.frames
            media["frame_spacing"] = np.float64(clip.frame_spacing)
        if clip.audio is not None:
            media["audio"] = clip.audio[: int(o.max_audio_seconds * SAMPLE_RATE)]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
            np.savez(tmp, **media)
            os.replace(tmp, path)
        return media


class MSADataset(Dataset):
    """Clips of one split; items are dicts with the metadata, the decoded media and the optional SFT target."""

    def __init__(
        self,
        records: list[ClipRecord],
        cache: MediaCache,
        dataset: str,
        targets: dict[str, str] | None,
        blank_ids: frozenset[str] = frozenset(),
    ):
        self.records = records
        self.cache = cache
        self.dataset = dataset
        self.scale = scale_of(dataset).name
        self.targets = targets
        self.blank_ids = blank_ids

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        item = {"id": r.id, "text": r.text, "label": r.label, "dataset": self.dataset, "scale": self.scale}
        item.update(self.cache.load(r.path))
        if r.id in self.blank_ids:  # same shapes, no information: black frames, silence, no words
            item.update(text="", **{k: np.zeros_like(item[k]) for k in ("frames", "audio") if k in item})
        if self.targets is not None:
            item["target"] = self.targets[r.id]
        return item


class MSACollator:
    """Builds the Qwen2.5-Omni conversation per clip and runs the checkpoint's processor on the batch.

    Returns {"inputs": model kwargs, "meta": ids/labels/...}. With targets, the assistant turn is the target plus
    <|im_end|> and `inputs["labels"]` masks everything else (prompt, system, media placeholders, padding) with -100.
    """

    def __init__(
        self,
        processor,
        scale: Scale,
        modalities: tuple[str, ...],
        use_audio_in_video: bool,
        min_pixels: int,
        max_pixels: int,
        system_prompt: str | None,
        output_format: str,
    ):
        self.processor = processor
        self.scale = scale
        self.modalities = modalities
        self.use_audio_in_video = use_audio_in_video
        self.video_options = {
            "do_sample_frames": False,
            "cap_pixels_per_frame": True,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        }
        self.system_prompt = system_prompt
        self.output_format = output_format
        self.instruction = task_instruction(scale, output_format)
        tok = processor.tokenizer
        self.im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
        self.assistant_header_len = len(tok("<|im_start|>assistant\n")["input_ids"])

    def videos_kwargs(self, item: dict[str, Any]) -> dict[str, Any]:
        """The processor's video options for one clip. `fps` is the clip's own sampling rate, 1 / its frame spacing,
        so the processor's video_second_per_grid (temporal_patch_size / fps) is the time a temporal patch spans."""
        return {**self.video_options, "fps": 1.0 / float(item["frame_spacing"])}

    def conversation(self, item: dict[str, Any]) -> list[dict]:
        content: list[dict] = []
        if "video" in self.modalities:
            content.append({"type": "video", "video": item["id"]})
        if "audio" in self.modalities and not self.use_audio_in_video:
            content.append({"type": "audio", "audio": item["id"]})
        text = f"Transcript: {item['text']}\n{self.instruction}" if "text" in self.modalities else self.instruction
        if item.get("note"):  # an extra line for this clip only (e.g. the label for a label-conditioned teacher)
            text += "\n" + item["note"]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return messages

    def prompts(self, items: list[dict[str, Any]]) -> list[str]:
        """The rendered chat prompts, ending with the assistant header (what generation continues from)."""
        return [
            self.processor.apply_chat_template(self.conversation(it), add_generation_prompt=True, tokenize=False)
            for it in items
        ]

    def __call__(self, items: list[dict[str, Any]], assistant_prefixes: list[str] | None = None) -> dict[str, Any]:
        texts = self.prompts(items)
        with_targets = all("target" in it for it in items)
        if with_targets:
            texts = [t + it["target"] + "<|im_end|>" for t, it in zip(texts, items, strict=True)]
        elif assistant_prefixes is not None:
            texts = [t + p for t, p in zip(texts, assistant_prefixes, strict=True)]
        audio_kwargs = None
        if "audio" in self.modalities:  # every clip's features padded to the batch's longest, so they stack
            hop = self.processor.feature_extractor.hop_length
            longest = max(it["audio"].size for it in items)
            audio_kwargs = {"max_length": hop * -(-longest // hop), "truncation": True}
        # One processor call per clip: the processor gives every video of a call the same time per temporal patch
        # (video_second_per_grid = temporal_patch_size / fps; with use_audio_in_video the audio/video interleaving
        # follows it too) and each clip has its own frame spacing. The calls' outputs are padded and stacked here.
        parts = [
            self.processor(**self.processor_kwargs(t, it, audio_kwargs)) for t, it in zip(texts, items, strict=True)
        ]
        inputs = self.stack(parts)
        if with_targets:
            inputs["labels"] = self.assistant_labels(inputs["input_ids"], inputs["attention_mask"])
        if self.use_audio_in_video and "audio" in self.modalities:
            inputs["use_audio_in_video"] = True
        meta: dict[str, Any] = {"id": [it["id"] for it in items], "text": [it["text"] for it in items]}
        if all("label" in it for it in items):  # dataset clips; new clips (the analyze command) have no label
            meta["dataset"] = [it["dataset"] for it in items]
            meta["scale"] = [it["scale"] for it in items]
            meta["label"] = torch.tensor([it["label"] for it in items], dtype=torch.float32)
        return {"inputs": inputs, "meta": meta}

    def processor_kwargs(self, text: str, item: dict[str, Any], audio_kwargs: dict | None) -> dict[str, Any]:
        """The processor call of one clip's rendered text."""
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if "video" in self.modalities:
            kwargs["videos"] = [item["frames"]]
            kwargs["videos_kwargs"] = self.videos_kwargs(item)
        if audio_kwargs is not None:
            kwargs["audio"] = [item["audio"]]
            kwargs["audio_kwargs"] = audio_kwargs
            if self.use_audio_in_video:
                kwargs["load_audio_from_video"] = True
                kwargs["audio_from_video_indices"] = [0]
        return kwargs

    def stack(self, parts: list) -> dict[str, Any]:
        """One batch of per-clip processor outputs: token ids left-padded by the tokenizer, the media tensors (one
        row or one block of patches per clip, audio features already of equal length) concatenated in order."""
        tokens = {key: [p[key][0].tolist() for p in parts] for key in ("input_ids", "attention_mask")}
        inputs = dict(self.processor.tokenizer.pad(tokens, return_tensors="pt"))
        inputs.update({key: torch.cat([p[key] for p in parts]) for key in parts[0] if key not in inputs})
        return inputs

    def assistant_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids with everything before the last assistant header (and padding) set to -100."""
        labels = torch.full_like(input_ids, -100)
        for row in range(input_ids.shape[0]):
            starts = (input_ids[row] == self.im_start_id).nonzero().flatten()
            begin = int(starts[-1]) + self.assistant_header_len
            labels[row, begin:] = input_ids[row, begin:]
        return labels.masked_fill(attention_mask == 0, -100)


class EpochSeededSampler(DistributedSampler):
    """Shuffles with seed + epoch, so any epoch's order is known without replaying the earlier ones, skips the
    samples a resumed run had already consumed in its first epoch (mid-epoch `fit --ckpt_path last`), and gives
    rank r of `num_replicas` the positions r, r + num_replicas, ... of that order.

    With batch_size b per rank, global step s therefore trains on positions [s*b*W, (s+1)*b*W) of the epoch's order
    on any number W of ranks: the same clips as one process with batch_size b*W. The tail is padded by repeating
    the order's first samples so every rank gets as many batches (DistributedSampler's rule). It is a
    DistributedSampler so Lightning leaves it in place instead of wrapping it in another one."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        resume_epoch: int = 0,
        resume_skip: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.resume_epoch, self.resume_skip = resume_epoch, resume_skip

    def _order(self) -> list[int]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.tolist()
        order = order[self.resume_skip :] if self.epoch == self.resume_epoch else order
        padding = -len(order) % self.num_replicas
        return order + (order * (padding // max(len(order), 1) + 1))[:padding]

    def __iter__(self):
        return iter(self._order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        size = len(self.dataset) - (self.resume_skip if self.epoch == self.resume_epoch else 0)
        return -(-size // self.num_replicas)


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for a string (Python's hash() changes between processes)."""
    return zlib.crc32(text.encode()) / 2**32


class MSADataModule(L.LightningDataModule):
    """An MMSA-layout dataset as Qwen2.5-Omni batches.

    Args:
        dataset: mosi, mosei, sims, simsv2 (real data; picks the label scale and the metric family) or
            demo_mosi / demo_sims (the synthetic demo data, generated on first use). Required.
        processor_path: checkpoint whose processor builds the batches (a path, hub id or tiny alias). Required; the
            CLI links it to the model's `model_path`.
        data_root: the dataset directory holding label.csv and Raw/. Required for real datasets; leave None for the
            demo datasets to use the cached copy.
        modalities: which inputs the prompt carries, any of text, audio, video (ablations: ["text"],
            ["text", "video"], ...). The task instruction is always there.
        use_audio_in_video: interleave the audio track with the video tokens in 2 s chunks (Qwen2.5-Omni's TMRoPE
            mode) instead of giving it as a separate audio item. Needs both audio and video.
        fps: video frames sampled per second. A clip longer than max_frames / fps is sampled more sparsely, one
            shorter than min_frames / fps more densely; either way the model's video time positions (TMRoPE) use the
            clip's real frame spacing (duration / frames), not 1 / fps.
        min_frames: fewest frames sampled from a clip.
        max_frames: most frames sampled from a clip (longer clips are sampled more sparsely).
        min_pixels: lower bound on pixels per frame after the processor's resize (multiples of 28x28).
        max_pixels: upper bound on pixels per frame; frames are also downscaled to it before caching.
        max_audio_seconds: the audio track is cut after this many seconds.
        system_prompt: system turn; None keeps the chat template's default ("You are a helpful assistant.").
        output_format: "dc" (Discrimination-Calibration) or "plain" (<think>/<answer> only); sets the instruction.
        prompt_scale: label range the prompt states ("mosei" = [-3, 3], "sims" = [-1, 1]); None: the dataset's own.
            Cross-domain evaluation sets it to the model's training range (the CLI links the model's
            prediction_scale here) and the model's answers are mapped back.
        targets: SFT targets for the train split: a JSONL of {"id", "completion"} records (e.g. teacher synthesis
            output; records with kept=false are ignored), or "rules" for the rule-based rationale writer. None
            gives prompt-only train batches (GRPO). Train clips without a target are left out and counted.
        train_split: label.csv mode used for training.
        val_split: mode used for validation.
        test_split: mode used for test.
        predict_split: mode used for predict.
        max_clips: keep only the first N clips of each split (quick runs); None keeps all.
        batch_size: clips per training batch.
        eval_batch_size: clips per validation/test/predict batch (default: batch_size).
        num_workers: DataLoader worker processes; also the threads that decode media in the first pass.
        cache_media: keep decoded media on disk so each clip is decoded once, not every epoch or run.
        media_cache_dir: where the decoded media go (default: <asset cache>/media).
        on_bad_clip: "error" stops at the first bad clip with a message naming it; "skip" leaves bad clips out,
            warns once per clip and logs the count.
        seed: seed of the training shuffle.
        blank_fraction: share of the training clips (a fixed subset, chosen by a hash of the clip id) shown blank:
            black frames, silence and an empty transcript, with their targets kept. Their verdict cannot be read
            from the input, so the model learns to make the "Polarity:" statement and the score follow the
            verdict sentence it opened with. A pretrained LLM already does that; the random-init demo model
            learns it this way, and then a prefix hint (which forces the verdict) steers it. 0 for real runs.
    """

    def __init__(
        self,
        dataset: str,
        processor_path: str,
        data_root: str | None = None,
        modalities: list[Modality] = ["text", "audio", "video"],  # noqa: B006 (jsonargparse needs a literal default)
        use_audio_in_video: bool = False,
        fps: float = 2.0,
        min_frames: int = 4,
        max_frames: int = 16,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 16 * 28 * 28,
        max_audio_seconds: float = 30.0,
        system_prompt: str | None = None,
        output_format: Literal["dc", "plain"] = "dc",
        prompt_scale: Literal["mosei", "sims"] | None = None,
        targets: str | None = None,
        train_split: str = "train",
        val_split: str = "valid",
        test_split: str = "test",
        predict_split: str = "test",
        max_clips: int | None = None,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_media: bool = True,
        media_cache_dir: str | None = None,
        on_bad_clip: Literal["error", "skip"] = "error",
        seed: int = 0,
        blank_fraction: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the CLI logs the full resolved config instead
        self.scale = scale_of(dataset)
        bad = set(modalities) - {"text", "audio", "video"}
        if bad or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of text, audio, video; got {modalities}")
        if use_audio_in_video and not {"audio", "video"} <= set(modalities):
            raise ValueError("use_audio_in_video needs both 'audio' and 'video' in modalities")
        if not 0.0 <= blank_fraction < 1.0:
            raise ValueError(f"blank_fraction must be in [0, 1), got {blank_fraction}")
        if data_root is None and not dataset.startswith("demo_"):
            raise ValueError(f"dataset {dataset!r} needs data_root (the directory holding label.csv and Raw/)")
        self.datasets: dict[str, MSADataset] = {}
        self.skipped: dict[str, int] = {}
        self.collator: MSACollator | None = None

    @property
    def root(self) -> Path:
        if self.hparams.data_root is not None:
            return Path(self.hparams.data_root)
        from msathinker.assets import demo_dataset

        return demo_dataset(self.hparams.dataset)

    def _media_options(self) -> MediaOptions:
        h = self.hparams
        return MediaOptions(
            video="video" in h.modalities,
            audio="audio" in h.modalities,
            fps=h.fps,
            min_frames=h.min_frames,
            max_frames=h.max_frames,
            max_pixels=h.max_pixels,
            max_audio_seconds=h.max_audio_seconds,
        )

    def _media_cache(self) -> MediaCache:
        from msathinker.assets import cache_dir

        directory = None
        if self.hparams.cache_media:
            directory = Path(self.hparams.media_cache_dir or cache_dir() / "media")
        return MediaCache(directory, self._media_options())

    def _splits_for(self, stage: str | None) -> list[str]:
        h = self.hparams
        return {
            "fit": [h.train_split, h.val_split],
            "validate": [h.val_split],
            "test": [h.test_split],
            "predict": [h.predict_split],
        }.get(stage or "", [h.train_split, h.val_split, h.test_split])

    def prepare_data(self) -> None:
        """Decode and cache every clip once (local rank 0 only), so setup() on every rank just reads the cache."""
        if self.hparams.cache_media:
            stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
            self.setup(stage)

    def setup(self, stage: str | None = None) -> None:
        for split in self._splits_for(stage):
            self.setup_split(split)

    def build_collator(self) -> MSACollator:
        """The batch builder (loads the checkpoint's processor once)."""
        from msathinker.modeling import load_processor

        h = self.hparams
        if self.collator is None:
            processor = load_processor(h.processor_path)
            prompt_scale = SCALES[h.prompt_scale] if h.prompt_scale else self.scale
            self.collator = MSACollator(
                processor, prompt_scale, tuple(h.modalities), h.use_audio_in_video, h.min_pixels, h.max_pixels,
                h.system_prompt, h.output_format,
            )  # fmt: skip
        return self.collator

    def setup_split(self, split: str) -> None:
        """Validate, decode and index one split (label.csv mode); the train split also gets its SFT targets."""
        h = self.hparams
        self.build_collator()
        if split in self.datasets:
            return
        root = self.root
        records, problems = read_label_table(root, self.scale, h.on_bad_clip)
        chosen = [r for r in records if r.mode == split][: h.max_clips]
        if not chosen:
            modes = sorted({r.mode for r in records})
            raise DataError(f"{root / 'label.csv'}: split {split!r} has no clips (modes present: {modes})")
        targets = self._targets(records) if split == h.train_split else None
        if targets is not None:
            missing = [r for r in chosen if r.id not in targets]
            if missing:
                log.warning("%s: %d %s clips have no SFT target and are left out", root, len(missing), split)
            chosen = [r for r in chosen if r.id in targets]
            if not chosen:
                raise DataError(f"{h.targets}: no target matches a clip of split {split!r} in {root}")
        cache = self._media_cache()
        good, bad = self._decode_all(chosen, cache, split)
        table_problems = [m for m in problems if split == h.train_split]
        for message in table_problems:
            log.warning("skipped: %s", message)
        self.skipped[split] = len(bad) + len(table_problems)
        if self.skipped[split]:
            log.warning("%s split %r: %d clip(s) skipped (on_bad_clip=skip)", root, split, self.skipped[split])
        if not good:
            raise DataError(f"{root}: every clip of split {split!r} is bad")
        blank = frozenset(r.id for r in good if split == h.train_split and _unit_hash(r.id) < h.blank_fraction)
        self.datasets[split] = MSADataset(good, cache, h.dataset, targets, blank)

    def _targets(self, records: list[ClipRecord]) -> dict[str, str] | None:
        h = self.hparams
        if h.targets is None:
            return None
        if h.targets == "rules":
            from msathinker.rationale import rule_based_rationale

            return {
                r.id: rule_based_rationale(r.text, r.label, self.scale, h.output_format)
                for r in records
                if r.mode == h.train_split
            }
        path = Path(h.targets)
        if not path.is_file():
            raise DataError(f"targets {path}: file not found")
        return read_targets(path)

    def _decode_all(
        self, records: list[ClipRecord], cache: MediaCache, split: str
    ) -> tuple[list[ClipRecord], list[str]]:
        """Decode (or read from cache) every clip once; returns the good records and the bad clips' messages."""
        from tqdm.auto import tqdm

        def check(record: ClipRecord) -> str | None:
            try:
                cache.load(record.path)
            except MediaError as exc:
                return f"clip {record.id!r}: {exc}"
            return None

        with ThreadPoolExecutor(max(1, self.hparams.num_workers)) as pool:
            results = list(
                tqdm(pool.map(check, records), total=len(records), desc=f"decoding {split} clips", unit="clip")
            )
        bad = [message for message in results if message is not None]
        if bad and self.hparams.on_bad_clip == "error":
            raise DataError(f"{bad[0]} (set on_bad_clip: skip to leave bad clips out)")
        for message in bad:
            log.warning("skipped: %s", message)
        return [r for r, m in zip(records, results, strict=True) if m is None], bad

    def _loader(self, split: str, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        if split not in self.datasets:
            self.setup({self.hparams.train_split: "fit"}.get(split))
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.hparams.seed),  # keeps the global RNG untouched by iter()
            collate_fn=self.collator,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        split, batch_size = self.hparams.train_split, self.hparams.batch_size
        if split not in self.datasets:
            self.setup("fit")
        epoch, skip, ranks = 0, 0, {}
        trainer = self.trainer
        if trainer is not None:  # after a restore, the loop state says how far into the epoch the run had got
            epoch = trainer.current_epoch
            ranks = trainer.distributed_sampler_kwargs or {}
            replicas = ranks.get("num_replicas", 1)
            skip = trainer.fit_loop.epoch_loop.batch_progress.current.processed * batch_size * replicas
        sampler = EpochSeededSampler(self.datasets[split], self.hparams.seed, epoch, skip, **ranks)
        return self._loader(split, batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, self.eval_batch_size)

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size
