"""The one multimodal DataModule shared by teacher synthesis, SFT, Hint-GRPO and evaluation.

Reads an MMSA raw dataset (label.csv + Raw/<video_id>/<clip_id>.mp4): prepare_data() decodes every clip of the
stage into the media cache (once per node), setup() validates the table and builds the stage's splits, and the
loaders serve what setup() built, collated with the checkpoint's own processor.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_modules.collator import MSACollator
from data_modules.labels import ClipRecord, DataError, read_label_table
from data_modules.media_cache import MediaCache, MediaOptions, decode_all
from data_modules.sampler import EpochSeededSampler
from data_modules.targets import read_targets
from msathinker.dc_format import Format
from msathinker.hints import HintStrategy
from msathinker.scales import SCALES, ScaleName, scale_of

log = logging.getLogger(__name__)

Modality = Literal["text", "audio", "video"]


class MSADataset(Dataset):
    """Clips of one split; items are dicts with the id, transcript, label, decoded media and optional SFT target."""

    def __init__(self, records: list[ClipRecord], cache: MediaCache, targets: dict[str, str] | None):
        self.records = records
        self.cache = cache
        self.targets = targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        item = {"id": r.id, "text": r.text, "label": r.label}
        item.update(self.cache.load(r.path))
        if self.targets is not None:
            item["target"] = self.targets[r.id]
        return item


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
        slice_column: a label.csv column whose values cut the evaluated splits into slices: validation and test
            also report every metric per value (`<stage>/<dataset>/<value>/<metric>`, the value lower-cased, e.g.
            test/mosi/negative/MAE). MMSA's "annotation" holds Positive / Negative / Neutral; the demo marks its
            sarcastic clips "Sarcastic" there. Clips with an empty value are in no slice. None: no slices. A name
            that is not a column of label.csv is an error.
        batch_size: clips per training batch.
        eval_batch_size: clips per validation/test/predict batch (default: batch_size).
        num_workers: DataLoader worker processes; also the threads that decode media in the first pass.
        cache_media: keep decoded media on disk so each clip is decoded once, not every epoch or run.
        media_cache_dir: where the decoded media go (default: <asset cache>/media).
        on_bad_clip: "error" stops at the first bad clip with a message naming it; "skip" leaves bad clips out,
            warns once per clip and logs the count.
        seed: seed of the training shuffle.
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
        output_format: Format = "dc",
        prompt_scale: ScaleName | None = None,
        targets: str | None = None,
        train_split: str = "train",
        val_split: str = "valid",
        test_split: str = "test",
        predict_split: str = "test",
        max_clips: int | None = None,
        slice_column: str | None = "annotation",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_media: bool = True,
        media_cache_dir: str | None = None,
        on_bad_clip: Literal["error", "skip"] = "error",
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the CLI logs the full resolved config instead
        self.scale = scale_of(dataset)
        bad = set(modalities) - {"text", "audio", "video"}
        if bad or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of text, audio, video; got {modalities}")
        if use_audio_in_video and not {"audio", "video"} <= set(modalities):
            raise ValueError("use_audio_in_video needs both 'audio' and 'video' in modalities")
        if data_root is None and not dataset.startswith("demo_"):
            raise ValueError(f"dataset {dataset!r} needs data_root (the directory holding label.csv and Raw/)")
        self.datasets: dict[str, MSADataset] = {}
        self.skipped: dict[str, int] = {}
        self.collator: MSACollator | None = None
        self.hint: HintStrategy | None = None

    @property
    def root(self) -> Path:
        from msathinker.assets import dataset_root

        return dataset_root(self.hparams.dataset, self.hparams.data_root)

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
        """Decode every clip of the trainer's stage into the media cache. Lightning runs this once per node (on
        local rank 0) before setup(), so setup() on every rank only reads the cache. Nothing is kept on self (the
        other ranks would not have it); bad clips are left for setup() to report."""
        if not self.hparams.cache_media:
            return
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
        cache = self._media_cache()
        for split in self._splits_for(stage):
            clips, _, _ = self._select(split, report=False)
            decode_all(cache, clips, self.hparams.num_workers, f"caching {split} clips")

    def setup(self, stage: str | None = None) -> None:
        """Build the splits of a stage: "fit" train and validation, "validate", "test" and "predict" their own, None
        all three. A Trainer calls it; code that asks for loaders without a Trainer calls it first."""
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
        chosen, targets, problems = self._select(split)
        cache = self._media_cache()
        results = decode_all(cache, chosen, h.num_workers, f"decoding {split} clips")
        bad = [message for message in results if message is not None]
        if bad and h.on_bad_clip == "error":
            raise DataError(f"{bad[0]} (set on_bad_clip: skip to leave bad clips out)")
        table_problems = [m for m in problems if split == h.train_split]
        for message in [*bad, *table_problems]:
            log.warning("skipped: %s", message)
        self.skipped[split] = len(bad) + len(table_problems)
        root = self.root
        if self.skipped[split]:
            log.warning("%s split %r: %d clip(s) skipped (on_bad_clip=skip)", root, split, self.skipped[split])
        good = [r for r, m in zip(chosen, results, strict=True) if m is None]
        if not good:
            raise DataError(f"{root}: every clip of split {split!r} is bad")
        self.datasets[split] = self._dataset(split, good, cache, targets)

    def _dataset(
        self, split: str, records: list[ClipRecord], cache: MediaCache, targets: dict[str, str] | None
    ) -> MSADataset:
        """The dataset of one split's good clips (a subclass may serve them differently)."""
        return MSADataset(records, cache, targets)

    def _select(self, split: str, report: bool = True) -> tuple[list[ClipRecord], dict[str, str] | None, list[str]]:
        """The clips of one split to decode, their SFT targets (train split, else None) and the label table's
        messages about skipped rows. `report` logs the clips left out for want of a target."""
        h = self.hparams
        root = self.root
        records, problems = read_label_table(root, self.scale, h.on_bad_clip, h.slice_column)
        chosen = [r for r in records if r.mode == split][: h.max_clips]
        if not chosen:
            modes = sorted({r.mode for r in records})
            raise DataError(f"{root / 'label.csv'}: split {split!r} has no clips (modes present: {modes})")
        targets = self._targets(records) if split == h.train_split else None
        if targets is not None:
            missing = [r for r in chosen if r.id not in targets]
            if missing and report:
                log.warning("%s: %d %s clips have no SFT target and are left out", root, len(missing), split)
            chosen = [r for r in chosen if r.id in targets]
            if not chosen:
                raise DataError(f"{h.targets}: no target matches a clip of split {split!r} in {root}")
        return chosen, targets, problems

    def _targets(self, records: list[ClipRecord]) -> dict[str, str] | None:
        h = self.hparams
        if h.targets is None:
            return None
        if h.targets == "rules":  # the demo's stand-in teacher, imported only when named
            from msathinker.demo.rationale import rule_based_rationale

            return {
                r.id: rule_based_rationale(r.text, r.label, self.scale, h.output_format)
                for r in records
                if r.mode == h.train_split
            }
        path = Path(h.targets)
        if not path.is_file():
            raise DataError(f"targets {path}: file not found")
        return read_targets(path)

    def _built(self, split: str, stage: str) -> MSADataset:
        """The dataset setup() built for `split`; a clear error if setup() has not run."""
        if split not in self.datasets:
            raise RuntimeError(
                f"{type(self).__name__}: split {split!r} is not set up; call setup({stage!r}) before asking for its "
                "loader (a Trainer calls it for you)"
            )
        return self.datasets[split]

    def connect(self, hint: HintStrategy | None) -> None:
        """Hint-GRPO's connection (made in its setup): with a hint strategy that gives hints, every training batch
        also carries each clip's hinted prompt, built by the collator from the same conversation."""
        self.hint = hint if hint is not None and hint.gives_hints else None

    def _loader(
        self, dataset: MSADataset, batch_size: int, sampler: Sampler | None = None, hint: HintStrategy | None = None
    ) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.hparams.seed),  # keeps the global RNG untouched by iter()
            collate_fn=self.collator if hint is None else partial(self.collator, hint=hint),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset, batch_size = self._built(self.hparams.train_split, "fit"), self.hparams.batch_size
        epoch, skip, ranks = 0, 0, {}
        trainer = self.trainer
        if trainer is not None:  # after a restore, the loop state says how far into the epoch the run had got
            epoch = trainer.current_epoch
            ranks = trainer.distributed_sampler_kwargs or {}
            replicas = ranks.get("num_replicas", 1)
            skip = trainer.fit_loop.epoch_loop.batch_progress.current.processed * batch_size * replicas
        sampler = EpochSeededSampler(dataset, self.hparams.seed, epoch, skip, **ranks)
        return self._loader(dataset, batch_size, sampler, self.hint)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._built(self.hparams.val_split, "validate"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._built(self.hparams.test_split, "test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._built(self.hparams.predict_split, "predict"), self.eval_batch_size)

    @property
    def slices(self) -> dict[str, str]:
        """Clip id -> its slice_column value, for the clips of the splits set up so far ("" values left out)."""
        return {r.id: r.slice for dataset in self.datasets.values() for r in dataset.records if r.slice}

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size
