"""FrameSource: random access to the frames of a stack, normalised for the model, read lazily.

A stack is anything indexed (T, Y, X) or (T, Y, X, C): numpy arrays, memmaps, dask and zarr
arrays, or a path to a TIFF / OME-TIFF (read through tifffile's zarr view, page by page), a zarr
store, or a folder of JPEG/PNG/TIFF frames. Only the frames asked for are ever read.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2_core import transforms as T

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class _FolderStack:
    """A folder of single-frame images as a lazy (T, Y, X[, C]) array."""

    def __init__(self, folder: Path) -> None:
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        key = lambda p: [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]  # noqa: E731
        self.files = sorted(files, key=key)
        first = self._read(0)
        self.shape = (len(self.files), *first.shape)
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def _read(self, i: int) -> np.ndarray:
        path = self.files[i]
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from skimage.io import imread

        return imread(path)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self._read(int(i))
        if img.shape != self.shape[1:]:
            raise ValueError(
                f"{self.files[int(i)]} has shape {img.shape}, but the first frame has {self.shape[1:]}"
            )
        return img


def _file_mapping(arr: Any) -> tuple[mmap.mmap, int] | None:
    """(mmap, address of its first byte) behind a read-only/shared np.memmap view, else None."""
    root = arr
    while isinstance(root, np.ndarray) and not isinstance(getattr(root, "base", None), mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or getattr(root, "mode", None) not in ("r", "r+"):
        return None  # copy-on-write ("c") pages would lose their changes: leave them alone
    mm = root.base
    array_offset = int(root.offset) % mmap.ALLOCATIONGRANULARITY  # how np.memmap maps offsets
    return mm, root.__array_interface__["data"][0] - array_offset


def _release_pages(view: np.ndarray) -> None:
    """Drop a memory-mapped frame's file pages from the process (they stay in the page cache).

    Reading every frame of a memory-mapped stack otherwise leaves the whole file mapped in:
    resident memory grows by the file's size (e.g. 500 MB for 1000 512x512 uint16 frames).
    """
    found = _file_mapping(view)
    if found is None or not view.flags.c_contiguous or not hasattr(found[0], "madvise"):
        return
    mm, base = found
    start = view.__array_interface__["data"][0] - base
    page = mmap.PAGESIZE
    lo = (start // page) * page
    hi = min(len(mm), -(-(start + view.nbytes) // page) * page)
    if 0 <= lo < hi:
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError, AttributeError):
            pass


def open_stack(source: Any) -> Any:
    """An array-like (T, ...) for a path or array; arrays are returned as they are (not copied)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        name = path.name.lower()
        if name.endswith((".tif", ".tiff")):
            import tifffile
            import zarr

            try:
                store = tifffile.imread(path, aszarr=True)
            except Exception as e:
                raise ValueError(f"{path} is not a readable TIFF ({e})") from None
            arr = zarr.open(store, mode="r")
            return arr if hasattr(arr, "shape") else arr["0"]  # pyramids: full resolution
        if name.endswith(".zarr") or (path / ".zarray").exists() or (path / "zarr.json").exists():
            import zarr

            arr = zarr.open(str(path), mode="r")
            if not hasattr(arr, "shape"):  # a group: OME-Zarr level 0, else the first array
                keys = list(arr.array_keys())
                if not keys:
                    raise ValueError(f"zarr group {path} holds no arrays")
                arr = arr["0"] if "0" in keys else arr[keys[0]]
            return arr
        if path.is_dir():
            return _FolderStack(path)
        if name.endswith(IMAGE_SUFFIXES):
            from skimage.io import imread

            return imread(path)[None]
        raise ValueError(
            f"unsupported file {path}: expected a TIFF, a zarr store or a folder of images"
        )
    if not hasattr(source, "shape") or not hasattr(source, "__getitem__"):
        source = np.asarray(source)
    return source


class FrameSource:
    """Frames of a stack, normalised to RGB in [0, 1] as the model expects.

    Args:
        data: a stack (see module docstring), frames first.
        contrast_limits: fixed (low, high) intensities (one pair, or one per channel), e.g.
            napari's; default: robust percentiles estimated from a sample of frames.
        channels: up to 3 channel indices to use when frames have more than 3 channels.
        channel_axis: axis of channels in ``data`` if not last (it is moved last, lazily).
        percentiles: percentiles used when estimating limits.
        sample_frames: how many evenly spaced frames the estimate reads.
    """

    def __init__(
        self,
        data: Any,
        *,
        contrast_limits: Any = None,
        channels: Sequence[int] | None = None,
        channel_axis: int | None = None,
        percentiles: tuple[float, float] = T.DEFAULT_PERCENTILES,
        sample_frames: int = 16,
    ) -> None:
        self.source_name = str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
        self.data = open_stack(data)
        shape = tuple(int(s) for s in self.data.shape)
        if channel_axis is not None:
            channel_axis = channel_axis % len(shape)
            if channel_axis == 0:
                raise ValueError("channel_axis cannot be the frame axis 0")
        self.channel_axis = channel_axis
        if channel_axis is not None and channel_axis != len(shape) - 1:
            shape = shape[:channel_axis] + shape[channel_axis + 1 :] + (shape[channel_axis],)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"expected frames indexed (T, Y, X) or (T, Y, X, C), got shape {shape}; for 3D+t "
                "data pass one time point (a (Z, Y, X) volume) or one z slice at a time"
            )
        if shape[0] == 0 or 0 in shape[1:3]:
            raise ValueError(f"the stack is empty (shape {shape})")
        if len(shape) == 4 and shape[-1] > 4 and channels is None:
            raise ValueError(
                f"frames have {shape[-1]} channels (shape {shape}); choose up to 3 with channels=[...] "
                "or give channel_axis if the last axis is not channels"
            )
        self.shape = shape
        self.num_frames, self.height, self.width = shape[0], shape[1], shape[2]
        self.dtype = np.dtype(self.data.dtype)
        self.channels = list(channels) if channels is not None else None
        self.percentiles = percentiles
        n_ch = shape[3] if len(shape) == 4 else 1
        self.natural_rgb = contrast_limits is None and self.dtype == np.uint8 and n_ch == 3 and self.channels is None
        if contrast_limits is not None:
            self.limits = contrast_limits
        elif self.natural_rgb:
            self.limits = None
        else:
            self.limits = self._estimate_limits(sample_frames)

    def __len__(self) -> int:
        return self.num_frames

    def raw(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored: (Y, X) or (Y, X, C)."""
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame index {index} outside the stack of {self.num_frames} frames")
        item = self.data[int(index) % self.num_frames]
        if isinstance(item, np.memmap):  # copy, then unmap the pages: memory stays flat
            frame = np.array(item)
            _release_pages(item)
        else:
            frame = np.asarray(item)
        if self.channel_axis is not None and self.channel_axis != frame.ndim:
            frame = np.moveaxis(frame, self.channel_axis - 1, -1)
        return frame

    def _selected(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 3 and self.channels is not None:
            frame = frame[..., self.channels]
        return frame

    def _estimate_limits(self, n: int) -> list[tuple[float, float]]:
        """Per-channel percentiles over up to ``n`` evenly spaced frames (pixel-subsampled)."""
        idx = np.unique(np.linspace(0, self.num_frames - 1, min(n, self.num_frames)).astype(int))
        step = max(1, int(np.sqrt(self.height * self.width / 250_000)))
        samples = []
        for i in idx:
            f = self._selected(self.raw(int(i)))[::step, ::step]
            samples.append(f.reshape(-1, f.shape[-1]) if f.ndim == 3 else f.reshape(-1, 1))
        stack = np.concatenate(samples, axis=0)
        limits = []
        for c in range(stack.shape[1]):
            vals = stack[:, c]
            if vals.dtype.kind == "f":
                vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                raise ValueError("the sampled frames contain no finite values")
            limits.append(T.percentile_limits(vals, self.percentiles))
        return limits

    def unit_rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as (Y, X, 3) float32 in [0, 1]."""
        frame = self.raw(index)
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            raise ValueError(f"frame {index} contains NaN or infinite values; clean the data first")
        limits = self.limits
        if isinstance(limits, list) and len(limits) == 1:
            limits = limits[0]  # one estimated pair for a single channel
        return T.to_unit_rgb(frame, limits, self.channels)

    def model_input(self, index: int, image_size: int, device: torch.device | str | None = None,
                    max_upscale: float = 0.0) -> torch.Tensor:
        """Frame ``index`` as the model's (1, 3, S, S) input (``max_upscale``: ``T.to_model_input``)."""
        return T.to_model_input(self.unit_rgb(index), image_size, device=device, max_upscale=max_upscale)

    def signature(self) -> str:
        """Content signature (shape, dtype, normalisation, hash of sampled frames) for caches."""
        h = hashlib.sha256()
        h.update(repr((self.shape, str(self.dtype), self.channels, self.natural_rgb)).encode())
        h.update(np.asarray(self.limits if self.limits is not None else [], dtype=np.float64).tobytes())
        for i in np.unique(np.linspace(0, self.num_frames - 1, min(8, self.num_frames)).astype(int)):
            h.update(np.ascontiguousarray(self.raw(int(i))).tobytes())
        return h.hexdigest()[:32]
