"""LoRA (Hu et al., 2022) on the attention projections, the paper's LoRA baseline."""

from torch import nn
from torch.nn.utils import parametrize

from msta_fast.methods.base import Attachment, Method
from msta_fast.methods.lora.config import LoRAConfig
from msta_fast.methods.lora.modules import LoRADelta, attention_parametrizations
from msta_fast.methods.towers import Towers, adapted_blocks


def attach(model: nn.Module, towers: Towers, config: LoRAConfig, enabled) -> Attachment:
    """Parametrizations of the attention weights (the parameters live under ``...parametrizations...``)."""
    parametrized = []
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    for tower in towers:
        if tower.name in config.towers:
            for i in adapted_blocks(tower, config.start_layer):
                for module, name, delta in attention_parametrizations(
                    tower.blocks[i].attn, config.rank, config.targets, config.scale, enabled
                ):
                    parametrize.register_parametrization(module, name, delta.to(device, dtype))
                    parametrized.append((module, name))
    return Attachment(parametrized=parametrized)


METHOD = Method("lora", LoRAConfig, attach)

__all__ = ["METHOD", "LoRAConfig", "LoRADelta", "attach"]
