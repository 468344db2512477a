"""``build_sam2``: a model by name, from a checkpoint file, or with random weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sam2_core.checkpoint import CheckpointError, identify_variant, load_into, read_checkpoint_full
from sam2_core.config import DEFAULT_CONFIG, OFFICIAL_CONFIGS, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model

_logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
#: Where the package keeps its bundled weights.
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
#: Architecture of "default" (the bundled weights store it too).
_FALLBACK_DEFAULT = DEFAULT_CONFIG
#: Usage settings measured for the bundled weights (a file's own ``"recommended"`` entries win;
#: the bundled file stores these itself since the fifth version, ``export_bundled(usage=...)``):
#: ``cell_diameter``: the nucleus diameter (px) the model tracks best (docs/model-card.md);
#: ``refresh_every`` / ``max_cond_frames_in_attn``: keyframe refresh every 4 frames, attending
#: the 2 closest conditioning frames (``SAM2VideoPredictor``; docs/engine.md).
BUNDLED_RECOMMENDED: dict[str, float] = {"cell_diameter": 28.0, "refresh_every": 4.0,
                                         "max_cond_frames_in_attn": 2.0}


def list_models() -> list[str]:
    """Names accepted by :func:`build_sam2`: the bundled default and the official variants."""
    return [DEFAULT_MODEL, *OFFICIAL_CONFIGS]


def bundled_checkpoint(name: str = DEFAULT_MODEL) -> Path | None:
    """Path of a model shipped inside the package, or None if this install has none."""
    path = BUNDLED_DIR / f"{name}.pt"
    return path if path.is_file() else None


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA, then Apple MPS, then CPU."""
    if device is not None and str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {device!r} requested but Apple MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _config_for_name(name: str) -> SAM2Config:
    if name in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[name]
    if name == DEFAULT_MODEL:
        return _FALLBACK_DEFAULT
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def _resolve_checkpoint(name: str) -> Path:
    if name == DEFAULT_MODEL:
        path = bundled_checkpoint(name)
        if path is None:
            raise FileNotFoundError(
                "this installation has no bundled default model "
                f"(expected {BUNDLED_DIR / 'default.pt'}); pass pretrained=False for random "
                "weights, checkpoint=PATH for a file, or an official name such as "
                "'sam2.1_hiera_tiny'"
            )
        return path
    from sam2_core import weights

    return weights.ensure_weights(name)


def build_sam2(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    config: SAM2Config | None = None,
) -> SAM2Model:
    """Build a SAM 2 model in eval mode.

    Args:
        name: ``"default"`` (the bundled model) or an official variant, e.g. ``"sam2.1_hiera_tiny"``.
        checkpoint: a checkpoint file; wins over ``name``. Its architecture comes from the config
            stored in it, else is recognised from its keys and shapes.
        pretrained: load the weights for ``name`` (bundled, cached or downloaded); False gives
            random initialisation.
        device: "cuda", "mps", "cpu" or None for automatic choice (cuda > mps > cpu).
        image_size: model input side (multiple of 32); defaults to the config's (1024 official).
        config: an explicit architecture (for custom models with random weights).

    Raises:
        KeyError: unknown name.
        FileNotFoundError: missing checkpoint or bundled weights.
        sam2_core.checkpoint.CheckpointError: the file is not a fitting checkpoint.
        sam2_core.weights.WeightsError: weights could not be obtained (offline, bad hash).
    """
    state = None
    source = ""
    recommended: dict[str, float] = {}
    if checkpoint is None and pretrained and config is None:
        checkpoint = _resolve_checkpoint(name)
    if checkpoint is not None:
        state, stored, recommended = read_checkpoint_full(checkpoint)
        source = str(checkpoint)
        if stored is not None:
            config = stored
        else:
            found = identify_variant(state)
            if found is None and config is None:
                if name in OFFICIAL_CONFIGS or name == DEFAULT_MODEL:
                    config = _config_for_name(name)  # will fail below with a key listing
                else:
                    raise CheckpointError(f"{checkpoint}: unrecognised SAM 2 checkpoint")
            elif found is not None:
                if name in OFFICIAL_CONFIGS and name != found:
                    _logger.info("checkpoint %s is %s (not %s); using %s", checkpoint, found, name, found)
                config = OFFICIAL_CONFIGS[found]
    if config is None:
        config = _config_for_name(name)
    if image_size is not None:
        config = config.replace(image_size=int(image_size))
    model = SAM2Model(config)
    if state is not None:
        load_into(model, state, source)
    bundled = bundled_checkpoint()
    if checkpoint is not None and bundled is not None and Path(checkpoint).resolve() == bundled.resolve():
        recommended = {**BUNDLED_RECOMMENDED, **recommended}
    model.recommended = recommended
    return model.eval().to(select_device(device))
