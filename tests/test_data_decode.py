"""decode_frames: every backend returns the requested frames (any order, repeats) within codec rounding, and
every unreadable file is a VideoDecodeError naming it."""

import importlib.util

import numpy as np
import pytest
import torch

from msta_fast.data.decode import VideoDecodeError, decode_frames, num_frames, open_video
from msta_fast.data.encode import EXTENSIONS, write_video

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
T, H, W = 24, 32, 64
INDICES = [5, 0, 23, 11, 11, 6]


def smooth_frames() -> np.ndarray:
    """(T, H, W, 3) uint8 gradients (codec-friendly) whose colour changes with the frame number."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.stack([x * 4 + t * 2, y * 5 + t, np.full_like(x, 40 + t * 8)], -1)
                     for t in range(T)]).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    frames = smooth_frames()
    paths = {}
    for codec in ("h264", "vp9", "mjpeg"):
        paths[codec] = root / f"smooth{EXTENSIONS[codec]}"
        write_video(paths[codec], frames, fps=25, codec=codec)
    return frames, paths


def assert_same_frames(decoded: torch.Tensor, source: np.ndarray, indices, mean_tol: float):
    """Close to the source frames, and each decoded frame is nearest to the source frame it should be."""
    assert decoded.dtype == torch.uint8 and decoded.shape == (len(indices), H, W, 3)
    got = decoded.numpy().astype(np.float64)
    err = np.abs(got - source[indices]).mean()
    assert err < mean_tol, f"mean abs error {err:.2f} levels"
    distances = np.abs(got[:, None] - source[None].astype(np.float64)).mean(axis=(2, 3, 4))
    assert distances.argmin(axis=1).tolist() == list(indices)


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_cpu_backends_decode_the_requested_frames(clips, codec, backend):
    source, paths = clips
    assert num_frames(paths[codec]) == T
    assert_same_frames(decode_frames(paths[codec], INDICES, backend=backend), source, INDICES, mean_tol=5)


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_decord_and_pyav_agree(clips, codec):
    _, paths = clips
    a = decode_frames(paths[codec], INDICES, backend="decord").int()
    b = decode_frames(paths[codec], INDICES, backend="pyav").int()
    assert (a - b).abs().float().mean() < 0.5  # both are FFmpeg underneath


@pytest.mark.skipif(not HAS_DALI, reason="nvidia-dali-cuda130 is not installed")
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])  # what DALI decodes on the CPU
def test_dali_cpu_matches_decord_and_pyav(clips, codec):
    source, paths = clips
    dali = decode_frames(paths[codec], INDICES, backend="dali", device="cpu")
    assert_same_frames(dali, source, INDICES, mean_tol=6)
    for backend in ("decord", "pyav"):
        other = decode_frames(paths[codec], INDICES, backend=backend).int()
        # DALI's YUV->RGB differs from FFmpeg's by a few levels of 255
        assert (dali.int() - other).abs().float().mean() < 4


@pytest.mark.skipif(not (HAS_DALI and torch.cuda.is_available()), reason="needs a CUDA GPU and DALI")
def test_dali_nvdec_matches_pyav(clips):
    source, paths = clips
    dali = decode_frames(paths["h264"], INDICES, backend="dali", device="cuda")
    assert dali.is_cuda
    assert_same_frames(dali.cpu(), source, INDICES, mean_tol=6)


def test_decord_narrow_frames_fall_back_to_pyav(tmp_path):
    # decord 0.6 fails on some narrow widths (48 px); those videos must still decode
    frames = smooth_frames()[:, :, :48]
    write_video(tmp_path / "narrow.mp4", frames)
    a = decode_frames(tmp_path / "narrow.mp4", INDICES, backend="decord")
    b = decode_frames(tmp_path / "narrow.mp4", INDICES, backend="pyav")
    assert a.shape == (len(INDICES), H, 48, 3) and torch.equal(a, b)


def unreadable_files(root, paths):
    data = paths["h264"].read_bytes()
    files = {"missing": root / "missing.mp4", "empty": root / "empty.mp4", "text": root / "notes.mp4",
             "truncated": root / "truncated.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a video\n" * 50)
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


@pytest.mark.parametrize("backend", ["decord", "pyav"] + (["dali"] if HAS_DALI else []))
def test_unreadable_files_raise_naming_the_file(clips, tmp_path, backend):
    _, paths = clips
    for kind, path in unreadable_files(tmp_path, paths).items():
        with pytest.raises(VideoDecodeError, match=path.name) as info:
            decode_frames(path, [0, 1], backend=backend)
        assert info.value.path == str(path), kind
    clip = paths["vp9" if backend == "dali" else "h264"]
    with pytest.raises(VideoDecodeError, match="out of range"):
        decode_frames(clip, [0, T], backend=backend)


def test_open_video_reads_twice_and_rejects_bad_arguments(clips):
    source, paths = clips
    with open_video(paths["h264"], "pyav") as video:
        first, second = video.read([3]), video.read([1, 2])
    assert_same_frames(first, source, [3], mean_tol=5)
    assert_same_frames(second, source, [1, 2], mean_tol=5)
    with pytest.raises(ValueError, match="unknown decoding backend"):
        decode_frames(paths["h264"], [0], backend="opencv")
    with pytest.raises(ValueError, match="CPU only"):
        decode_frames(paths["h264"], [0], backend="decord", device="cuda")


def test_pyav_tolerates_a_header_that_overcounts_by_two(clips):
    source, paths = clips
    with open_video(paths["h264"], "pyav") as video:
        video.num_frames = T + 2  # as a container with an edit list may claim
        tail = video.read([T - 1, T, T + 1])
        assert torch.equal(tail[1], tail[0]) and torch.equal(tail[2], tail[0])
        video.num_frames = T + 3
        with pytest.raises(VideoDecodeError, match="truncated"):
            video.read([0, T + 2])
