"""SAM2VideoPredictor: prompt objects on any frame and track them through a stack.

Meta's API and results, with three differences that matter for microscopy:
frames are read and encoded lazily (the stack is never materialised), the memory bank keeps
only what memory attention can still use (memory does not grow with the number of frames),
and all objects on a frame go through memory attention, decoder and memory encoder as one
batch. Corrections (prompts on an already tracked frame) become conditioning frames, so a
later propagation never overwrites them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sam2_core import allocator
from sam2_core import precision as precision_mod
from sam2_core import transforms as T
from sam2_core.io.frames import FrameSource
from sam2_core.masks import fill_holes_in_logits, non_overlapping
from sam2_core.modeling.sam2 import NO_OBJ_SCORE, HeadsOutput, SAM2Model
from sam2_core.predictor import memory_bank as mb
from sam2_core.predictor import windows as win
from sam2_core.predictor.features import FeatureCache, encode_together
from sam2_core.predictor.state import FrameOutput, ObjectState, VideoState

#: The speed modes: exact (Meta's computation) and fast (local windows, reduced precision).
SPEEDS = ("exact", "fast")
#: Query tokens per batch of objects when ``max_batch`` is automatic. Measured on 2 CPU threads
#: (docs/engine.md, "Batch size"): the bundled model (16 x 16 grid) ran fastest with 4-8 objects
#: per batch, sam2.1_hiera_tiny at 512 (32 x 32) with 2, at 1024 (64 x 64) with 1.
BATCH_TOKENS = 2048
MAX_AUTO_BATCH = 16  # the former fixed cap (fast mode's small windows: as before)


def batch_limit(query_tokens: int, max_batch: int | None = None) -> int:
    """Objects per batch for queries of ``query_tokens`` tokens: ``max_batch`` if given, else
    ``BATCH_TOKENS // query_tokens`` within 1 .. ``MAX_AUTO_BATCH``."""
    if max_batch is not None:
        return max(1, int(max_batch))
    return max(1, min(MAX_AUTO_BATCH, BATCH_TOKENS // max(1, int(query_tokens))))


def auto_read_ahead(device: torch.device) -> int:
    """Frames to read ahead in the background: 2 if the model runs on a GPU or torch's CPU
    threads leave a core free, else 0 (the reader would compete with the model for the cores)."""
    if device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads():
        return 2
    return 0


def _batch(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(1, ...) tensors as one (B, ...) batch: a view when they are all the same tensor."""
    first = tensors[0]
    if all(t is first for t in tensors):
        return first.expand(len(tensors), *first.shape[1:])
    return torch.cat(tensors)


class SAM2VideoPredictor:
    """Track many objects through a video, a time-lapse or the slices of a volume.

    Args:
        model: a :class:`SAM2Model`.
        fill_hole_area: fill background holes up to this many low-res pixels in outputs.
        non_overlap_masks: in outputs, give each pixel to the highest-scoring object only.
        storage_dtype: dtype of stored spatial memories (bfloat16 like Meta's, or float32).
        max_cond_frames_in_attn: -1 = all conditioning frames, else the closest few (>= 2).
            None (default): the model's recommended value (``model.recommended``), else -1.
        refresh_every: keyframe refresh (ours): an object tracked this many frames past its last
            conditioning frame, and present, has that frame's result promoted to a conditioning
            frame, so that memory follows a cell that moves and changes instead of holding on to
            the prompted frame. The latest ``refresh_keep`` automatic keyframes of the current
            pass are kept (bounded memory); the user's prompts always are. Pair it with
            ``max_cond_frames_in_attn=2``. 0 = off (Meta's computation); None (default): the
            model's recommended value, else 0. See docs/engine.md for what it measured.
        refresh_keep: automatic keyframes kept per object (>= 1).
        memory_temporal_stride: stride between recent memory frames (1 = consecutive).
        clear_non_cond_mem_around_input: forget an object's tracked memories near a new prompt.
        feature_cache_size: frames whose image features stay in memory.
        read_ahead: frames read and preprocessed ahead in a background thread. None (default):
            2 when the CPU has a core that torch's threads leave free, else 0 -- on 2 cores with
            2 torch threads the reader stole time from the model (512 input, 3 objects: 2.18 s
            per frame with read-ahead vs 1.67 s without).
        batch_objects: run all objects of a frame as one batch (False: one by one, like Meta's).
        speed: "exact" (every object attends over the whole feature grid: Meta's computation) or
            "fast" (each object's memory attention, decoder and memory encoder work in a window
            of the grid around it; see docs/engine.md for the measured fidelity).
        window_margin: fast mode: tokens added around an object's box (default grid/16, >= 3; 5 on grids of 32 tokens or fewer).
        reacquire: fast mode: an object lost from its window (absent, or cut by the window's
            edge) is tracked again on that frame with a window twice as large.
        reacquire_every: fast mode: an object reported absent is looked for on the whole grid
            every this many frames.
        max_window_side: fast mode: no window grows past this many feature tokens (a token is
            16 model-input pixels). For dense fields of cells of known maximum size: an object
            whose mask outgrows the cap is cut at the window's edge instead of moving to the
            whole grid, which bounds the cost per object. None: windows grow as needed.
        max_batch: at most this many objects go through memory attention, the decoder and the
            memory encoder together. None (default): as many as keep a batch near
            ``BATCH_TOKENS`` query tokens (8 objects on a 16 x 16 grid, 2 on 32 x 32, 1 on
            64 x 64; at most 16): larger batches spill the CPU's caches and ran slower than
            smaller ones (docs/engine.md, "Batch size").
        precision: "fp32", "bf16", "fp16" or "auto" (reduced precision only where the device
            runs it faster than fp32); default "fp32" for exact, "auto" for fast.
        compile: ``torch.compile`` the model's image encoder and memory attention (in place;
            falls back to eager mode if compiling fails; see :mod:`sam2_core.compile`).
    """

    def __init__(
        self,
        model: SAM2Model,
        *,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        storage_dtype: torch.dtype = torch.bfloat16,
        max_cond_frames_in_attn: int | None = None,
        refresh_every: int | None = None,
        refresh_keep: int = 2,
        memory_temporal_stride: int = 1,
        clear_non_cond_mem_around_input: bool = False,
        feature_cache_size: int = 4,
        read_ahead: int | None = None,
        batch_objects: bool = True,
        speed: str = "exact",
        window_margin: int | None = None,
        reacquire: bool = True,
        reacquire_every: int = 8,
        max_window_side: int | None = None,
        max_batch: int | None = None,
        precision: str | None = None,
        compile: bool = False,
    ) -> None:
        if speed not in SPEEDS:
            raise ValueError(f"speed must be one of {SPEEDS}, got {speed!r}")
        self.model = model.eval()
        if model.device.type == "cpu":
            allocator.tune_cpu_allocator()  # large per-frame tensors reuse memory (allocator.py)
        self.speed = speed
        self.window_margin = window_margin
        self.reacquire = reacquire
        self.reacquire_every = max(1, int(reacquire_every))
        if max_window_side is not None and int(max_window_side) < win.QUANTUM:
            raise ValueError(f"max_window_side must be at least {win.QUANTUM} tokens, got {max_window_side}")
        self.max_window_side = None if max_window_side is None else int(max_window_side) // win.QUANTUM * win.QUANTUM
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1 (or None: automatic), got {max_batch}")
        self.max_batch = None if max_batch is None else int(max_batch)
        self.precision = precision_mod.resolve(precision or ("auto" if speed == "fast" else "fp32"), model.device)
        if compile:
            from sam2_core.compile import compile_model

            compile_model(self.model)
        self.batch_objects = batch_objects
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.storage_dtype = storage_dtype
        rec = getattr(model, "recommended", None) or {}
        if max_cond_frames_in_attn is None:
            max_cond_frames_in_attn = int(rec.get("max_cond_frames_in_attn", -1))
        if max_cond_frames_in_attn != -1 and max_cond_frames_in_attn < 2:
            raise ValueError(f"max_cond_frames_in_attn must be -1 (all) or at least 2, got {max_cond_frames_in_attn}")
        self.max_cond_frames_in_attn = int(max_cond_frames_in_attn)
        if refresh_every is None:
            refresh_every = int(rec.get("refresh_every", 0))
        if int(refresh_every) < 0 or int(refresh_keep) < 1:
            raise ValueError(f"refresh_every must be >= 0 (0 = off) and refresh_keep >= 1, "
                             f"got {refresh_every} and {refresh_keep}")
        self.refresh_every = int(refresh_every)
        self.refresh_keep = int(refresh_keep)
        self.memory_temporal_stride = memory_temporal_stride
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.feature_cache_size = feature_cache_size
        self.read_ahead = auto_read_ahead(model.device) if read_ahead is None else max(0, int(read_ahead))
        self.image_size = model.image_size

    def provenance(self) -> dict:
        """What produced the results (recorded in outputs): model, input size, speed mode, precision."""
        from sam2_core import __version__

        return {"software": f"napari-sam2 {__version__}", "model": self.model.config.name,
                "image_size": self.image_size, "speed": self.speed,
                "precision": precision_mod.name(self.precision),
                **({"refresh_every": self.refresh_every, "max_cond_frames_in_attn": self.max_cond_frames_in_attn}
                   if self.refresh_every else {}),
                **({"window_margin": self.window_margin or "auto"} if self.speed == "fast" else {}),
                **({"max_window_side": self.max_window_side} if self.speed == "fast" and self.max_window_side else {})}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", **kwargs: Any) -> SAM2VideoPredictor:
        """A predictor for a model name (see ``list_models()``) or a checkpoint file."""
        from sam2_core.build import build_sam2

        device = kwargs.pop("device", None)
        if os.path.exists(str(name_or_path)):
            model = build_sam2(checkpoint=name_or_path, device=device)
        else:
            model = build_sam2(str(name_or_path), device=device)
        return cls(model, **kwargs)

    # --- session ---------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(
        self,
        frames: Any,
        *,
        contrast_limits: Any = None,
        channels: Sequence[int] | None = None,
        channel_axis: int | None = None,
        embedding_cache: str | os.PathLike | None = None,
        max_upscale: float | None = None,
    ) -> VideoState:
        """Open a stack for tracking (nothing is read beyond a few sample frames).

        Args:
            frames: (T, Y, X) or (T, Y, X, C) array-like (numpy, dask, zarr, memmap), a
                :class:`FrameSource`, or a path to a TIFF/OME-TIFF, zarr or folder of images.
            contrast_limits: fixed intensity limits (e.g. napari's); default robust percentiles.
            channels: up to 3 channel indices for data with more channels.
            channel_axis: where channels are, if not last.
            embedding_cache: folder for an on-disk cache of image features.
            max_upscale: overrides the model's ``SAM2Config.max_upscale`` for this stack.
        """
        if isinstance(frames, FrameSource):
            source = frames
        else:
            source = FrameSource(frames, contrast_limits=contrast_limits, channels=channels,
                                 channel_axis=channel_axis)
        cache = FeatureCache(source, self.model, capacity=self.feature_cache_size, read_ahead=self.read_ahead,
                             disk_cache=embedding_cache, tag=precision_mod.name(self.precision),
                             max_upscale=max_upscale)
        return VideoState(frames=source, features=cache, device=self.model.device)

    def reset_state(self, state: VideoState) -> None:
        """Remove every object, prompt and result (image features stay cached)."""
        state.objects.clear()

    def close_state(self, state: VideoState) -> None:
        """Release the state's caches and reader thread."""
        state.objects.clear()
        state.features.close()

    # --- prompts -----------------------------------------------------------------------------

    def _check_frame(self, state: VideoState, frame_idx: int) -> int:
        if not isinstance(frame_idx, (int, np.integer)) or not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx!r} is outside the stack (0 .. {state.num_frames - 1})")
        return int(frame_idx)

    def _get_object(self, state: VideoState, obj_id: int, create: bool) -> ObjectState:
        if not isinstance(obj_id, (int, np.integer)):
            raise TypeError(f"obj_id must be an integer, got {obj_id!r}")
        obj_id = int(obj_id)
        if obj_id not in state.objects:
            if not create:
                raise KeyError(f"unknown object id {obj_id}; known ids: {state.obj_ids}")
            state.objects[obj_id] = ObjectState(obj_id)
        return state.objects[obj_id]

    def _to_model_points(self, state, points, labels, box, normalize_coords):
        pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32)
        lab = np.zeros((0,), np.int64) if labels is None else np.asarray(labels)
        if pts.ndim == 3 and pts.shape[0] == 1:
            pts, lab = pts[0], lab.reshape(-1)
        if pts.ndim != 2 or pts.shape[1] != 2 or lab.shape != (pts.shape[0],):
            raise ValueError(f"points must be (N, 2) (x, y) with labels (N,); got {pts.shape} and {lab.shape}")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {np.unique(lab).tolist()}")
        if box is not None:
            b = np.asarray(box, np.float32).reshape(-1)
            if b.shape != (4,):
                raise ValueError(f"box must be (x0, y0, x1, y1), got shape {np.asarray(box).shape}")
            pts = np.concatenate([b.reshape(2, 2), pts])
            lab = np.concatenate([[2, 3], lab])
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or infinite values")
        h, w = state.video_height, state.video_width
        hc, wc = self.canvas_hw(state)
        if normalize_coords:
            if (pts < -0.5).any() or (pts[:, 0] > w - 0.5).any() or (pts[:, 1] > h - 0.5).any():
                raise ValueError(f"points {pts.tolist()} fall outside the {w}x{h} (x by y) frame")
            pts = pts / np.array([wc, hc], np.float32)
        elif (pts < 0).any() or (pts > 1).any():
            raise ValueError("with normalize_coords=False points must be in [0, 1]")
        else:
            pts = pts * np.array([w / wc, h / hc], np.float32)
        coords = torch.as_tensor(pts * self.image_size, device=state.device)[None]
        return coords, torch.as_tensor(lab, dtype=torch.int32, device=state.device)[None]

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        state: VideoState,
        frame_idx: int,
        obj_id: int,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Clicks and/or a box for one object on one frame; returns that frame's masks.

        Args:
            points: (N, 2) (x, y) pixels of the original frame; labels (N,) 1 / 0.
            clear_old_points: replace this object's earlier clicks on the frame (else add).
            box: (x0, y0, x1, y1) pixels; needs clear_old_points=True.

        Returns:
            (frame_idx, obj_ids, mask logits (N_obj, 1, H, W) at the frame's own size).
        """
        frame_idx = self._check_frame(state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points (with labels) or a box")
        if box is not None and not clear_old_points:
            raise ValueError("a box must come first: use clear_old_points=True with a box")
        coords, labs = self._to_model_points(state, points, labels, box, normalize_coords)
        obj = self._get_object(state, obj_id, create=True)
        if not clear_old_points and frame_idx in obj.points:
            old_c, old_l = obj.points[frame_idx]
            coords, labs = torch.cat([old_c, coords], 1), torch.cat([old_l, labs], 1)
        obj.points[frame_idx] = (coords, labs)
        obj.masks.pop(frame_idx, None)
        with precision_mod.autocast(state.device, self.precision):
            obj.temp[frame_idx] = self._prompt_step(state, obj, frame_idx, points=(coords, labs))
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx)

    add_new_points = add_new_points_or_box

    @torch.inference_mode()
    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id: int, mask: Any) -> tuple[int, list[int], torch.Tensor]:
        """A (H, W) mask (bool or 0/1) for one object on one frame; returns that frame's masks."""
        frame_idx = self._check_frame(state, frame_idx)
        m = torch.as_tensor(np.asarray(mask), device=state.device)
        if m.ndim != 2 or tuple(m.shape) != (state.video_height, state.video_width):
            raise ValueError(f"mask must be ({state.video_height}, {state.video_width}), got {tuple(m.shape)}")
        m = m[None, None].float()
        hc, wc = self.canvas_hw(state)
        if (hc, wc) != tuple(m.shape[-2:]):  # a padded frame: the mask on its canvas
            m = F.pad(m, (0, wc - m.shape[-1], 0, hc - m.shape[-2]))
        if m.shape[-2:] != (self.image_size, self.image_size):
            m = F.interpolate(m, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        obj = self._get_object(state, obj_id, create=True)
        obj.masks[frame_idx] = m
        obj.points.pop(frame_idx, None)
        with precision_mod.autocast(state.device, self.precision):
            obj.temp[frame_idx] = self._prompt_step(state, obj, frame_idx, mask=m)
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx)

    def _prompt_step(self, state: VideoState, obj: ObjectState, frame_idx: int, points=None, mask=None) -> FrameOutput:
        """Decode one object's prompt on a frame (memory is encoded later, at propagation)."""
        feats = state.features.get(frame_idx)
        if mask is not None:
            heads = self.model.use_mask_as_output(feats.vision_features, feats.high_res, mask)
        else:
            is_init = frame_idx not in obj.tracked
            prev = obj.output(frame_idx)
            prev_logits = None
            if prev is not None and prev.pred_masks is not None:
                prev_logits = torch.clamp(prev.pred_masks.to(state.device), -32.0, 32.0)
            if is_init:
                pix = self.model.add_no_mem_embed(feats.vision_features)
            else:
                pix = self._condition(state, [obj], frame_idx, obj.tracked[frame_idx], [None])[0][1]
            coords, labels = points
            multimask = labels.shape[1] <= 1 and self.model.config.multimask_output_in_sam
            heads = self.model.forward_sam_heads(pix, coords, labels, prev_logits, feats.high_res, multimask)
        return FrameOutput(heads.obj_ptr.float(), heads.object_score_logits.float(), None,
                           self._postprocess(heads.low_res_masks.float()))

    def _postprocess(self, low_res: torch.Tensor) -> torch.Tensor:
        return fill_holes_in_logits(low_res, self.fill_hole_area) if self.fill_hole_area > 0 else low_res

    # --- removing prompts and objects --------------------------------------------------------

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, state: VideoState, frame_idx: int, obj_id: int, need_output: bool = True):
        """Drop an object's prompts on a frame; that frame becomes an ordinary tracked frame."""
        frame_idx = self._check_frame(state, frame_idx)
        obj = self._get_object(state, obj_id, create=False)
        obj.points.pop(frame_idx, None)
        obj.masks.pop(frame_idx, None)
        obj.temp.pop(frame_idx, None)
        out = obj.cond.pop(frame_idx, None)
        obj.auto.pop(frame_idx, None)
        if out is not None:
            obj.non_cond[frame_idx] = out
        obj.tracked.pop(frame_idx, None)
        if need_output:
            return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx)
        return None

    @torch.inference_mode()
    def remove_object(self, state: VideoState, obj_id: int, strict: bool = False, need_output: bool = True):
        """Forget an object. Returns (obj_ids, [(frame_idx, masks) for its prompted frames])."""
        if int(obj_id) not in state.objects:
            if strict:
                raise KeyError(f"unknown object id {obj_id}; known ids: {state.obj_ids}")
            return state.obj_ids, []
        obj = state.objects.pop(int(obj_id))
        frames = sorted(obj.prompt_frames() | set(obj.cond) | set(obj.temp))
        updated = [(f, self._frame_masks(state, f)) for f in frames] if need_output and state.objects else []
        return state.obj_ids, updated

    # --- propagation -------------------------------------------------------------------------

    @torch.inference_mode()
    def propagate_in_video_preflight(self, state: VideoState) -> None:
        """Encode the memory of pending prompt results and make them conditioning frames."""
        if not state.objects:
            raise RuntimeError("no objects: add points, a box or a mask first (add_new_points_or_box)")
        for obj in state.objects.values():
            for f, out in sorted(obj.temp.items()):
                if out.maskmem_features is None:
                    self._encode_prompt_memory(state, obj, f, out)
                obj.cond[f] = out
                obj.non_cond.pop(f, None)
                obj.auto.pop(f, None)
                if self.clear_non_cond_mem_around_input:
                    r = self.memory_temporal_stride * self.model.num_maskmem
                    for t in [t for t in obj.non_cond if abs(t - f) <= r]:
                        del obj.non_cond[t]
            obj.temp.clear()
            if not obj.cond:
                raise RuntimeError(f"object {obj.obj_id} has no prompts: add points, a box or a mask for it")

    @torch.inference_mode()
    def propagate_in_video(
        self,
        state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
        obj_ids: Sequence[int] | None = None,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track all objects frame by frame; yields (frame_idx, obj_ids, mask logits (N, 1, H, W)).

        Stopping the generator at any point leaves the state valid (each frame is committed
        before it is yielded). ``obj_ids`` restricts tracking to some objects (ours; the others
        keep their results).
        """
        for f, ids, low_res in self.propagate_low_res(state, start_frame_idx, max_frame_num_to_track,
                                                      reverse, obj_ids):
            yield f, ids, self._to_video_res(state, low_res)

    def frame_order(self, state: VideoState, start_frame_idx: int | None, max_frame_num_to_track: int | None,
                    reverse: bool) -> list[int]:
        """The frames a propagation visits (Meta's rule: ``max`` frames after the start, inclusive)."""
        if start_frame_idx is None:
            start_frame_idx = min(t for o in state.objects.values() for t in o.cond)
        start = self._check_frame(state, start_frame_idx)
        n = state.num_frames if max_frame_num_to_track is None else int(max_frame_num_to_track)
        if n < 0:
            raise ValueError("max_frame_num_to_track must be >= 0")
        if reverse:
            return list(range(start, max(start - n, 0) - 1, -1)) if start > 0 else []
        return list(range(start, min(start + n, state.num_frames - 1) + 1))

    @torch.inference_mode()
    def propagate_low_res(self, state: VideoState, start_frame_idx: int | None = None,
                          max_frame_num_to_track: int | None = None, reverse: bool = False,
                          obj_ids: Sequence[int] | None = None, skip: Callable[[int], bool] | None = None):
        """Like :meth:`propagate_in_video`, yielding low-res logits (N, 1, S/4, S/4) instead.

        ``skip(obj_id)``, asked on each frame (ours; the continuity guard's ``has_ended``): an
        object it is true for is not tracked on a frame it has no prompt on. No memory attention,
        decoding or memory for it there; its logits are ``NO_OBJ_SCORE``. Any earlier result on
        that frame is forgotten, and so is its tracked result on the frame before (where its track
        ended), so that neither becomes memory after a later prompt tracks it again."""
        self.propagate_in_video_preflight(state)
        if obj_ids is not None:
            unknown = [i for i in obj_ids if int(i) not in state.objects]
            if unknown:
                raise KeyError(f"unknown object ids {unknown}; known ids: {state.obj_ids}")
        chosen = list(state.objects.values()) if obj_ids is None else [state.objects[int(i)] for i in obj_ids]
        if start_frame_idx is None:
            start_frame_idx = min(t for o in chosen for t in o.cond)
        order = self.frame_order(state, start_frame_idx, max_frame_num_to_track, reverse)
        try:
            for i, f in enumerate(order):
                state.features.prefetch(order[i + 1 : i + 1 + self.read_ahead])
                yield f, [o.obj_id for o in chosen], self._propagate_frame(state, chosen, f, reverse, skip)
        finally:  # finished or stopped: hand the kept per-frame blocks back to the system
            allocator.release_free_memory()

    @torch.inference_mode()
    def track_step(self, state: VideoState, frame_idx: int, reverse: bool = False
                   ) -> tuple[int, list[int], torch.Tensor]:
        """One step of :meth:`propagate_low_res` on one frame, for callers that drive the frame
        order themselves (``reverse`` is the direction of travel: which neighbours are memory).
        Unlike Meta's propagation it also tracks frame 0 in reverse. Returns (frame_idx,
        obj_ids, low-res logits (N, 1, S/4, S/4))."""
        self.propagate_in_video_preflight(state)
        f = self._check_frame(state, frame_idx)
        objs = list(state.objects.values())
        return f, [o.obj_id for o in objs], self._propagate_frame(state, objs, f, reverse)

    @torch.inference_mode()
    def track_step_many(self, states: Sequence[VideoState], frame_idx: int, reverse: bool = False
                        ) -> list[tuple[list[int], torch.Tensor]]:
        """:meth:`track_step` on several states (e.g. windows of one stack) at once: in exact mode
        their objects go through memory attention, the decoder and the memory encoder as one batch
        (each with its own state's features and memory). Returns (obj_ids, low-res logits) per state."""
        if len(states) >= 2:  # one image-encoder batch for every state's frame
            with precision_mod.autocast(states[0].device, self.precision):
                encode_together([st.features for st in states], self._check_frame(states[0], frame_idx))
        if self.speed != "exact" or not self.batch_objects or len(states) < 2:
            return [self.track_step(st, frame_idx, reverse)[1:] for st in states]
        items: list[tuple[VideoState, ObjectState]] = []
        for st in states:
            self.propagate_in_video_preflight(st)
            f = self._check_frame(st, frame_idx)
            for o in st.objects.values():
                self._drop_stale_keyframes(o, f, reverse)
            items += [(st, o) for o in st.objects.values() if f not in o.cond]
        grid = states[0].features.get(f).vision_features.shape[-2:]
        size = batch_limit(grid[0] * grid[1], self.max_batch)
        for s0 in range(0, len(items), size):
            chunk = items[s0 : s0 + size]
            sts, objs = [st for st, _ in chunk], [o for _, o in chunk]
            with precision_mod.autocast(sts[0].device, self.precision):
                results = self._step(sts[0], sts[0].features.get(f), objs, f, reverse, [None] * len(objs), sts)
            for o, out in zip(objs, results):
                o.non_cond[f] = out
        out = []
        for st in states:
            objs = list(st.objects.values())
            out.append(([o.obj_id for o in objs], self._finish_frame(st, objs, f, reverse)))
        return out

    def _propagate_frame(self, state: VideoState, objs: list[ObjectState], f: int, reverse: bool,
                         skip: Callable[[int], bool] | None = None) -> torch.Tensor:
        """Track the objects not prompted on frame f (nor skipped); every object's low-res logits on f."""
        for o in objs:
            self._drop_stale_keyframes(o, f, reverse)
        to_track = [o for o in objs if f not in o.cond]
        skipped = {o.obj_id for o in to_track if skip is not None and skip(o.obj_id)}
        behind = f + 1 if reverse else f - 1  # the frame before f in the direction of travel
        for o in to_track:
            if o.obj_id in skipped:  # neither an old result here nor the result its track ended on
                o.non_cond.pop(f, None)  # may become its memory after a later prompt
                o.tracked.pop(f, None)
                if o.non_cond.pop(behind, None) is not None:  # (a prompted frame stays)
                    o.tracked.pop(behind, None)
        to_track = [o for o in to_track if o.obj_id not in skipped]
        if to_track and self.batch_objects:
            self._track_frame(state, to_track, f, reverse)
        else:
            for o in to_track:
                self._track_frame(state, [o], f, reverse)
        return self._finish_frame(state, objs, f, reverse, skipped)

    def _finish_frame(self, state: VideoState, objs: list[ObjectState], f: int, reverse: bool,
                      skipped: Collection[int] = ()) -> torch.Tensor:
        """Mark frame f tracked, forget what memory can no longer use; the objects' logits on f
        (``NO_OBJ_SCORE`` for skipped objects)."""
        rows = []
        for o in objs:
            if o.obj_id in skipped:
                side = self.image_size // 4
                rows.append(torch.full((1, 1, side, side), NO_OBJ_SCORE, device=state.device))
                continue
            o.tracked[f] = reverse
            self._refresh(o, f, reverse)
            self._evict(o, f, reverse)
            rows.append(o.output(f).pred_masks.to(state.device))
        return torch.cat(rows)

    def _encode_prompt_memory(self, state: VideoState, obj: ObjectState, f: int, out: FrameOutput) -> None:
        """Memory of a prompt result, encoded on the whole grid; fast mode keeps its window."""
        high = F.interpolate(out.pred_masks.to(state.device), size=(self.image_size,) * 2,
                             mode="bilinear", align_corners=False)
        with precision_mod.autocast(state.device, self.precision):
            feats = state.features.get(f)
            mem, _ = self.model.encode_memory(feats.vision_features, high, out.object_score_logits, True)
        if self.speed == "fast":
            grid = tuple(feats.vision_features.shape[-2:])
            out.center, out.box_side = win.mask_stats(out.pred_masks[0, 0], None)
            side = self._cap(win.window_side(out.box_side, self._margin(grid)))
            obj.window_side = side if obj.window_side is None else self._cap(max(obj.window_side, side))
            out.window = win.place(out.center, obj.window_side, grid) if out.center is not None else None
            obj.last_seen = out.center or obj.last_seen
            mem = win.crop(mem, out.window)
        out.maskmem_features = mem.to(self.storage_dtype).contiguous()

    def _cap(self, side: int) -> int:
        """A window side within ``max_window_side``."""
        return side if self.max_window_side is None else min(side, self.max_window_side)

    def _margin(self, grid: tuple[int, int]) -> int:
        return self.window_margin if self.window_margin is not None else win.auto_margin(min(grid))

    def _track_frame(self, state: VideoState, objs: list[ObjectState], f: int, reverse: bool) -> None:
        """One tracking step for a batch of objects on frame f (memory-conditioned).

        Fast mode: each object works in a window around its predicted position; an object that
        was present and is now lost or cut by its window's edge is tracked again with a window
        twice as large (up to the whole grid); the window then shrinks back step by step.
        """
        local = self.speed == "fast"
        with precision_mod.autocast(state.device, self.precision):
            feats = state.features.get(f)
            grid = tuple(feats.vision_features.shape[-2:])
            windows = [self._next_window(o, f, reverse, grid) for o in objs] if local else [None] * len(objs)
            results = self._step(state, feats, objs, f, reverse, windows)
            for _ in range(2 if local and self.reacquire else 0):
                lost = [i for i, o in enumerate(objs) if windows[i] is not None and self._lost(o, f, reverse, results[i])
                        and self._cap(2 * windows[i][2]) > windows[i][2]]  # a capped window cannot grow
                if not lost:
                    break
                for i in lost:
                    o = objs[i]
                    o.window_side = self._cap(win.window_side(2 * windows[i][2], 0))
                    windows[i] = win.place(self._window_center(windows[i]), o.window_side, grid)
                again = self._step(state, feats, [objs[i] for i in lost], f, reverse, [windows[i] for i in lost])
                for i, r in zip(lost, again):
                    results[i] = r
        for o, out in zip(objs, results):
            o.non_cond[f] = out
            if local:
                o.absent_run = o.absent_run + 1 if out.center is None else 0
                o.last_seen = out.center if out.center is not None else o.last_seen

    def _step(self, state: VideoState, feats, objs: list[ObjectState], f: int, reverse: bool,
              windows: list, states: list[VideoState] | None = None) -> list[FrameOutput]:
        """Memory attention, decoder and memory encoder for objects in their windows (None = grid).

        ``states`` (one per object, exact mode): objects of several states (stacks) tracked as one
        batch, each with its own stack's features of frame f."""
        results: list[FrameOutput | None] = [None] * len(objs)
        size = self.image_size // win.LOW_RES_PER_TOKEN
        feats_of = [feats] * len(objs) if states is None else [st.features.get(f) for st in states]
        for idx, pix in self._condition(state, objs, f, reverse, windows, states):
            ws = [windows[i] for i in idx]
            b = len(idx)
            if all(w is None for w in ws):
                items = [feats_of[i] for i in idx]
                high_res = [_batch([x.high_res[k] for x in items]) for k in range(len(feats.high_res))]
                vision = _batch([x.vision_features for x in items])
                image_pe = None
            else:
                high_res = [win.crop_each(h, ws, s) for h, s in zip(feats.high_res, (4, 2))]
                vision = win.crop_each(feats.vision_features, ws)
                image_pe = win.crop_each(self.model.sam_prompt_encoder.get_dense_pe(), ws)
            heads: HeadsOutput = self.model.forward_sam_heads(
                pix, None, None, None, high_res, multimask_output=self.model.config.multimask_output_for_tracking,
                image_pe=image_pe)
            mem, _ = self.model.encode_memory(vision, heads.high_res_masks, heads.object_score_logits, False)
            mem = mem.to(self.storage_dtype)
            low = heads.low_res_masks.float()
            for j, i in enumerate(idx):
                w = ws[j]
                logits = low[j : j + 1]
                if w is None:
                    logits = self._postprocess(logits)
                else:  # holes are found with the window's surroundings as background, as on the grid
                    logits = self._postprocess(win.pad_for_holes(logits, NO_OBJ_SCORE))[..., 1:-1, 1:-1]
                out = FrameOutput(heads.obj_ptr[j : j + 1].float(), heads.object_score_logits[j : j + 1].float(),
                                  mem[j : j + 1].contiguous(), win.paste(logits, w, size, NO_OBJ_SCORE), w)
                if self.speed == "fast":
                    out.center, out.box_side = win.mask_stats(out.pred_masks[0, 0], w)
                    out.touches_edge = win.touches_border(logits, w, tuple(feats.vision_features.shape[-2:]))
                results[i] = out
        return results

    def _next_window(self, obj: ObjectState, f: int, reverse: bool, grid: tuple[int, int]):
        """Fast mode: the window for an object on frame f, from its last two frames (None = grid)."""
        step = 1 if reverse else -1
        last, before = obj.output(f + step), obj.output(f + 2 * step)
        if last is None or last.pred_masks is None:
            return None
        if last.center is None and last.box_side == 0.0 and last.window is None:
            last.center, last.box_side = win.mask_stats(last.pred_masks[0, 0], None)
        if last.center is not None:  # follow the object's size: grow at once, shrink step by step
            needed = self._cap(win.window_side(last.box_side, self._margin(grid)))
            obj.window_side = needed if obj.window_side is None else max(needed, obj.window_side - win.QUANTUM)
        elif obj.window_side is None:
            return None
        center, speed = win.predict_center(last.center, before.center if before is not None else None)
        if center is None:  # absent: stay where it was last seen; look everywhere now and then
            if obj.absent_run % self.reacquire_every == self.reacquire_every - 1 or obj.last_seen is None:
                return None
            center = obj.last_seen
        speed = min(speed, obj.window_side / 2)  # a longer jump is left to re-acquisition
        return win.place(center, self._cap(win.window_side(obj.window_side + 2 * speed, 0)), grid)

    @staticmethod
    def _window_center(w) -> tuple[float, float]:
        return (w[0] + w[2] / 2, w[1] + w[3] / 2)

    @staticmethod
    def _lost(obj: ObjectState, f: int, reverse: bool, out: FrameOutput) -> bool:
        """Present on the previous frame, and now absent or cut by the window's edge."""
        last = obj.output(f + (1 if reverse else -1))
        was_present = last is not None and last.center is not None
        return was_present and (out.center is None or out.touches_edge)

    def _condition(self, state: VideoState, objs: list[ObjectState], f: int, reverse: bool,
                   windows: list, states: list[VideoState] | None = None) -> list[tuple[list[int], torch.Tensor]]:
        """Memory-conditioned features per group of objects: [(indices, (B, C, h, w))].

        Objects whose query window and memory layout have the same shapes share a batch.
        Windows (and memories stored at windows) use RoPE tables of their true coordinates.
        ``states``: one per object (exact mode), see :meth:`_step`.
        """
        states = [state] * len(objs) if states is None else states
        feats = state.features.get(f)
        feats_of = [st.features.get(f) for st in states]
        grid = tuple(feats.vision_features.shape[-2:])
        built = [self._memory_of(st, o, f, reverse) for st, o in zip(states, objs)]
        groups: dict[tuple, list[int]] = {}
        for i, (mem, _, n_ptr, mem_windows) in enumerate(built):
            q_shape = grid if windows[i] is None else windows[i][2:]
            groups.setdefault((q_shape, mem.shape[0], n_ptr), []).append(i)
        out = []
        dtype = feats.vision_features.dtype
        limits = {key: batch_limit(key[0][0] * key[0][1], self.max_batch) for key in groups}
        batches = [(key, idx[s : s + limits[key]]) for key, idx in groups.items()
                   for s in range(0, len(idx), limits[key])]
        # whole-grid batches (no RoPE tables of windows) on one stack's frame share the first
        # self-attention: computed once
        whole = [idx for _, idx in batches
                 if all(windows[i] is None and feats_of[i] is feats and all(w is None for w in built[i][3])
                        for i in idx)]
        first = None
        if len(whole) >= 2:
            first = self.model.first_self_attention(feats.vision_features, feats.vision_pos)
        for (_, _, n_ptr), idx in batches:
            ws = [windows[i] for i in idx]
            mem = torch.stack([built[i][0] for i in idx]).to(dtype)
            pos = torch.stack([built[i][1] for i in idx]).to(dtype)
            bg = len(idx)
            if all(w is None for w in ws):
                vision = _batch([feats_of[i].vision_features for i in idx])
                vision_pos = _batch([feats_of[i].vision_pos for i in idx])
            else:
                vision, vision_pos = win.crop_each(feats.vision_features, ws), win.crop_each(feats.vision_pos, ws)
            rope = None
            if any(w is not None for w in ws) or any(w is not None for i in idx for w in built[i][3]):
                rope = self._rope(state, ws, [built[i][3] for i in idx], grid)
            shared = first if first is not None and any(idx is x for x in whole) else None
            out.append((idx, self.model.condition_on_memory(vision, vision_pos, mem, pos, n_ptr, rope, first=shared)))
        return out

    def _rope(self, state: VideoState, query_windows: list, memory_windows: list[list], grid):
        """Per-item RoPE tables (B, N, d/2) for windowed queries and memories."""
        ma = self.model.memory_attention
        full = win.full(grid)

        def tables(ws):
            parts = [ma.window_rope(full if w is None else w, state.device) for w in ws]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

        q = [tables([w]) for w in query_windows]
        k = [tables(ws) for ws in memory_windows]
        return ((torch.stack([c for c, _ in q]), torch.stack([s_ for _, s_ in q])),
                (torch.stack([c for c, _ in k]), torch.stack([s_ for _, s_ in k])))

    def _maskmem_pos(self, state: VideoState) -> torch.Tensor:
        """Sine encoding (1, Cm, h, w) of the whole memory grid (computed once per state)."""
        if state.maskmem_pos is None:
            grid = self.image_size // win.INPUT_PER_TOKEN
            probe = torch.empty(1, self.model.config.mem_dim, grid, grid, device=state.device)
            state.maskmem_pos = self.model.memory_encoder.position_encoding(probe)
        return state.maskmem_pos

    def _memory_of(self, state: VideoState, obj: ObjectState, f: int, reverse: bool):
        """One object's memory tokens (M, Cm), their encodings (M, Cm), pointer-token count and
        the window of each spatial memory (None = whole grid)."""
        model = self.model
        selected, unselected = mb.select_cond_frames(f, obj.cond, self.max_cond_frames_in_attn)
        spare = {t: obj.cond[t] for t in unselected}
        spatial, positions, windows = [], [], []
        full_pos = self._maskmem_pos(state)

        def add(out: FrameOutput | None, t_pos: int) -> None:
            if out is not None and out.maskmem_features is not None:
                spatial.append((out.maskmem_features.to(state.device), t_pos))
                positions.append(win.crop(full_pos, out.window))
                windows.append(out.window)

        for t in selected:
            add(obj.cond[t], 0)
        for t_pos, prev in mb.recent_frames(f, model.num_maskmem, reverse, self.memory_temporal_stride):
            add(obj.non_cond.get(prev, spare.get(prev)), t_pos)
        cond_ptrs, recent = mb.pointer_frames(f, selected, state.num_frames, model.max_obj_ptrs(state.num_frames),
                                              reverse, signed=model.config.is_v21)
        ptrs = [(obj.cond[t].obj_ptr.to(state.device), p) for t, p in cond_ptrs]
        for t, p in recent:
            out = obj.non_cond.get(t, spare.get(t))
            if out is not None:
                ptrs.append((out.obj_ptr.to(state.device), p))
        memory, pos, n_ptr = model.build_memory(spatial, positions, [(v[0:1], p) for v, p in ptrs],
                                                state.num_frames)
        return memory[0], pos[0], n_ptr, windows

    def _drop_stale_keyframes(self, obj: ObjectState, f: int, reverse: bool) -> None:
        """Automatic keyframes from another pass, or at or ahead of frame f in the direction of
        travel (an earlier run's results, about to be tracked again), go back to tracked frames."""
        for t, r in list(obj.auto.items()):
            if r != reverse or (t <= f if reverse else t >= f):
                del obj.auto[t]
                obj.non_cond[t] = obj.cond.pop(t)

    def _refresh(self, obj: ObjectState, f: int, reverse: bool) -> None:
        """Keyframe refresh (see ``refresh_every``): promote f's tracked result to a conditioning
        frame when the object is present and its last conditioning frame is far enough behind."""
        out = obj.non_cond.get(f)
        if not self.refresh_every or out is None or out.maskmem_features is None:
            return
        behind = [abs(f - t) for t in obj.cond if (t > f if reverse else t < f)]
        if not behind or min(behind) < self.refresh_every or float(out.object_score_logits.max()) <= 0:
            return
        obj.cond[f] = obj.non_cond.pop(f)
        obj.auto[f] = reverse
        for t in sorted(obj.auto, key=lambda t: abs(t - f))[self.refresh_keep :]:
            del obj.auto[t]
            obj.non_cond[t] = obj.cond.pop(t)

    def _evict(self, obj: ObjectState, f: int, reverse: bool) -> None:
        """Forget tracked memories no later request can use (bounded memory on long stacks)."""
        w_mem = (self.model.num_maskmem - 1) * self.memory_temporal_stride
        w_ptr = self.model.config.max_obj_ptrs_in_encoder - 1
        lo_m, hi_m, near_m = mb.frames_to_keep(f, reverse, obj.cond, w_mem)
        lo_p, hi_p, near_p = mb.frames_to_keep(f, reverse, obj.cond, w_ptr)
        for t in list(obj.non_cond):
            if not (lo_p <= t <= hi_p or t in near_p):
                del obj.non_cond[t]
            elif not (lo_m <= t <= hi_m or t in near_m):
                out = obj.non_cond[t]
                out.maskmem_features = None
                out.pred_masks = None

    # --- outputs -----------------------------------------------------------------------------

    def current_low_res(self, state: VideoState, f: int) -> torch.Tensor:
        """Every object's current low-res logits on frame f (N, 1, S/4, S/4); -1024 where none."""
        l = self.image_size // 4
        rows = []
        for o in state.objects.values():
            out = o.output(f)
            if out is not None and out.pred_masks is not None:
                rows.append(out.pred_masks.to(state.device))
            else:
                rows.append(torch.full((1, 1, l, l), NO_OBJ_SCORE, device=state.device))
        if not rows:
            return torch.zeros((0, 1, l, l), device=state.device)
        return torch.cat(rows)

    def _frame_masks(self, state: VideoState, f: int) -> torch.Tensor:
        """Current masks of every object on frame f, at the frame's size (N, 1, H, W)."""
        return self._to_video_res(state, self.current_low_res(state, f))

    def _to_video_res(self, state: VideoState, low_res: torch.Tensor) -> torch.Tensor:
        out = T.masks_to_original(low_res, (state.video_height, state.video_width), self.canvas_hw(state))
        return non_overlapping(out) if self.non_overlap_masks else out

    def canvas_hw(self, state: VideoState) -> tuple[int, int]:
        """The area a frame occupies before the resize to the model input: the frame, or padded
        when the model limits enlargement (``SAM2Config.max_upscale``)."""
        return T.canvas_hw((state.video_height, state.video_width), self.image_size, state.features.max_upscale)
