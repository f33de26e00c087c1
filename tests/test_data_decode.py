"""decode_frames: every backend returns the requested frames (any order, repeats) within codec rounding, upright
(the container's rotation applied alike), at any size, and every unreadable file is a VideoDecodeError naming
it."""

import importlib.util

import numpy as np
import pytest
import torch
from decode_helpers import CPU_BACKENDS, ENCODERS, TORCHCODEC_MISSING, stored_rotation, torchcodec_param, write_clip

import msta_fast.data.decode as decode
from msta_fast.data.decode import VideoDecodeError, check_backend, decode_frames, num_frames, open_video

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
T, H, W = 24, 32, 64
INDICES = [5, 0, 23, 11, 11, 6]
CODECS = ["h264", "vp9", "mjpeg", "av1"]
dali_cpu = [pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="nvidia-dali-cuda130 is not installed"))]


def smooth_frames(height: int = H, width: int = W) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients (codec-friendly) whose colour changes with the frame number."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([x * 4 + t * 2, y * 5 + t, np.full_like(x, 40 + t * 8)], -1)
                     for t in range(T)]).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    frames = smooth_frames()
    paths = {}
    for codec in CODECS:
        paths[codec] = root / f"smooth_{codec}{ENCODERS[codec][3]}"
        write_clip(paths[codec], frames, codec)
    return frames, paths


def assert_same_frames(decoded: torch.Tensor, source: np.ndarray, indices, mean_tol: float):
    """Close to the source frames, and each decoded frame is nearest to the source frame it should be."""
    assert decoded.dtype == torch.uint8 and decoded.shape == (len(indices), *source.shape[1:])
    got = decoded.numpy().astype(np.float64)
    err = np.abs(got - source[indices]).mean()
    assert err < mean_tol, f"mean abs error {err:.2f} levels"
    distances = np.abs(got[:, None] - source[None].astype(np.float64)).mean(axis=(2, 3, 4))
    assert distances.argmin(axis=1).tolist() == list(indices)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backends_decode_the_requested_frames(clips, codec, backend):
    source, paths = clips
    assert num_frames(paths[codec]) == T and num_frames(paths[codec], backend) == T
    assert_same_frames(decode_frames(paths[codec], INDICES, backend=backend), source, INDICES, mean_tol=5)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("backend", ["decord", torchcodec_param])
def test_ffmpeg_backends_agree_with_pyav(clips, codec, backend):
    _, paths = clips
    a = decode_frames(paths[codec], INDICES, backend=backend).int()
    b = decode_frames(paths[codec], INDICES, backend="pyav").int()
    assert (a - b).abs().float().mean() < 0.5  # all three are FFmpeg underneath, with the same colour conversion


@pytest.mark.skipif(not HAS_DALI, reason="nvidia-dali-cuda130 is not installed")
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])  # what DALI decodes on the CPU
def test_dali_cpu_matches_the_other_backends(clips, codec):
    source, paths = clips
    dali = decode_frames(paths[codec], INDICES, backend="dali", device="cpu")
    assert_same_frames(dali, source, INDICES, mean_tol=6)
    for backend in ("decord", "pyav") + (() if TORCHCODEC_MISSING else ("torchcodec",)):
        other = decode_frames(paths[codec], INDICES, backend=backend).int()
        # DALI's YUV->RGB differs from FFmpeg's by a few levels of 255
        assert (dali.int() - other).abs().float().mean() < 4


@pytest.mark.skipif(not (HAS_DALI and torch.cuda.is_available()), reason="needs a CUDA GPU and DALI")
def test_dali_nvdec_matches_pyav(clips):
    source, paths = clips
    dali = decode_frames(paths["h264"], INDICES, backend="dali", device="cuda")
    assert dali.is_cuda
    assert_same_frames(dali.cpu(), source, INDICES, mean_tol=6)


@pytest.mark.skipif(TORCHCODEC_MISSING is not None or not torch.cuda.is_available(),
                    reason="needs a CUDA GPU and torchcodec")
@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_torchcodec_nvdec_matches_pyav(clips, codec):
    source, paths = clips
    frames = decode_frames(paths[codec], INDICES, backend="torchcodec", device="cuda")
    assert frames.is_cuda
    assert_same_frames(frames.cpu(), source, INDICES, mean_tol=6)
    pyav = decode_frames(paths[codec], INDICES, backend="pyav").int()
    assert (frames.cpu().int() - pyav).abs().float().mean() < 4  # NVDEC's YUV->RGB, as DALI's, differs a little


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """The smooth clip stored as it is, with a display matrix turning it 90, -90 or 180 degrees."""
    root = tmp_path_factory.mktemp("rotated")
    paths = {}
    for codec in ("h264", "vp9"):
        for rotation in (90, -90, 180):
            paths[codec, rotation] = root / f"turned_{rotation}_{codec}{ENCODERS[codec][3]}"
            write_clip(paths[codec, rotation], smooth_frames(), codec, rotation=rotation)
    return paths


@pytest.mark.parametrize("rotation", [90, -90, 180])
@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize("backend", CPU_BACKENDS + dali_cpu)
def test_every_backend_turns_rotated_videos_upright(rotated, codec, rotation, backend):
    if backend == "dali" and codec != "vp9":
        pytest.skip("DALI decodes VP9, not H.264, on the CPU")
    path = rotated[codec, rotation]
    assert stored_rotation(path) % 360 == rotation % 360  # the display matrix is really in the file
    upright = np.ascontiguousarray(np.rot90(smooth_frames(), rotation // 90, axes=(1, 2)))
    assert upright.shape[1:3] == ((W, H) if rotation % 180 else (H, W))
    frames = decode_frames(path, INDICES, backend=backend)
    assert_same_frames(frames, upright, INDICES, mean_tol=6 if backend == "dali" else 5)
    with open_video(path, "pyav") as video:
        assert video.frame_size == upright.shape[1:3]  # the size the DALI loader plans its crops with


def test_backends_agree_on_a_mirroring_display_matrix(tmp_path):
    path = tmp_path / "mirrored.mp4"
    write_clip(path, smooth_frames(), rotation=90, hflip=True)
    pyav = decode_frames(path, INDICES, backend="pyav")
    assert pyav.shape == (len(INDICES), W, H, 3)
    for backend in ("decord",) + (() if TORCHCODEC_MISSING else ("torchcodec",)):
        assert (decode_frames(path, INDICES, backend=backend).int() - pyav.int()).abs().float().mean() < 0.5


@pytest.mark.parametrize("codec, pix_fmt", [("h264", "yuv444p"), ("vp9", None), ("av1", None)])
@pytest.mark.parametrize("shape", [(33, 47), (47, 33)])  # odd sizes, landscape and portrait
def test_odd_sizes_decode_alike(tmp_path, codec, pix_fmt, shape):
    source = smooth_frames(*shape)
    path = tmp_path / f"odd{ENCODERS[codec][3]}"
    write_clip(path, source, codec, pix_fmt=pix_fmt)
    pyav = decode_frames(path, INDICES, backend="pyav")
    assert_same_frames(pyav, source, INDICES, mean_tol=5)
    for backend in ("decord",) + (() if TORCHCODEC_MISSING else ("torchcodec",)):
        other = decode_frames(path, INDICES, backend=backend)
        assert other.shape == pyav.shape
        assert (other.int() - pyav.int()).abs().float().mean() < 0.5, backend


def test_decord_narrow_frames_fall_back_to_pyav(tmp_path):
    # decord (0.6 and decord2 3.4) fails on some narrow widths (48 px); those videos must still decode
    frames = smooth_frames()[:, :, :48]
    write_clip(tmp_path / "narrow.mp4", frames)
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


@pytest.mark.parametrize("timeout", [None, 60])  # in this process, and in the decoding child
@pytest.mark.parametrize("backend", CPU_BACKENDS + dali_cpu)
def test_unreadable_files_raise_naming_the_file(clips, tmp_path, backend, timeout):
    _, paths = clips
    for kind, path in unreadable_files(tmp_path, paths).items():
        with pytest.raises(VideoDecodeError, match=path.name) as info:
            decode_frames(path, [0, 1], backend=backend, timeout=timeout)
        assert info.value.path == str(path), kind
    clip = paths["vp9" if backend == "dali" else "h264"]
    with pytest.raises(VideoDecodeError, match="out of range"):
        decode_frames(clip, [0, T], backend=backend, timeout=timeout)


def test_open_video_reads_twice_and_rejects_bad_arguments(clips):
    source, paths = clips
    for timeout in (None, 60):
        with open_video(paths["h264"], "pyav", timeout=timeout) as video:
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


def test_torchcodec_without_ffmpeg_says_what_to_install(monkeypatch):
    torchcodec = pytest.importorskip("torchcodec")
    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)  # what torchcodec sets when it finds no FFmpeg
    monkeypatch.setattr(decode, "_ffmpeg_libraries_found", lambda: False)
    with pytest.raises(RuntimeError, match=r"FFmpeg's shared libraries.*apt-get install ffmpeg"):
        check_backend("torchcodec")
    with pytest.raises(RuntimeError, match="FFmpeg"):  # the loaders check before their first video
        from msta_fast.data import build_loader

        build_loader([("a.mp4", 0)], None, train=True, batch_size=1, loader="torch", backend="torchcodec")
    monkeypatch.setattr(decode, "_ffmpeg_libraries_found", lambda: True)  # FFmpeg there, but not loadable
    with pytest.raises(RuntimeError, match="built for torch"):
        check_backend("torchcodec")


def test_torchcodec_not_installed_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec raises ImportError
    with pytest.raises(RuntimeError, match=r"msta-fast\[torchcodec\]"):
        check_backend("torchcodec")
