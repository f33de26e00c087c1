"""MSTA, the Multi-modal Spatio-Temporal Adapter (CVPR 2025): adapters in parallel with the top blocks of both
towers, a projection layer shared by the two towers, a spatial (linear) and a temporal (depthwise 3-D
convolution) up-projection on the video side; and the description-guided consistency constraint."""

from msta_fast.methods.base import Method
from msta_fast.methods.msta.attach import attach, build_adapters
from msta_fast.methods.msta.config import MSTAConfig
from msta_fast.methods.msta.modules import MSTAAdapter, MSTAAdapters, MSTASharedLayer
from msta_fast.methods.msta.objective import (
    MSTALossOptions,
    MSTAObjective,
    build_objective,
    consistency_loss,
    wants_descriptions,
)

METHOD = Method("msta", MSTAConfig, attach, loss_options=MSTALossOptions, build_objective=build_objective,
                wants_descriptions=wants_descriptions)

__all__ = ["METHOD", "MSTAAdapter", "MSTAAdapters", "MSTAConfig", "MSTALossOptions", "MSTAObjective",
           "MSTASharedLayer", "attach", "build_adapters", "consistency_loss"]
