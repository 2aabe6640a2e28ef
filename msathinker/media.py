"""Decode a clip's video frames and audio track with PyAV (torchaudio has no build for current torch).

Frames are sampled like qwen-omni-utils does (an even number of frames at `fps`, uniformly spaced, at least
`min_frames`, at most `max_frames`) and downscaled to at most `max_pixels` with swscale, so the media cache holds
what the processor needs and no more. A clip longer than max_frames / fps is sampled more sparsely and one shorter
than min_frames / fps more densely, so each clip carries its real frame spacing (duration / frames, qwen-omni-utils'
rule) for the TMRoPE time positions. Audio is resampled to 16 kHz mono float32 and trimmed to the stream's
duration (AAC priming/padding adds ~20 ms otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class MediaError(Exception):
    """A clip whose media cannot be used; the message names the file and the problem."""


@dataclass
class DecodedClip:
    frames: np.ndarray | None
    """(T, H, W, 3) uint8 frames spread uniformly over the clip, or None when video is not needed."""
    audio: np.ndarray | None
    """(N,) float32 mono waveform at 16 kHz, or None when audio is not needed."""
    frame_spacing: float | None
    """Seconds between sampled frames: the video stream's duration / T (1 / fps only when the clip's length is
    between min_frames / fps and max_frames / fps), or None when video is not needed."""


def _frame_count(duration: float, fps: float, min_frames: int, max_frames: int, available: int) -> int:
    n = min(max(round(duration * fps), min_frames), max_frames, available)
    return max(2, n - n % 2)


def _target_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def decode_clip(
    path: str | Path,
    *,
    video: bool = True,
    audio: bool = True,
    fps: float = 2.0,
    min_frames: int = 4,
    max_frames: int = 16,
    max_pixels: int = 64 * 28 * 28,
) -> DecodedClip:
    """Decode the frames and/or the audio track of one media file. Raises MediaError with a precise reason."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open as a media file ({exc})") from exc
    with container:
        if video and not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        if audio and not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        try:
            frames, frame_spacing = (
                _decode_frames(path, container, fps, min_frames, max_frames, max_pixels) if video else (None, None)
            )
            if audio:
                container.seek(0)
                waveform = _decode_audio(container)
            else:
                waveform = None
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt media ({exc})") from exc
    if frames is not None and len(frames) == 0:
        raise MediaError(f"{path}: no decodable video frame")
    if waveform is not None and waveform.size == 0:
        raise MediaError(f"{path}: audio track has no decodable sample")
    return DecodedClip(frames=frames, audio=waveform, frame_spacing=frame_spacing)


def _decodable(container, stream):
    """The frames of `stream`, passing over packets the decoder rejects (a few corrupt packets are survivable)."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue


def _decode_frames(
    path: Path, container, fps: float, min_frames: int, max_frames: int, max_pixels: int
) -> tuple[np.ndarray, float]:
    """The sampled frames and the seconds between them. Stream-decodes and keeps only the sampled frames, so long
    videos never sit in memory whole."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else fps
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / 1e6
    available = stream.frames or round(duration * rate)
    if available < 2 or duration <= 0:
        raise MediaError(
            f"{path}: the video stream holds {available} frame(s) over {duration:.3f} s, too short to give a time "
            "between frames (the model's video time positions need at least 2 frames and a positive duration); "
            "re-encode the clip or leave it out"
        )
    n = _frame_count(duration, fps, min_frames, max_frames, available)
    targets = np.linspace(0.0, max(duration - 1 / rate, 0.0), n)
    picked: list[np.ndarray] = []
    size = None
    last = None
    for frame in _decodable(container, stream):
        if size is None:
            size = _target_size(frame.width, frame.height, max_pixels)
        last = frame
        while len(picked) < n and (frame.time or 0.0) + 0.5 / rate >= targets[len(picked)]:
            picked.append(frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
        if len(picked) == n:
            break
    if last is None:
        return np.zeros((0, 0, 0, 3), np.uint8), 0.0
    while len(picked) < n:  # the stream ended before its declared duration: repeat the last frame
        picked.append(last.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
    return np.stack(picked), duration / n


def _decode_audio(container) -> np.ndarray:
    import av

    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks = [out.to_ndarray()[0] for frame in _decodable(container, stream) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
    waveform = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if stream.duration is not None and stream.time_base is not None:
        waveform = waveform[: round(float(stream.duration * stream.time_base) * SAMPLE_RATE)]
    return np.ascontiguousarray(waveform, dtype=np.float32)
