"""Video data pipeline: protocol lists, frame sampling, decoding (decord2, PyAV, torchcodec, DALI; each video under a
time limit), augmentation, loaders, class descriptions and a synthetic action data set."""

from .decode import VideoDecodeError, decode_frames, num_frames
from .lists import ProtocolFileError, read_labels, read_list
from .loaders import build_loader
from .registry import EvalSet, Protocol, get_protocol, list_datasets
from .sampling import aggregate_views, drop_padding, segment_indices
from .video_loader import VideoLoader

__all__ = [
    "EvalSet", "Protocol", "ProtocolFileError", "VideoDecodeError", "VideoLoader", "aggregate_views",
    "build_loader", "decode_frames", "drop_padding", "get_protocol", "list_datasets", "load_descriptions",
    "num_frames", "read_labels", "read_list", "save_descriptions", "segment_indices",
]


def __getattr__(name: str):
    # descriptions.py is also a CLI (python -m msta_fast.data.descriptions): importing it lazily keeps runpy from
    # finding it already imported
    if name in ("load_descriptions", "save_descriptions"):
        from . import descriptions

        return getattr(descriptions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
