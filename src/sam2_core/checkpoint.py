"""Reading, recognising, strictly loading and writing checkpoints.

Two formats are read, both with ``torch.load(weights_only=True)`` (no code is ever unpickled):
Meta's (``{"model": state_dict}``) and ours (the same plus ``"config"``: a plain dict of
:class:`~sam2_core.config.SAM2Config`, needed for models that are not one of the official
variants). A bare state dict is accepted too.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sam2_core.config import OFFICIAL_CONFIGS, SAM2Config

_logger = logging.getLogger(__name__)
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A file that is not a usable SAM 2 checkpoint (or not for the requested model)."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], SAM2Config | None]:
    """Load a checkpoint file on the CPU.

    Returns:
        The state dict and the config stored with it (None for Meta's files).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, truncated, or not a state dict.
    """
    state, config, _ = read_checkpoint_full(path)
    return state, config


def read_checkpoint_full(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], SAM2Config | None, dict[str, float]]:
    """:func:`read_checkpoint` plus the model's recommended settings stored with it
    (``"recommended"``: e.g. the automatic generator's calibrated thresholds; empty if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}). "
            "If it was downloaded or copied, it may be truncated: compare its size and SHA-256 "
            "with the published ones, or fetch it again with `napari-sam2 models download NAME`."
        ) from None
    config, recommended = None, {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
        rec = obj.get("recommended")
        if isinstance(rec, dict):
            recommended = {str(k): float(v) for k, v in rec.items() if isinstance(v, (int, float))}
        if isinstance(obj.get("config"), dict):
            try:
                config = SAM2Config.from_dict(obj["config"])
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: its stored model config is invalid ({e})") from None
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(
            f"{path} holds no SAM 2 state dict: expected a dict with a 'model' entry "
            f"(Meta's format) or a plain state dict, got {type(obj).__name__}"
            + (f" with keys {sorted(obj)[:_MAX_LISTED]}" if isinstance(obj, dict) else "")
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_MAX_LISTED]}")
    return state, config, recommended


@functools.lru_cache(maxsize=16)
def expected_shapes(config: SAM2Config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of a model built from ``config`` (built on 'meta')."""
    from sam2_core.modeling.sam2 import SAM2Model

    with torch.device("meta"):
        model = SAM2Model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_variant(state: dict[str, torch.Tensor]) -> str | None:
    """The official variant whose keys and shapes equal the state dict's, or None."""
    pos = state.get("image_encoder.trunk.pos_embed")
    if pos is None:
        return None
    for name, cfg in OFFICIAL_CONFIGS.items():
        if cfg.trunk.embed_dim != pos.shape[1] or cfg.is_v21 != ("no_obj_embed_spatial" in state):
            continue
        shapes = expected_shapes(cfg)
        if shapes.keys() == state.keys() and all(
            tuple(state[k].shape) == s for k, s in shapes.items()
        ):
            return name
    return None


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def mismatch_report(state: dict[str, torch.Tensor], config: SAM2Config) -> str | None:
    """Why ``state`` does not fit ``config`` (None if it fits exactly)."""
    shapes = expected_shapes(config)
    missing = sorted(shapes.keys() - state.keys())
    unexpected = sorted(state.keys() - shapes.keys())
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {shapes[k]})"
        for k in shapes.keys() & state.keys()
        if tuple(state[k].shape) != shapes[k]
    )
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes: {_listing(wrong)}")
    return "; ".join(parts)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Strictly load ``state`` into ``model``, with an error that says what differs and what to do."""
    config: SAM2Config = model.config  # type: ignore[assignment]
    problem = mismatch_report(state, config)
    if problem:
        hint = ""
        found = identify_variant(state)
        if found and found != config.name:
            hint = f" This checkpoint is {found}: build it with build_sam2('{found}', checkpoint=...)."
        elif "no_obj_embed_spatial" in state and not config.is_v21:
            hint = " It looks like a SAM 2.1 checkpoint; choose a sam2.1_* model."
        elif "image_encoder.trunk.pos_embed" not in state:
            hint = " It does not look like a SAM 2 checkpoint at all."
        raise CheckpointError(
            f"checkpoint {source or '(state dict)'} does not fit model '{config.name}': "
            f"{problem}.{hint}"
        )
    model.load_state_dict(state, strict=True)


def save_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``{"model": state_dict, "config": ...}`` atomically (temp file, then rename).

    Meta's loader reads the same file (it only looks at ``"model"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),  # type: ignore[operator]
    }
    if getattr(model, "recommended", None):
        payload["recommended"] = dict(model.recommended)  # type: ignore[arg-type]
    payload.update(extra or {})
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
