"""The demo's DataModule: MSADataModule plus what only the random-init demo model needs (blank training clips)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from data_modules.datamodule import MSADataModule, MSADataset
from data_modules.labels import ClipRecord
from data_modules.media_cache import MediaCache


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for a string (Python's hash() changes between processes)."""
    return zlib.crc32(text.encode()) / 2**32


class BlankedDataset(MSADataset):
    """A split whose clips in `blank_ids` are shown blank: same shapes, no information (black frames, silence, no
    words); their SFT targets are kept."""

    def __init__(
        self,
        records: list[ClipRecord],
        cache: MediaCache,
        targets: dict[str, str] | None,
        blank_ids: frozenset[str],
    ):
        super().__init__(records, cache, targets)
        self.blank_ids = blank_ids

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        if item["id"] in self.blank_ids:
            item.update(text="", **{k: np.zeros_like(item[k]) for k in ("frames", "audio") if k in item})
        return item


class DemoDataModule(MSADataModule):
    """MSADataModule for the quickstart's random-init demo model; every MSADataModule option works the same.

    Args:
        blank_fraction: share of the training clips (a fixed subset, chosen by a hash of the clip id) shown blank:
            black frames, silence and an empty transcript, with their targets kept. Their verdict cannot be read
            from the input, so the model learns to make the "Polarity:" statement and the score follow the
            verdict sentence it opened with. A pretrained LLM already does that; the random-init demo model
            learns it this way, and then a prefix hint (which forces the verdict) steers it. 0 shows none.
    """

    def __init__(self, blank_fraction: float = 0.0, **kwargs: Any):
        if not 0.0 <= blank_fraction < 1.0:
            raise ValueError(f"blank_fraction must be in [0, 1), got {blank_fraction}")
        super().__init__(**kwargs)

    def _dataset(
        self, split: str, records: list[ClipRecord], cache: MediaCache, targets: dict[str, str] | None
    ) -> BlankedDataset:
        train = split == self.hparams.train_split
        blank = frozenset(r.id for r in records if train and _unit_hash(r.id) < self.hparams.blank_fraction)
        return BlankedDataset(records, cache, targets, blank)
