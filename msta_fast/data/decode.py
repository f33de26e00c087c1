"""Frame decoding with three backends: decord, PyAV and NVIDIA DALI.

``decode_frames(path, indices)`` returns the frames at ``indices`` (any order, repeats allowed) as a uint8
``(len(indices), H, W, 3)`` RGB tensor. All backends give the same frames within codec rounding (DALI converts
YUV to RGB with slightly different coefficients than FFmpeg: a few levels of 255). DALI decodes VP8, VP9 and
MJPEG on the CPU; ``device="cuda"`` uses its mixed NVDEC decoder (H.264, HEVC, AV1, MPEG-4) and returns a CUDA
tensor.

Every failure to read a video (missing, empty, truncated, not a video, index past the decodable end) raises
``VideoDecodeError`` naming the file, so that loaders can skip and count it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

BACKENDS = ("decord", "pyav", "dali")
# Frames a container header may over-count before a video counts as truncated (PyAV backend).
_TAIL_SLACK = 2


class VideoDecodeError(RuntimeError):
    """A video that cannot be decoded; ``path`` names it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")


def _check_indices(path, indices: np.ndarray, num_frames: int) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise VideoDecodeError(path, f"frame index out of range [0, {num_frames}): {indices.min()}..{indices.max()}")


class VideoSource:
    """An opened video: ``num_frames`` and ``read(indices)``. Subclasses hold one backend's reader."""

    path: Path
    num_frames: int

    def read(self, indices) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DecordSource(VideoSource):
    def __init__(self, path: Path, num_threads: int = 1):
        import decord

        _check_file(path)
        self.path = path
        try:
            # one decoding thread: the loader's parallelism comes from its workers
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
            self.num_frames = len(self._reader)
        except Exception as e:  # decord raises DECORDError or RuntimeError with FFmpeg's message
            raise VideoDecodeError(path, f"decord cannot open it: {e}") from e
        if self.num_frames < 1:
            raise VideoDecodeError(path, "no video frames")

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _check_indices(self.path, indices, self.num_frames)
        try:
            frames = self._reader.get_batch(indices.tolist()).asnumpy()
        except Exception as e:
            if "size must exactly match" not in str(e):
                raise VideoDecodeError(self.path, f"decord failed to decode frames: {e}") from e
            # decord 0.6 mis-sizes its frame buffers for some narrow widths (e.g. 48 px): PyAV reads those
            with PyAVSource(self.path) as fallback:
                return fallback.read(indices)
        return torch.from_numpy(frames)

    def close(self) -> None:
        # dropping the reader right away keeps decord from holding FFmpeg contexts across many videos
        self._reader = None


class PyAVSource(VideoSource):
    """Decodes sequentially from the start up to the last wanted frame (exact frame indices, no seek drift).

    ``frame_size``: (height, width) of the frames, read from the stream header.
    """

    def __init__(self, path: Path):
        import av

        _check_file(path)
        self.path = path
        try:
            self._container = av.open(str(path))
            if not self._container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = self._container.streams.video[0]
            self.frame_size = (stream.height, stream.width)  # from the header, without decoding
            frames = stream.frames
            if frames <= 0:  # WebM and some AVIs do not store the count: count the packets
                frames = sum(1 for p in self._container.demux(stream) if p.size)
                self._container.seek(0)
            self.num_frames = int(frames)
        except VideoDecodeError:
            raise
        except Exception as e:  # av.error.InvalidDataError and friends
            raise VideoDecodeError(path, f"PyAV cannot open it: {e}") from e
        if self.num_frames < 1:
            raise VideoDecodeError(path, "no video frames")

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _check_indices(self.path, indices, self.num_frames)
        wanted = set(indices.tolist())
        last = int(indices.max()) if indices.size else -1
        found: dict[int, np.ndarray] = {}
        decoded, previous = 0, None
        try:
            self._container.seek(0)
            stream = self._container.streams.video[0]
            for i, frame in enumerate(self._container.decode(stream)):
                decoded = i + 1
                if i in wanted or i >= last - _TAIL_SLACK:
                    previous = frame.to_ndarray(format="rgb24")
                    if i in wanted:
                        found[i] = previous
                if i >= last:
                    break
        except Exception as e:
            raise VideoDecodeError(self.path, f"PyAV failed to decode frames: {e}") from e
        missing = sorted(wanted - found.keys())
        if missing and previous is not None and missing[0] >= decoded and last - decoded < _TAIL_SLACK:
            # the header counted a frame or two more than the stream holds (common with edit lists): repeat the last
            found.update((i, previous) for i in missing)
        elif missing:
            raise VideoDecodeError(self.path, f"truncated: frames {missing[:4]}... could not be decoded")
        if not indices.size:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        return torch.from_numpy(np.stack([found[i] for i in indices.tolist()]))

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None


class DaliSource(VideoSource):
    """One video through a small DALI pipeline (``fn.decoders.video``); the frame count comes from PyAV."""

    def __init__(self, path: Path, device: str = "cpu"):
        _check_file(path)
        self.path, self.device = path, device
        with PyAVSource(path) as probe:
            self.num_frames = probe.num_frames

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _check_indices(self.path, indices, self.num_frames)
        encoded = np.fromfile(self.path, dtype=np.uint8)
        try:
            return _dali_decode(encoded, indices.astype(np.int32), self.device)
        except Exception as e:
            raise VideoDecodeError(self.path, f"DALI failed to decode frames: {e}") from e


_DALI_PIPES: dict[str, object] = {}
_DALI_LOCK = threading.Lock()


def _dali_decode(encoded: np.ndarray, frames: np.ndarray, device: str) -> torch.Tensor:
    """Decode ``frames`` of one encoded video with a cached one-sample DALI pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    key = "mixed" if device.startswith("cuda") else "cpu"
    with _DALI_LOCK:
        pipe = _DALI_PIPES.get(key)
        if pipe is None:
            @pipeline_def(batch_size=1, num_threads=1, device_id=0 if key == "mixed" else None,
                          exec_dynamic=True, prefetch_queue_depth=1)
            def single_video():
                data = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                idx = fn.external_source(name="frames", dtype=types.INT32, ndim=1, device="cpu")
                return fn.decoders.video(data, device=key, frames=idx)

            pipe = single_video()
            pipe.build()
            _DALI_PIPES[key] = pipe
        try:
            pipe.feed_input("encoded", [encoded])
            pipe.feed_input("frames", [frames])
            (out,) = pipe.run()
        except Exception:
            del _DALI_PIPES[key]  # a pipeline that raised is not reused
            raise
        if key == "mixed":
            return _dali_to_torch_cuda(out[0])
        return torch.from_numpy(np.array(out.as_array()[0]))


def _dali_to_torch_cuda(tensor) -> torch.Tensor:
    import nvidia.dali.plugin.pytorch as dali_torch

    result = torch.empty(tensor.shape(), dtype=torch.uint8, device="cuda")
    dali_torch.feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream())
    return result


def open_video(path: str | os.PathLike, backend: str = "decord", device: str = "cpu") -> VideoSource:
    """Open a video for repeated reads (``num_frames``, ``read(indices)``); use it as a context manager."""
    path = Path(path)
    if backend == "decord":
        return DecordSource(path)
    if backend == "pyav":
        return PyAVSource(path)
    if backend == "dali":
        return DaliSource(path, device)
    raise ValueError(f"unknown decoding backend {backend!r}; choose one of {BACKENDS}")


def decode_frames(path: str | os.PathLike, indices, backend: str = "decord", device: str = "cpu") -> torch.Tensor:
    """Frames ``indices`` of the video at ``path`` -> uint8 ``(len(indices), H, W, 3)`` RGB.

    ``device`` matters for ``backend="dali"`` only: ``"cpu"`` (VP8/VP9/MJPEG) or ``"cuda"`` (NVDEC; the result is
    a CUDA tensor). Raises ``VideoDecodeError`` naming the file when it cannot be read.
    """
    if device != "cpu" and backend != "dali":
        raise ValueError(f"backend {backend!r} decodes on the CPU only; use backend='dali' for device={device!r}")
    with open_video(path, backend, device) as video:
        return video.read(indices)


def num_frames(path: str | os.PathLike, backend: str = "pyav") -> int:
    """Frame count of a video (PyAV reads it from the container header when it is stored there)."""
    with open_video(path, "decord" if backend == "decord" else "pyav") as video:
        return video.num_frames
