"""Writing videos with PyAV (FFmpeg inside the wheel): for the synthetic data set, tests and benchmarks."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

# container extension -> (FFmpeg encoder, pixel format, encoder options)
CODECS = {
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "18", "tune": "zerolatency"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b:v": "0"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": "2"}),
}
EXTENSIONS = {"h264": ".mp4", "vp9": ".webm", "mjpeg": ".avi"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, codec: str = "h264") -> None:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` (H and W even) into ``path``.

    ``codec``: ``h264`` (.mp4), ``vp9`` (.webm) or ``mjpeg`` (.avi). Every frame is a key frame for MJPEG only.
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {list(CODECS)}")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"expected uint8 (T, H, W, 3) with even H and W, got {frames.shape}")
    encoder, pix_fmt, options = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options)
        if codec == "h264":
            # one thread per file: the generator already runs files in parallel where it matters
            stream.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
