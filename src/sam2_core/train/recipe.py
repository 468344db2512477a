"""The recipe of the bundled ``default`` model: architecture, data and hyper-parameters.

Phases, all on simulated movies only (:mod:`sam2_core.simulate_cells`), each from the previous
one's weights with a new optimiser:

A. single frames, 8 objects each (clicks, boxes, corrective clicks): the decoder learns to find
   *the clicked* cell. From scratch this takes ~1,100 steps before it starts (the network first
   learns "every nucleus"), then improves quickly. Stopped at step 4,000 of a 20,000-step schedule.
B. clips of 4 frames, 6 objects, all prompt kinds: memory attention and the memory encoder learn
   to track (again a slow start: ~500 steps). Stopped at step 900 of a 1,000-step schedule.
C. clips of 5 frames, 6 objects, with a quarter of the steps on single prompted frames (8 objects)
   so that click segmentation does not degrade while tracking improves (phase B alone lowered the
   single-click IoU from 0.83 to 0.71).
D. 6-frame clips of spaced frames from 48-frame movies, SAM 2's mask loss without the balanced BCE.
F. phase D's data at a lower learning rate, with a click on the prompted frame decoded by the
   single-mask output (``multimask_output_in_sam=False``, as the shipped model is used): the IoU
   head of phases A-D ranks the three candidates badly, so that output now gets the click's loss.

``napari-sam2 train --simulated`` (:func:`train_bundled`) runs them all; docs/model-card.md gives
the figures and where the shipped runs differed from this code. ``PHASE_E`` (warm frames, clips
normalised over the whole movie, simulated volumes) was tried after them and is not shipped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from sam2_core.checkpoint import read_checkpoint
from sam2_core.config import DEFAULT_CONFIG, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.train.data import SimulatedPool
from sam2_core.train.losses import LossWeights
from sam2_core.train.loop import TrainConfig, train

PHASE_A = TrainConfig(steps=20000, lr=6e-4, warmup=200, clip_len=1, max_objects=8, prob_box=0.3, prob_mask=0.0,
                      prob_correct=0.3, save_every=250)
PHASE_A_UNTIL = 4000
PHASE_B_UNTIL = 900
PHASE_B = TrainConfig(steps=1000, lr=3e-4, warmup=50, clip_len=4, max_objects=6, prob_box=0.3, prob_mask=0.1,
                      prob_correct=0.3, save_every=100, seed=1)
PHASE_C = TrainConfig(steps=1200, lr=3e-4, warmup=50, clip_len=5, max_objects=6, prob_box=0.3, prob_mask=0.1,
                      prob_correct=0.3, prob_single=0.25, single_objects=8, save_every=50, seed=2)
PHASE_C_UNTIL = 1200
#: Phase D (tried 2026-11-27): from the shipped weights, 6-frame clips taken every 1-3 frames from
#: 48-frame movies, so that the memory spans up to 16 frames and clips reach the crowding that
#: divisions build up late in a movie (phase C's 12-frame movies never do). Without the class-balanced
#: BCE (SAM 2's focal + dice only): that term, which made training from scratch start fast, weighs
#: each object pixel far above each background pixel and so biases masks towards being too large
#: (clicked masks 1.23x the true area on held-out movies, precision 0.68 on a real image).
PHASE_D = TrainConfig(steps=2400, lr=2e-4, warmup=50, clip_len=6, max_stride=3, max_objects=6, prob_box=0.3,
                      prob_mask=0.1, prob_correct=0.3, prob_single=0.25, single_objects=8, save_every=50, seed=4,
                      weights=LossWeights(balanced_bce=0.0))
PHASE_D_MOVIE_LEN = 48
PHASE_D_UNTIL = 1850  # the shipped run stopped there
#: Phase E (tried 2026-11-28, NOT shipped: lower on every held-out figure, model card): from phase D's weights, 12-frame clips (every 1-3 frames of 48-frame
#: movies) whose first 6 tracked frames run without gradient, so that the 5 trained frames read a
#: memory of the model's own predictions 6-18 frames into the movie (held-out masks decay over 50
#: frames as errors compound, which 6-frame clips never show); and clips normalised over the whole
#: movie as the predictor normalises a stack, so photobleached late frames are as dim as in use;
#: and 30 % of the pool are simulated volumes (slices as frames), where nuclei end in place: the
#: shipped model never let a tracked nucleus end (real 3-D nuclei: present on 94 % of the slices
#: beyond their end, 3-D IoU 0.20 with the volume padded to native scale).
PHASE_E_VOLUMES = 0.3
PHASE_E = TrainConfig(steps=1000, lr=1e-4, warmup=30, clip_len=12, warm_frames=6, max_stride=3, max_objects=6,
                      prob_box=0.3, prob_mask=0.1, prob_correct=0.3, prob_single=0.25, single_objects=8,
                      save_every=50, seed=5, weights=LossWeights(balanced_bce=0.0))

#: Phases A-D (and E) decoded a prompt of one click into three candidates (Meta's choice); the
#: shipped config (``DEFAULT_CONFIG``) and phase F use the single-mask output.
CLICKS_THREE = DEFAULT_CONFIG.replace(multimask_output_in_sam=True)
#: Phase F (2026-11-28, shipped): from phase D's weights, phase D's clips, lr 5e-5, 35 % single
#: prompted frames, the click decoded by the single-mask output (the shipped config): held-out
#: click IoU 0.819 -> 0.851, 50-frame propagated IoU 0.627 -> 0.659, after division 0.477 -> 0.534.
PHASE_F = TrainConfig(steps=600, lr=5e-5, warmup=20, clip_len=6, max_stride=3, max_objects=6, prob_box=0.3,
                      prob_mask=0.1, prob_correct=0.3, prob_single=0.35, single_objects=8, save_every=50, seed=21,
                      weights=LossWeights(balanced_bce=0.0))

#: Phase G (tried 2026-12-06, NOT shipped: model card, "five fine-tuning runs"): phase F's clips
#: for 1,000 steps from the shipped weights with half the movies at the scale ``cell_diameter``
#: shows nuclei at: ``train_phase_c(None, OUT, PHASE_G, until=1000, seed=40,
#: movie_len=PHASE_D_MOVIE_LEN, renew_every=16, config=DEFAULT_CONFIG, sized=0.5)``. It helped
#: tracking on the calibration movies, not on the held-out ones, and let leaving cells jump to a
#: neighbour more often.
PHASE_G = replace(PHASE_F, steps=1000, lr=8e-5, seed=31)
#: Phase L (tried 2026-12-06, NOT shipped: model card, "L and M" and "a larger held-out set"): from
#: G, 600 steps, half of them single prompted frames, half the movies ``sized`` and 30 % drifting:
#: ``train_phase_c(G, OUT, PHASE_L, until=600, seed=45, movie_len=PHASE_D_MOVIE_LEN,
#: renew_every=16, config=DEFAULT_CONFIG, sized=0.5, drift=0.3)``. Propagated IoU +0.04 on 24
#: held-out simulated movies, but single clicks on the real nuclei image fell 0.717 -> 0.669.
PHASE_L = replace(PHASE_F, seed=36, prob_single=0.5)
#: Phase N (2026-12-06): from the fourth version, 1,000 steps, half of them single clicked frames,
#: half the movies of small nuclei *enlarged* to the scale ``cell_diameter`` shows them at (as
#: ``track(cell_diameter=...)`` enlarges a recording, bilinearly) and 30 % drifting:
#: ``train_phase_c(None, OUT, PHASE_N, until=1000, seed=47, movie_len=PHASE_D_MOVIE_LEN,
#: renew_every=16, config=DEFAULT_CONFIG, enlarged=0.5, drift=0.3)``, then
#: ``export_bundled(OUT, DEST, usage=...)`` with the fourth version's cell diameter and refresh
#: settings. Model card: "Run N".
PHASE_N = replace(PHASE_F, steps=1000, lr=8e-5, seed=38, prob_single=0.5)
#: Phase S (tried 2026-12-07, NOT shipped: model card, "Run S"): N's data with 10-frame clips whose
#: memory is read as the predictor's keyframe refresh builds it, from the fifth version:
#: ``train_phase_c(None, OUT, PHASE_S, until=800, seed=61, movie_len=PHASE_D_MOVIE_LEN,
#: renew_every=16, config=DEFAULT_CONFIG, enlarged=0.5, drift=0.3)``. Held-out propagated IoU
#: 0.698 -> 0.722, but cells leaving the field were let go less often, volumes and the real
#: pseudo time-lapse lost.
PHASE_S = replace(PHASE_N, steps=800, lr=5e-5, seed=60, clip_len=10, refresh_every=4)

#: Runs S4 and S5, the second parent of the sixth shipped version (2026-12-07): Run S2 (S
#: continued: ``train_phase_c(S, OUT, replace(PHASE_S, lr=4e-5, seed=62), until=800, seed=63,
#: ...)``, the other arguments as S) continued with simulated volumes, more drifting movies and
#: the object-score loss weighted 2: ``train_phase_c(S2, OUT, PHASE_S4, until=600, seed=67,
#: movie_len=PHASE_D_MOVIE_LEN, renew_every=16, config=DEFAULT_CONFIG, enlarged=0.5, drift=0.4,
#: volumes=0.2)``; S5 the same from S4 with ``replace(PHASE_S4, lr=3e-5, seed=68)`` and seed 69.
#: The sixth version is ``average_checkpoints([S2, S5], OUT)``, exported at 28 px.
PHASE_S4 = replace(PHASE_S, steps=600, lr=4e-5, seed=66, weights=LossWeights(balanced_bce=0.0, score=2.0))


def average_checkpoints(paths: list[str | Path], out: str | Path, shares: list[float] | None = None) -> Path:
    """Average the weights of checkpoints of one architecture into ``out`` (a "model soup":
    runs fine-tuned from a common ancestor, averaged, often keep the strengths of both).
    ``shares``: each checkpoint's weight (normalised; default equal). Returns ``out``."""
    from sam2_core.checkpoint import read_checkpoint_full, save_checkpoint

    if len(paths) < 2:
        raise ValueError(f"give at least two checkpoints to average, got {len(paths)}")
    shares = [1.0] * len(paths) if shares is None else [float(w) for w in shares]
    if len(shares) != len(paths) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"shares must be {len(paths)} non-negative weights, not all 0; got {shares}")
    loaded = [read_checkpoint_full(p) for p in paths]
    first, config, _ = loaded[0]
    config = config or DEFAULT_CONFIG
    for p, (state, cfg, _) in zip(paths[1:], loaded[1:]):
        if (cfg or DEFAULT_CONFIG) != config or state.keys() != first.keys() or any(
                state[k].shape != first[k].shape for k in first):
            raise ValueError(f"{p} is not the architecture of {paths[0]}: only runs of one "
                             "configuration can be averaged")
    total = sum(shares)
    model = SAM2Model(config)
    model.load_state_dict({k: sum(w / total * s[k].float() for w, (s, _, _) in zip(shares, loaded)) for k in first})
    return save_checkpoint(model, out)


def train_phase_c(start: str | Path | None, out: str | Path, cfg: TrainConfig = PHASE_C, until: int | None = None,
                  seed: int = 0, progress: bool = True, pool_size: int = 48, movie_len: int = 12,
                  renew_every: int = 4, limits: str = "clip", volumes: float = 0.0,
                  config: SAM2Config = CLICKS_THREE, drift: float = 0.0, sized: float = 0.0,
                  sized_radius: tuple[float, float] = (11.0, 17.0), crowded: float = 0.0,
                  enlarged: float = 0.0, dividing: float = 0.0) -> list[dict]:
    """Phase C (or, with ``PHASE_D`` / ``PHASE_E`` / ``PHASE_F``, ``movie_len=PHASE_D_MOVIE_LEN``, for
    E ``limits="movie"``, ``volumes=PHASE_E_VOLUMES``, for F ``config=DEFAULT_CONFIG``, phases D, E
    and F) from ``start``'s weights (None: the shipped ``default``) into ``out`` (resumable).
    ``drift``: the share of drifting training movies (:class:`SimulatedPool`; tried, not shipped);
    ``sized``: the share of movies whose nuclei have a mean radius in ``sized_radius`` (the scale
    at which ``track(cell_diameter=...)`` shows cells to the model); ``crowded``: the share of
    dense, fast movies; ``enlarged``: the share of movies of small nuclei enlarged to the
    ``sized_radius`` scale, as the cell diameter enlarges a recording; ``dividing``: the share
    of movies whose cells divide often."""
    out = Path(out)
    model = SAM2Model(config)
    if not out.is_file():
        if start is None:
            from sam2_core.build import BUNDLED_DIR

            start = BUNDLED_DIR / "default.pt"
        model.load_state_dict({k: v.float() for k, v in read_checkpoint(start)[0].items()})
    pool = SimulatedPool(DEFAULT_CONFIG.image_size, size=pool_size, movie_len=movie_len, seed=seed + 2,
                         renew_every=renew_every, limits=limits, volumes=volumes, drift=drift, sized=sized,
                         sized_radius=sized_radius, crowded=crowded, enlarged=enlarged, dividing=dividing)
    return train(model, pool, cfg, out, progress=progress, until=PHASE_C_UNTIL if until is None else until)


def train_bundled(out: str | Path, steps: int | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train the ``default`` model from scratch through every shipped phase, A to D, F and N
    (resumable: phase X goes to OUT.phaseX.pt, the last phase to OUT). Returns the last phase's log.
    Export the result with :func:`export_bundled` (float16, calibrated thresholds, and the
    ``usage`` settings of the model card).

    ``steps`` scales the phases down (for a quick try); None is the shipped recipe.
    """

    out = Path(out)
    phases = [  # name, config, until, pool (size, movie length, renew every)
        ("A", PHASE_A, PHASE_A_UNTIL, (64, 4, 8)),
        ("B", PHASE_B, PHASE_B_UNTIL, (48, 12, 4)),
        ("C", PHASE_C, PHASE_C_UNTIL, (48, 12, 4)),
        ("D", PHASE_D, PHASE_D_UNTIL, (48, PHASE_D_MOVIE_LEN, 16)),
        ("F", PHASE_F, PHASE_F.steps, (48, PHASE_D_MOVIE_LEN, 16)),
        ("N", PHASE_N, PHASE_N.steps, (48, PHASE_D_MOVIE_LEN, 16)),
    ]  # phase E (PHASE_E) and G-M were tried and not shipped: see the model card
    extra = {"N": dict(enlarged=0.5, drift=0.3)}  # SimulatedPool options of a phase
    pool_seed = {"N": 49}  # the shipped N ran as train_phase_c(..., seed=47): pool seed 47 + 2
    if steps is not None:  # each phase its share of ``steps``, at least one
        total = sum(until for _, _, until, _ in phases)
        phases = [(name, cfg, max(1, steps * until // total), pool) for name, cfg, until, pool in phases]
        phases = [(name, replace(cfg, steps=until, warmup=min(cfg.warmup, max(1, steps // 10))), until, pool)
                  for name, cfg, until, pool in phases]
    small = steps is not None and steps < 64  # a quick try: fewer, shorter movies
    torch.manual_seed(seed)
    model = SAM2Model(CLICKS_THREE)
    history: list[dict] = []
    previous = None
    for k, (name, cfg, until, (size, movie_len, renew)) in enumerate(phases):
        model.config = DEFAULT_CONFIG if name in ("F", "N") else CLICKS_THREE  # only the usage flags differ
        target = out if k == len(phases) - 1 else out.with_name(f"{out.stem}.phase{name}.pt")
        if previous is not None and not target.is_file():  # from the previous phase, new optimiser
            model.load_state_dict({key: v.float() for key, v in read_checkpoint(previous)[0].items()})
        if small:
            size, movie_len = max(2, steps), min(movie_len, 2 * cfg.clip_len)
        pool = SimulatedPool(DEFAULT_CONFIG.image_size, size=size, movie_len=movie_len,
                             seed=seed + pool_seed.get(name, k), renew_every=renew, **extra.get(name, {}))
        history = train(model, pool, cfg, target, progress=progress, until=until)
        previous = target
    return history


def export_bundled(trained: str | Path, dest: str | Path, *, calibrate: bool = True, note: str = "",
                   usage: dict | None = None) -> dict:
    """Write the shipped form of a trained checkpoint: float16 weights (half the size; the
    loader casts them back), the config, the recipe note and, with ``calibrate``, the automatic
    generator's thresholds calibrated for these weights (``"recommended"``). Returns those.
    ``usage``: more ``recommended`` settings measured for these weights (``cell_diameter``,
    ``refresh_every``, ``max_cond_frames_in_attn``; see the model card), merged in.

    A checkpoint of the default architecture is written with ``DEFAULT_CONFIG`` as it is now
    (its usage choices, ``SAM2Config.USAGE_FIELDS`` such as ``max_upscale``, may be newer than
    the training run).
    """
    from sam2_core.checkpoint import read_checkpoint_full, save_checkpoint
    from sam2_core.train.evaluate import calibrate_generator

    state, config, recommended = read_checkpoint_full(trained)
    config = config or DEFAULT_CONFIG
    if config.replace(**{f: getattr(DEFAULT_CONFIG, f) for f in SAM2Config.USAGE_FIELDS}) == DEFAULT_CONFIG:
        config = DEFAULT_CONFIG
    model = SAM2Model(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    if calibrate:
        r = calibrate_generator(model)
        recommended = {**(recommended or {}), "pred_iou_thresh": r["pred_iou_thresh"],
                       "stability_score_thresh": r["stability_score_thresh"]}
    recommended = {**(recommended or {}), **(usage or {})}
    model.recommended = recommended
    save_checkpoint(model.half(), dest, extra={"recipe": note or "sam2_core.train.recipe; docs/model-card.md"})
    return recommended
