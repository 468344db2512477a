"""Typed tracking state: what the video predictor remembers per object and frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FrameOutput:
    """One object's result on one frame, as much of it as memory attention may still need.

    Attributes:
        obj_ptr: (1, C) object pointer.
        object_score_logits: (1, 1); > 0 means present.
        maskmem_features: (1, Cm, h, w) spatial memory (storage dtype), None until encoded or
            after eviction beyond the spatial-memory window.
        pred_masks: (1, 1, L, L) low-res logits, kept for prompted frames and the recent window
            (feeds corrections); None once evicted.
        window: the feature-grid window (y0, x0, h, w) that ``maskmem_features`` covers; None =
            the whole grid (see :mod:`sam2_core.predictor.windows`).
        center, box_side: the mask's centre (y, x) and box side in feature tokens (local
            tracking places the next window with them); center None = empty mask.
        touches_edge: the mask reaches an inner edge of its window (the object may be cut).
    """

    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    window: tuple[int, int, int, int] | None = None
    center: tuple[float, float] | None = None
    box_side: float = 0.0
    touches_edge: bool = False


@dataclass
class ObjectState:
    """Prompts and memory of one tracked object.

    ``cond`` holds prompted (conditioning) frames, among them ``auto``: automatic keyframes
    (keyframe refresh) with the direction of the pass that made them; ``non_cond`` tracked frames within the
    memory windows, ``temp`` prompt results not yet memory-encoded (committed at the next
    propagation), ``tracked`` the frames tracked so far with their direction (True = reverse).
    """

    obj_id: int
    points: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    temp: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)
    auto: dict[int, bool] = field(default_factory=dict)
    window_side: int | None = None  # local tracking: current window side in tokens
    absent_run: int = 0  # local tracking: consecutive frames reported absent
    last_seen: tuple[float, float] | None = None  # local tracking: centre where last present

    def output(self, frame_idx: int) -> FrameOutput | None:
        """The most recent result for a frame: pending prompt, conditioning, then tracked."""
        for store in (self.temp, self.cond, self.non_cond):
            if frame_idx in store:
                return store[frame_idx]
        return None

    def prompt_frames(self) -> set[int]:
        return set(self.points) | set(self.masks)


@dataclass
class VideoState:
    """Everything a tracking session holds (returned by ``init_state``).

    Meta's dict keys ``num_frames``, ``video_height``, ``video_width`` and ``obj_ids`` also
    work as ``state["..."]`` so scripts written for Meta's predictor carry over.
    """

    frames: Any  # sam2_core.io.FrameSource
    features: Any  # sam2_core.predictor.features.FeatureCache
    device: torch.device
    objects: dict[int, ObjectState] = field(default_factory=dict)
    maskmem_pos: torch.Tensor | None = None  # (1, Cm, h, w) of the whole grid, the same for every memory

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def video_height(self) -> int:
        return self.frames.height

    @property
    def video_width(self) -> int:
        return self.frames.width

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def __getitem__(self, key: str) -> Any:
        if key in ("num_frames", "video_height", "video_width", "obj_ids", "device"):
            return getattr(self, key)
        raise KeyError(key)
