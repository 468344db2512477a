"""sam2_core: a readable PyTorch implementation of SAM 2 / SAM 2.1 that loads Meta's checkpoints."""

from sam2_core.build import build_sam2, list_models, select_device
from sam2_core.checkpoint import CheckpointError, save_checkpoint
from sam2_core.config import OFFICIAL_CONFIGS, HieraConfig, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model

__version__ = "0.1.0"
__all__ = [
    "OFFICIAL_CONFIGS",
    "CheckpointError",
    "HieraConfig",
    "SAM2Config",
    "SAM2Model",
    "build_sam2",
    "list_models",
    "save_checkpoint",
    "select_device",
]
