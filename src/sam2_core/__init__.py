"""sam2_core: a readable PyTorch implementation of SAM 2 / SAM 2.1 that loads Meta's checkpoints."""

from sam2_core.build import build_sam2, list_models, select_device
from sam2_core.checkpoint import CheckpointError, save_checkpoint
from sam2_core.config import OFFICIAL_CONFIGS, HieraConfig, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model

__version__ = "0.1.0"

_LAZY = {
    "SAM2VideoPredictor": "sam2_core.predictor.video",
    "SAM2ImagePredictor": "sam2_core.predictor.image",
    "SAM2AutomaticMaskGenerator": "sam2_core.automatic",
    "track_all": "sam2_core.automatic",
    "estimate_cell_diameter": "sam2_core.diameter",
}


def __getattr__(name: str):
    """The predictors, ``track_all`` and ``estimate_cell_diameter`` on first use (``sam2_core.track.track`` is the module's)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam2_core' has no attribute {name!r}")


__all__ = [
    "OFFICIAL_CONFIGS",
    "SAM2AutomaticMaskGenerator",
    "SAM2ImagePredictor",
    "SAM2VideoPredictor",
    "CheckpointError",
    "HieraConfig",
    "SAM2Config",
    "SAM2Model",
    "build_sam2",
    "estimate_cell_diameter",
    "list_models",
    "save_checkpoint",
    "select_device",
    "track_all",
]
