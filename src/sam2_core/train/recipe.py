"""The recipe of the bundled ``default`` model: architecture, data and hyper-parameters.

``napari-sam2 train --simulated`` runs exactly this; docs/model-card.md gives the command and
the figures it produced.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sam2_core.config import DEFAULT_CONFIG
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.train.data import SimulatedPool
from sam2_core.train.loop import TrainConfig, train

#: Hyper-parameters of the shipped model.
BUNDLED_TRAIN_CONFIG = TrainConfig(steps=4000, lr=1e-3, warmup=100, clip_len=5, short_clip_steps=1500,
                                   max_objects=6, save_every=100)


def train_bundled(out: str | Path, steps: int | None = None, seed: int = 0, pool_size: int = 64,
                  progress: bool = True) -> list[dict]:
    """Train the ``default`` architecture from scratch on simulated movies only (resumable)."""
    torch.manual_seed(seed)
    cfg = BUNDLED_TRAIN_CONFIG
    if steps is not None:
        from dataclasses import replace

        cfg = replace(cfg, steps=steps, warmup=min(cfg.warmup, max(1, steps // 10)),
                      short_clip_steps=min(cfg.short_clip_steps, steps * 3 // 8))
    model = SAM2Model(DEFAULT_CONFIG)
    pool = SimulatedPool(DEFAULT_CONFIG.image_size, size=pool_size, movie_len=12, seed=seed)
    return train(model, pool, cfg, out, progress=progress)
