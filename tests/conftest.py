import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's interpreter, which Triton chooses when it
# decorates a kernel: switched on here, before any test module imports msta_fast (and with it triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (official_viclip.py)
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """Facts shared beside the repository (split lists, description files); env-overridable."""
    return Path(os.environ.get("MSTA_FAST_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def exact_fp32_reference():
    """On a GPU the fp32 reference must not use tf32 (cuDNN's conv3d does by default): parity is 1e-5."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def randomise_viclip(model):
    """Random weights everywhere (a built ViCLIP's temporal embedding starts at zero), temperature 0.07."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        model.temp.fill_(0.07)
    return model
