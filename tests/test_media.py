"""PyAV decoding: frame sampling, resampling, and the precise error for each bad file."""

from __future__ import annotations

import numpy as np
import pytest

from msathinker.demo.data import write_mp4
from msathinker.media import MediaError, decode_clip


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "c.mp4"
    frames = np.full((30, 96, 128, 3), 90, np.uint8)  # 3 s at 10 fps
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 44100) / 44100)).astype(np.float32)
    write_mp4(path, frames, 10, audio, 44100)
    return path


def test_sampling_resampling_and_downscale(clip):
    media = decode_clip(clip, fps=2.0, max_frames=16, max_pixels=48 * 64)
    assert media.frames.shape == (6, 48, 64, 3) and media.frames.dtype == np.uint8
    assert media.frame_spacing == pytest.approx(0.5)
    assert media.audio.shape == (48000,) and media.audio.dtype == np.float32
    sparse = decode_clip(clip, fps=2.0, max_frames=4)  # 3 s over 4 frames: 0.75 s apart, not 1 / fps
    assert sparse.frames.shape[0] == 4 and sparse.frame_spacing == pytest.approx(0.75)
    dense = decode_clip(clip, fps=0.5, min_frames=4)  # 3 s over 4 frames, although 0.5 fps asks for 2 s apart
    assert dense.frames.shape[0] == 4 and dense.frame_spacing == pytest.approx(0.75)
    assert decode_clip(clip, video=False).frames is None and decode_clip(clip, video=False).frame_spacing is None


def test_errors(tmp_path, clip):
    with pytest.raises(MediaError, match="file not found"):
        decode_clip(tmp_path / "none.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="cannot open as a media file"):
        decode_clip(junk)
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, np.zeros((10, 32, 32, 3), np.uint8), 10, None, 16000)
    with pytest.raises(MediaError, match="no audio track"):
        decode_clip(silent)
    assert decode_clip(silent, audio=False).frames.shape[0] == 4
    still = tmp_path / "still.mp4"
    write_mp4(still, np.zeros((1, 32, 32, 3), np.uint8), 10, None, 16000)
    with pytest.raises(MediaError, match=r"still\.mp4: the video stream holds 1 frame\(s\) over 0\.100 s, too short"):
        decode_clip(still, audio=False)
