"""Videos for the decoding tests: the codecs ``msta_fast.data.encode`` writes plus AV1, any size, with a display
rotation; and the torchcodec marker (skipped only where FFmpeg or torchcodec is absent, never in CI)."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from msta_fast.data.decode import check_backend

# codec -> (PyAV encoder, pixel format, options, container extension)
ENCODERS = {
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "18"}, ".mp4"),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b:v": "0"}, ".webm"),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": "2"}, ".avi"),
    "av1": ("libsvtav1", "yuv420p", {"preset": "12", "crf": "20"}, ".mp4"),
}


def write_clip(path, frames: np.ndarray, codec: str = "h264", rotation: int = 0, pix_fmt: str | None = None,
               fps: int = 25, hflip: bool = False) -> None:
    """Encode uint8 RGB ``(T, H, W, 3)`` with PyAV; ``rotation``: a display matrix turning the stored frames that
    many degrees counter-clockwise when shown (what phones write for portrait videos), mirrored with ``hflip``."""
    import av

    encoder, default_pix_fmt, options, _ = ENCODERS[codec]
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at the default log level
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt or default_pix_fmt
        stream.options = dict(options)
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for frame in np.ascontiguousarray(frames, dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def stored_rotation(path) -> int:
    """The display rotation a video really carries, read back with PyAV (0 without a display matrix)."""
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).rotation


def _torchcodec_missing() -> str | None:
    try:
        check_backend("torchcodec")
    except RuntimeError as e:
        return str(e)
    return None


TORCHCODEC_MISSING = _torchcodec_missing()
# CI installs FFmpeg and torchcodec (.ci/run): there a missing torchcodec fails the tests instead of skipping them
needs_torchcodec = pytest.mark.skipif(TORCHCODEC_MISSING is not None and not os.environ.get("CI"),
                                      reason=f"torchcodec cannot decode here: {TORCHCODEC_MISSING}")
torchcodec_param = pytest.param("torchcodec", marks=needs_torchcodec)
CPU_BACKENDS = ["decord", "pyav", torchcodec_param]
