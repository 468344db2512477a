"""The recipe of the bundled ``default`` model: architecture, data and hyper-parameters.

Two phases, both on simulated movies only (:mod:`sam2_core.simulate_cells`):

A. single frames, 8 objects each (clicks, boxes, corrective clicks): the decoder learns to find
   *the clicked* cell. From scratch this takes ~1,100 steps before it starts (the network first
   learns "every nucleus"), then improves quickly. Stopped at step 4,000 of a 20,000-step schedule.
B. clips of 4 frames, 6 objects, all prompt kinds: memory attention and the memory encoder learn
   to track, starting from phase A's weights (again a slow start: ~500 steps). Stopped at step
   900 of a 1,000-step schedule.

``napari-sam2 train --simulated`` runs exactly this; docs/model-card.md gives the figures.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sam2_core.checkpoint import read_checkpoint
from sam2_core.config import DEFAULT_CONFIG
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.train.data import SimulatedPool
from sam2_core.train.loop import TrainConfig, train

PHASE_A = TrainConfig(steps=20000, lr=6e-4, warmup=200, clip_len=1, max_objects=8, prob_box=0.3, prob_mask=0.0,
                      prob_correct=0.3, save_every=250)
PHASE_A_UNTIL = 4000
PHASE_B_UNTIL = 900
PHASE_B = TrainConfig(steps=1000, lr=3e-4, warmup=50, clip_len=4, max_objects=6, prob_box=0.3, prob_mask=0.1,
                      prob_correct=0.3, save_every=100, seed=1)


def train_bundled(out: str | Path, steps: int | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train the ``default`` architecture from scratch (resumable; phase A goes to OUT.phaseA.pt).

    ``steps`` scales both phases down (for a quick try); None is the shipped recipe.
    """
    from dataclasses import replace

    out = Path(out)
    a_out = out.with_name(out.stem + ".phaseA.pt")
    a_cfg, a_until, b_cfg, b_until = PHASE_A, PHASE_A_UNTIL, PHASE_B, PHASE_B_UNTIL
    if steps is not None:
        a_until = max(1, steps * PHASE_A_UNTIL // (PHASE_A_UNTIL + PHASE_B.steps))
        b_cfg = replace(PHASE_B, steps=max(1, steps - a_until), warmup=min(PHASE_B.warmup, max(1, steps // 10)))
        b_until = b_cfg.steps
    torch.manual_seed(seed)
    model = SAM2Model(DEFAULT_CONFIG)
    small = steps is not None and steps < 64  # a quick try: a smaller pool of movies
    pool_a = SimulatedPool(DEFAULT_CONFIG.image_size, size=max(2, steps) if small else 64, movie_len=4, seed=seed,
                           renew_every=8)
    train(model, pool_a, a_cfg, a_out, progress=progress, until=a_until)
    if not out.is_file():  # phase B starts from phase A's weights with a new optimiser
        model.load_state_dict(read_checkpoint(a_out)[0])
    pool_b = SimulatedPool(DEFAULT_CONFIG.image_size, size=max(2, steps) if small else 48, movie_len=12,
                           seed=seed + 1, renew_every=4)
    return train(model, pool_b, b_cfg, out, progress=progress, until=b_until)
