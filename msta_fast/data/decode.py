"""Frame decoding with four backends: decord (the decord2 package), PyAV, torchcodec and NVIDIA DALI.

``decode_frames(path, indices)`` returns the frames at ``indices`` (any order, repeats allowed) as a uint8
``(len(indices), H, W, 3)`` RGB tensor, upright: every backend applies the container's rotation (the display
matrix of MP4, MOV, MKV and WebM files; phones store portrait videos as rotated landscape ones), so ``H x W`` is
the size as displayed. decord2 and torchcodec rotate themselves; for PyAV and DALI the rotation is read from the
first frame's side data and applied here (a rare mirroring matrix counts by its rotation angle alone, as
decord2 and torchcodec read it: FFmpeg's ``av_display_rotation_get``).

All backends give the same frames within codec rounding: decord2, PyAV and torchcodec are FFmpeg underneath
(decord2 and PyAV bundle their own; torchcodec loads the system's shared libraries, FFmpeg 4 to 9, and says so
when they are missing); DALI converts YUV to RGB with slightly different coefficients (a few levels of 255).

Devices: decord and PyAV decode on the CPU; torchcodec on the CPU or, with ``device="cuda"``, on NVDEC; DALI
decodes VP8, VP9 and MJPEG on the CPU and, with ``device="cuda"``, H.264, HEVC, AV1 and MPEG-4 on NVDEC. CUDA
results are CUDA tensors.

Every failure to read a video (missing, empty, truncated, not a video, index past the decodable end) raises
``VideoDecodeError`` naming the file, so that loaders can skip and count it. ``timeout=`` bounds the time per
video: the CPU backends then decode in a child process (``decode_process``) that is killed when a video takes
longer, which raises ``VideoDecodeTimeout`` (a ``VideoDecodeError``): a video a decoder hangs on is skipped like
a corrupt one. A missing library (torchcodec, FFmpeg, DALI) is a ``RuntimeError`` that says what to install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch

BACKENDS = ("decord", "pyav", "torchcodec", "dali")
# Frames a container header may over-count before a video counts as truncated (PyAV backend).
_TAIL_SLACK = 2


class VideoDecodeError(RuntimeError):
    """A video that cannot be decoded; ``path`` names it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):
        # rebuilt from (path, reason) when it comes back from the decoding process
        return type(self), (self.path, self.reason)


class VideoDecodeTimeout(VideoDecodeError):
    """A video whose decoding took longer than the time limit per video (a hung or far too slow decoder)."""


def quarter_turns(rotation: float) -> int:
    """A display rotation in degrees, counter-clockwise (FFmpeg's convention, PyAV's ``VideoFrame.rotation``) ->
    counter-clockwise quarter turns in 0..3, as ``np.rot90`` takes them."""
    return int(round(rotation / 90)) % 4


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")


def _check_indices(path, indices: np.ndarray, num_frames: int) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise VideoDecodeError(path, f"frame index out of range [0, {num_frames}): {indices.min()}..{indices.max()}")


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


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


def _import_decord():
    """``import decord``, with its library's symbols kept to itself.

    decord loads ``libdecord.so`` with RTLD_GLOBAL, which exports the FFmpeg and dav1d that decord2 bundles to every
    library loaded later; the system FFmpeg that torchcodec uses then calls decord2's dav1d (unversioned symbols,
    another ABI) and crashes on AV1. Loaded with RTLD_LOCAL, decord works the same and the two FFmpegs stay apart.
    """
    if "decord" in sys.modules:
        return sys.modules["decord"]
    original = ctypes.CDLL

    class _LocalDecord(original):
        def __init__(self, name, mode=ctypes.DEFAULT_MODE, *args, **kwargs):
            if name and os.path.basename(str(name)).startswith("libdecord"):
                mode = ctypes.RTLD_LOCAL
            super().__init__(name, mode, *args, **kwargs)

    with _IMPORT_LOCK:
        ctypes.CDLL = _LocalDecord
        try:
            import decord
        finally:
            ctypes.CDLL = original
    return decord


_IMPORT_LOCK = threading.Lock()


class DecordSource(VideoSource):
    """decord's ``VideoReader`` (the decord2 package: it applies the rotation and decodes AV1)."""

    def __init__(self, path: Path, num_threads: int = 1):
        decord = _import_decord()
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
            # decord (0.6 and decord2 3.4) mis-sizes its frame buffers for some narrow widths (48 px): PyAV reads those
            with PyAVSource(self.path) as fallback:
                return fallback.read(indices)
        return torch.from_numpy(frames)

    def close(self) -> None:
        # dropping the reader right away keeps decord from holding FFmpeg contexts across many videos
        self._reader = None


class PyAVSource(VideoSource):
    """Decodes sequentially from the start up to the last wanted frame (exact frame indices, no seek drift), and
    turns the frames upright (PyAV leaves the display matrix to the caller).

    ``frame_size``: (height, width) of the frames as displayed; ``turns``: counter-clockwise quarter turns that make
    a decoded frame upright (both decode the first frame: PyAV gives the display matrix on frames only).
    """

    def __init__(self, path: Path):
        import av

        _check_file(path)
        self.path = path
        self._turns: int | None = None
        try:
            self._container = av.open(str(path))
            if not self._container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = self._container.streams.video[0]
            self._coded_size = (stream.height, stream.width)  # from the header, without decoding
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

    @property
    def turns(self) -> int:
        if self._turns is None:
            try:
                self._container.seek(0)
                first = next(self._container.decode(self._container.streams.video[0]))
            except Exception as e:
                raise VideoDecodeError(self.path, f"PyAV failed to decode the first frame: {e}") from e
            self._turns = quarter_turns(first.rotation)
        return self._turns

    @property
    def frame_size(self) -> tuple[int, int]:
        height, width = self._coded_size
        return (width, height) if self.turns % 2 else (height, width)

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
                if self._turns is None:
                    self._turns = quarter_turns(frame.rotation)
                if i in wanted or i >= last - _TAIL_SLACK:
                    # bicubic chroma upsampling, swscale's default, which decord and torchcodec use: the same
                    # pixels as theirs at odd sizes too (PyAV's bilinear default differs there by ~3 levels)
                    rgb = frame.to_ndarray(format="rgb24", interpolation="BICUBIC")
                    previous = np.rot90(rgb, self._turns)
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


def _ffmpeg_libraries_found() -> bool:
    """Whether the dynamic loader finds FFmpeg's shared libraries (torchcodec does not bundle them)."""
    return ctypes.util.find_library("avutil") is not None


def torchcodec_decoder():
    """torchcodec's ``VideoDecoder`` class, or a RuntimeError that says what to install."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except ImportError as e:
        raise RuntimeError(f"backend='torchcodec' needs the torchcodec package, the release built for your torch "
                           f"{torch.__version__.split('+')[0]} (pip install 'msta-fast[torchcodec]'): {e}") from e
    if torchcodec.ffmpeg_major_version is None:  # torchcodec imports without FFmpeg and fails on first use
        if not _ffmpeg_libraries_found():
            raise RuntimeError(
                "backend='torchcodec' needs FFmpeg's shared libraries (FFmpeg 4 to 9), which torchcodec does not "
                "bundle, and none were found: install them (Debian/Ubuntu: apt-get install ffmpeg; conda: conda "
                "install ffmpeg; macOS: brew install ffmpeg), or use backend='decord' or 'pyav', which bundle theirs")
        raise RuntimeError(
            f"torchcodec {getattr(torchcodec, '__version__', '')} cannot load its FFmpeg libraries although FFmpeg "
            f"is installed: is it the torchcodec release built for torch {torch.__version__.split('+')[0]} (see "
            "torchcodec's compatibility table), and is FFmpeg between versions 4 and 9?")
    return VideoDecoder


class TorchCodecSource(VideoSource):
    """torchcodec's ``VideoDecoder`` on ``device`` (``"cpu"``, or ``"cuda"`` for NVDEC) in exact seek mode: it
    scans the file's packets once when opened, which gives the true frame count and frame-accurate indices (the
    approximate mode estimates the count of a WebM from its duration)."""

    def __init__(self, path: Path, device: str = "cpu"):
        decoder_class = torchcodec_decoder()
        _check_file(path)
        self.path = path
        try:
            # one FFmpeg thread: the loader's parallelism comes from its workers
            self._decoder = decoder_class(str(path), device=device, seek_mode="exact", dimension_order="NHWC",
                                          num_ffmpeg_threads=1)
            self.num_frames = int(self._decoder.metadata.num_frames or 0)
        except Exception as e:  # RuntimeError / ValueError with FFmpeg's message
            raise VideoDecodeError(path, f"torchcodec cannot open it: {e}") from e
        if self.num_frames < 1:
            raise VideoDecodeError(path, "no video frames")

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _check_indices(self.path, indices, self.num_frames)
        try:
            return self._decoder.get_frames_at(indices.tolist()).data
        except Exception as e:
            raise VideoDecodeError(self.path, f"torchcodec failed to decode frames: {e}") from e

    def close(self) -> None:
        self._decoder = None


class DaliSource(VideoSource):
    """One video through a small DALI pipeline (``fn.decoders.video``); the frame count and the rotation (which
    DALI ignores) come from PyAV."""

    def __init__(self, path: Path, device: str = "cpu"):
        _check_file(path)
        self.path, self.device = path, device
        with PyAVSource(path) as probe:
            self.num_frames, self.turns = probe.num_frames, probe.turns

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _check_indices(self.path, indices, self.num_frames)
        encoded = np.fromfile(self.path, dtype=np.uint8)
        try:
            frames = _dali_decode(encoded, indices.astype(np.int32), self.device)
        except Exception as e:
            raise VideoDecodeError(self.path, f"DALI failed to decode frames: {e}") from e
        return torch.rot90(frames, self.turns, dims=(1, 2)).contiguous() if self.turns else frames


_DALI_PIPES: dict[str, object] = {}
_DALI_LOCK = threading.Lock()


def dali_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def _dali_decode(encoded: np.ndarray, frames: np.ndarray, device: str) -> torch.Tensor:
    """Decode ``frames`` of one encoded video with a cached one-sample DALI pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    key = "mixed" if _is_cuda(device) else "cpu"
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


_SOURCES = {"decord": DecordSource, "pyav": PyAVSource, "torchcodec": TorchCodecSource, "dali": DaliSource}


def check_backend(backend: str, device: str = "cpu") -> None:
    """Raise now, with what to do, if ``backend`` cannot decode on ``device`` here (an unknown name, a missing
    library, torchcodec without FFmpeg), rather than on every video of an epoch."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoding backend {backend!r}; choose one of {BACKENDS}")
    if _is_cuda(device) and backend not in ("torchcodec", "dali"):
        raise ValueError(f"backend {backend!r} decodes on the CPU only; use backend='torchcodec' or 'dali' for "
                         f"device={device!r}")
    if backend == "torchcodec":
        torchcodec_decoder()
    if backend == "dali" and not dali_installed():
        raise RuntimeError("backend='dali' needs nvidia-dali: pip install 'msta-fast[dali]'")


def open_here(path: str | os.PathLike, backend: str = "decord", device: str = "cpu") -> VideoSource:
    """``open_video`` in this process, without a time limit."""
    check_backend(backend, device)
    path = Path(path)
    if backend in ("torchcodec", "dali"):
        return _SOURCES[backend](path, str(device))
    return _SOURCES[backend](path)


def open_video(path: str | os.PathLike, backend: str = "decord", device: str = "cpu",
               timeout: float | None = None) -> VideoSource:
    """Open a video for repeated reads (``num_frames``, ``read(indices)``); use it as a context manager.

    ``timeout``: seconds that opening and reading this video may take in all (None or 0: no limit). With a limit
    the CPU backends decode in this process's decoding child (``decode_process``), and a video that takes longer
    raises ``VideoDecodeTimeout``; decoding on a GPU and DALI run here, unbounded (a child process cannot share
    the CUDA context, nor DALI's thread pools).
    """
    if timeout and not _is_cuda(device) and backend in ("decord", "pyav", "torchcodec"):
        check_backend(backend, device)
        # imported here, before the decoding child is forked, so that no child spends its limit on the import
        # (decord's takes most of a second)
        if backend == "decord":
            _import_decord()
        elif backend == "pyav":
            import av  # noqa: F401
        from .decode_process import BoundedSource

        return BoundedSource(Path(path), backend, timeout)
    return open_here(path, backend, device)


def decode_frames(path: str | os.PathLike, indices, backend: str = "decord", device: str = "cpu",
                  timeout: float | None = None) -> torch.Tensor:
    """Frames ``indices`` of the video at ``path`` -> uint8 ``(len(indices), H, W, 3)`` RGB, upright.

    ``device`` matters for ``backend="torchcodec"`` and ``"dali"``: ``"cuda"`` decodes with NVDEC and returns a
    CUDA tensor (DALI on the CPU reads VP8/VP9/MJPEG only). ``timeout``: see ``open_video``. Raises
    ``VideoDecodeError`` naming the file when it cannot be read.
    """
    with open_video(path, backend, device, timeout) as video:
        return video.read(indices)


def num_frames(path: str | os.PathLike, backend: str = "pyav") -> int:
    """Frame count of a video (PyAV reads it from the container header when it is stored there)."""
    with open_video(path, backend if backend in ("decord", "torchcodec") else "pyav") as video:
        return video.num_frames
