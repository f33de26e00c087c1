"""Video data pipeline: protocol lists, frame sampling, decoding (decord, PyAV, DALI), augmentation, loaders,
class descriptions and a synthetic action data set."""

from .dali_loader import DaliVideoLoader
from .dataset import VideoDataset, VideoLoader, build_eval_loader, build_train_loader
from .decode import BACKENDS, VideoDecodeError, decode_frames, num_frames, open_video
from .lists import ProtocolFileError, read_labels, read_list
from .registry import EvalSet, Protocol, get_protocol, list_datasets
from .sampling import EvalSampler, TrainSampler, aggregate_views, drop_padding, segment_indices

__all__ = [
    "BACKENDS", "DaliVideoLoader", "EvalSampler", "EvalSet", "Protocol", "ProtocolFileError",
    "TrainSampler", "VideoDataset", "VideoDecodeError", "VideoLoader", "aggregate_views", "build_eval_loader",
    "build_train_loader", "decode_frames", "drop_padding", "get_protocol", "list_datasets", "load_descriptions",
    "num_frames", "open_video", "read_labels", "read_list", "save_descriptions", "segment_indices",
]


def __getattr__(name: str):
    # descriptions.py is also a CLI (python -m msta_fast.data.descriptions): importing it lazily keeps runpy from
    # finding it already imported
    if name in ("load_descriptions", "save_descriptions"):
        from . import descriptions

        return getattr(descriptions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
