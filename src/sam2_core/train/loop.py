"""One clip through SAM 2 as in training, and the resumable AdamW loop around it.

A clip step (SAM 2's recipe):
1. encode all T frames once;
2. frame 0 is the conditioning frame: the K objects are prompted with a click, a box or their
   mask, then get up to ``max_corrections`` corrective clicks sampled from their errors (each
   fed the previous low-res logits as a mask prompt, like a correction in the predictor);
3. frames 1..T-1 are tracked: memory attention over the conditioning memory, the last
   ``num_maskmem - 1`` frames and the object pointers, built by the same rules and the same
   :meth:`SAM2Model.build_memory` as the video predictor;
4. losses on every frame (:func:`sam2_core.train.losses.step_losses`), averaged.

With ``warm_frames = W``, frames 1..W are tracked without gradient and without loss before the
trained frames: the memory the trained frames read then holds the model's own imperfect
predictions of several frames, as deep into a long movie, not only the prompted frame's.

With ``refresh_every = R`` training sees the predictor's keyframe refresh: a tracked frame R
frames past the last conditioning frame becomes one (for every object of the clip; the predictor
skips objects it finds absent) and memory attention reads the 2 closest conditioning frames
(``max_cond_frames_in_attn=2``), so that past frame 2R the prompted frame drops out of memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2_core.checkpoint import read_checkpoint, save_checkpoint
from sam2_core.modeling.sam2 import ImageFeatures, SAM2Model
from sam2_core.predictor import memory_bank as mb
from sam2_core.train import prompts as P
from sam2_core.train.data import Clip
from sam2_core.train.losses import LossWeights, step_losses

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (stored in every checkpoint it writes)."""

    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 100
    clip_len: int = 6
    max_stride: int = 1  # clip frames every s-th movie frame, s drawn from 1..max_stride per clip
    warm_frames: int = 0  # tracked frames after the prompt run without gradient (see the module doc)
    refresh_every: int = 0  # keyframe refresh as the predictor does it (see the module doc); 0: off
    short_clip_steps: int = 0  # clips of 2 frames before this step (cheap: learn to segment first)
    prob_single: float = 0.0  # share of steps on one prompted frame (keeps click segmentation sharp)
    single_objects: int = 8  # objects on those single-frame steps
    max_objects: int = 4
    prob_box: float = 0.3
    prob_mask: float = 0.1
    prob_correct: float = 0.5
    max_corrections: int = 2
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    weights: LossWeights = field(default_factory=LossWeights)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of ``lr``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _prompt_frame(model: SAM2Model, feats, clip: Clip, cfg: TrainConfig, rng: np.random.Generator):
    """Heads output and per-iteration losses for the prompted frame 0 of every object."""
    k = clip.targets.shape[0]
    truth = clip.targets[:, 0].numpy() > 0.5
    vision = feats.vision_features[0:1].expand(k, -1, -1, -1)
    pix = model.add_no_mem_embed(vision)
    high = [h[0:1].expand(k, -1, -1, -1) for h in feats.high_res]
    losses = []
    p_mask = cfg.prob_mask if clip.frames.shape[0] > 1 else 0.0  # a mask prompt alone teaches nothing
    kind = rng.choice(["click", "box", "mask"], p=[1 - cfg.prob_box - p_mask, cfg.prob_box, p_mask])
    if kind == "mask":
        heads = model.use_mask_as_output(vision, high, clip.targets[:, 0:1])
        return heads, losses
    if kind == "box":
        pts = np.stack([P.box_of(m, rng) for m in truth])
        labels = np.tile(np.array([[2, 3]], np.int32), (k, 1))
    else:
        pts = np.stack([P.click_inside(m, rng) for m in truth])
        labels = np.ones((k, 1), np.int32)
    heads = model.forward_sam_heads(pix, torch.from_numpy(pts), torch.from_numpy(labels), None, high,
                                    multimask_output=kind == "click" and model.config.multimask_output_in_sam)
    losses.append(step_losses(heads.high_res_multimasks, heads.ious, heads.object_score_logits,
                              clip.targets[:, 0], cfg.weights))
    n_corr = int(rng.integers(1, cfg.max_corrections + 1)) if rng.uniform() < cfg.prob_correct else 0
    for _ in range(n_corr):
        pred = heads.high_res_masks[:, 0].detach().numpy() > 0
        new_pts, new_labels = [], []
        for m, t in zip(pred, truth):
            c = P.corrective_click(m, t, rng)
            new_pts.append(c[0] if c else np.zeros((1, 2), np.float32))
            new_labels.append([c[1] if c else -1])  # -1: padding, ignored by the prompt encoder
        pts = np.concatenate([pts, np.stack(new_pts)], axis=1)
        labels = np.concatenate([labels, np.array(new_labels, np.int32)], axis=1)
        heads = model.forward_sam_heads(pix, torch.from_numpy(pts), torch.from_numpy(labels),
                                        heads.low_res_masks.detach(), high, multimask_output=False)
        losses.append(step_losses(heads.high_res_multimasks, heads.ious, heads.object_score_logits,
                                  clip.targets[:, 0], cfg.weights))
    return heads, losses


def clip_forward(model: SAM2Model, clip: Clip, cfg: TrainConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Mean losses over the clip's frames (and prompt iterations) for its K objects."""
    n_frames, k = clip.frames.shape[0], clip.targets.shape[0]
    warm = min(cfg.warm_frames, n_frames - 2) if n_frames > 2 else 0
    feats = _encode(model, clip.frames, warm)
    heads, losses = _prompt_frame(model, feats, clip, cfg, rng)
    memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # frame -> (maskmem (K,Cm,h,w), obj_ptr (K,C))

    def remember(t: int, heads) -> torch.Tensor:
        """Encode frame t's memory; returns the memory grid's encoding (the same for every frame)."""
        vision = feats.vision_features[t : t + 1].expand(k, -1, -1, -1)
        mem, pos = model.encode_memory(vision, heads.high_res_masks, heads.object_score_logits, binarize=False)
        memory[t] = (mem, heads.obj_ptr)
        return pos[0:1]

    maskmem_pos = remember(0, heads)
    max_ptrs = model.max_obj_ptrs(None)
    cond = [0]
    for t in range(1, n_frames):
        if cfg.refresh_every and t - 1 - cond[-1] >= cfg.refresh_every:
            cond.append(t - 1)  # as the predictor promotes the frame it just tracked
        with torch.set_grad_enabled(t > warm and torch.is_grad_enabled()):
            heads = _track_frame(model, feats, memory, maskmem_pos, max_ptrs, t, n_frames, k, cond)
        if t > warm:
            losses.append(step_losses(heads.high_res_multimasks, heads.ious, heads.object_score_logits,
                                      clip.targets[:, t], cfg.weights))
        if t < n_frames - 1:
            with torch.set_grad_enabled(t > warm and torch.is_grad_enabled()):
                remember(t, heads)
    return {key: torch.stack([loss[key] for loss in losses]).mean() for key in losses[0]}


def _encode(model: SAM2Model, frames: torch.Tensor, warm: int):
    """The clip's image features; frames 1..warm (no loss) are encoded without gradient."""
    if not warm:
        return model.encode_image(frames)
    with torch.no_grad():
        w = model.encode_image(frames[1 : warm + 1])
    g = model.encode_image(torch.cat([frames[:1], frames[warm + 1 :]]))
    join = lambda a, b: torch.cat([a[:1], b, a[1:]])  # noqa: E731
    return ImageFeatures(vision_features=join(g.vision_features, w.vision_features),
                         vision_pos=join(g.vision_pos, w.vision_pos),
                         high_res=[join(a, b) for a, b in zip(g.high_res, w.high_res)])


def _track_frame(model: SAM2Model, feats, memory: dict, maskmem_pos: torch.Tensor, max_ptrs: int, t: int,
                 n_frames: int, k: int, cond: Sequence[int] = (0,)):
    """Heads output of tracked frame ``t`` for the K objects from the memory of earlier frames
    (``cond``: the conditioning frames; more than one: the 2 closest are attended)."""
    selected = mb.select_cond_frames(t, cond, 2)[0]
    spatial = [(memory[c][0], 0) for c in selected]
    spatial += [(memory[p][0], t_pos) for t_pos, p in mb.recent_frames(t, model.num_maskmem, False)
                if p in memory and p not in selected]
    cond_ptrs, recent = mb.pointer_frames(t, selected, n_frames, max_ptrs, False, signed=model.config.is_v21)
    ptrs = [(memory[f][1], rel) for f, rel in cond_ptrs]
    ptrs += [(memory[f][1], rel) for f, rel in recent if f not in selected]
    mem, mem_pos, n_ptr = model.build_memory(spatial, maskmem_pos, ptrs, None)
    vision = feats.vision_features[t : t + 1].expand(k, -1, -1, -1)
    pix = model.condition_on_memory(vision, feats.vision_pos[t : t + 1].expand(k, -1, -1, -1), mem, mem_pos, n_ptr)
    high = [h[t : t + 1].expand(k, -1, -1, -1) for h in feats.high_res]
    return model.forward_sam_heads(pix, None, None, None, high,
                                   multimask_output=model.config.multimask_output_for_tracking)


def train(
    model: SAM2Model,
    data: Any,
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    callback=None,
    until: int | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on clips drawn from ``data`` (``.sample(clip_len, max_objects)``).

    Writes ``out`` (Meta's format: ``{"model": state_dict}``, plus our config, the optimizer
    state and the step) every ``cfg.save_every`` steps and at the end; with ``resume`` an existing
    ``out`` is continued from its step; ``until`` stops (and saves) at that step, keeping the
    learning-rate schedule of ``cfg.steps``. Returns the per-step log (losses, lr, seconds).
    """
    out = Path(out)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    if resume and out.is_file():
        read_checkpoint(out)  # a clear error for a file that is not a checkpoint
        extra = torch.load(out, map_location="cpu", weights_only=True)
        model.load_state_dict(extra["model"])
        if "optimizer" in extra:
            opt.load_state_dict(extra["optimizer"])
        start = int(extra.get("step", 0))
        history = list(extra.get("history", []))
        _logger.info("resuming %s at step %d", out, start)
    rng = np.random.default_rng([cfg.seed, start])
    step_rng = np.random.default_rng([cfg.seed, start, 1])  # its own stream: old runs resume unchanged
    torch.manual_seed(cfg.seed + start)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", mininterval=2.0)

    def save(step: int) -> None:
        save_checkpoint(model, out, extra={"optimizer": opt.state_dict(), "step": step, "history": history,
                                           "train_config": _plain(asdict(cfg))})

    end = cfg.steps if until is None else min(until, cfg.steps)
    for step in range(start, end):
        t0 = time.perf_counter()
        if cfg.prob_single > 0 and step_rng.uniform() < cfg.prob_single:
            clip = data.sample(1, cfg.single_objects)
        else:
            n = 2 if step < cfg.short_clip_steps else cfg.clip_len
            clip = (data.sample(n, cfg.max_objects, max_stride=cfg.max_stride) if cfg.max_stride > 1
                    else data.sample(n, cfg.max_objects))
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        losses = clip_forward(model, clip, cfg, rng)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        row = {k: float(v.detach()) for k, v in losses.items()}
        row.update(step=step, lr=cfg.lr_at(step), seconds=time.perf_counter() - t0, frames=int(clip.frames.shape[0]))
        history.append(row)
        if bar is not None:
            recent = history[-50:]
            bar.set_postfix(loss=f"{np.mean([r['total'] for r in recent]):.3f}",
                            miou=f"{np.mean([r['miou'] for r in recent]):.3f}")
            bar.update(1)
        if callback is not None:
            callback(row)
        if (step + 1) % cfg.save_every == 0:
            save(step + 1)
    if bar is not None:
        bar.close()
    save(max(end, start))
    model.eval()
    return history


def _plain(d: dict) -> dict:
    """Dataclass dict with tuples as lists and nested dataclasses as dicts (weights_only-safe)."""
    return {k: _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v for k, v in d.items()}
