"""The media cache: every clip decoded once (PyAV), kept on disk as arrays so later epochs and runs only read them."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_modules.labels import ClipRecord
from msathinker.media import SAMPLE_RATE, MediaError, decode_clip


@dataclass(frozen=True)
class MediaOptions:
    """How a clip is decoded (the DataModule's options of the same names); part of the cache key."""

    video: bool
    audio: bool
    fps: float
    min_frames: int
    max_frames: int
    max_pixels: int
    max_audio_seconds: float


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


def decode_all(cache: MediaCache, records: list[ClipRecord], workers: int, desc: str) -> list[str | None]:
    """Decode (or read from the cache) every record's clip on `workers` threads, with a progress bar named `desc`.
    Returns, per record, None or its MediaError's message with the clip id."""
    from tqdm.auto import tqdm

    def check(record: ClipRecord) -> str | None:
        try:
            cache.load(record.path)
        except MediaError as exc:
            return f"clip {record.id!r}: {exc}"
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(check, records), total=len(records), desc=desc, unit="clip"))
