"""Image and coordinate transforms between the user's pixels and the model's square input.

All resize and normalisation maths lives here. Conventions: images are (H, W) or (H, W, C)
numpy arrays; points are (x, y) pixels of the original image; boxes are XYXY pixels; the model
sees an (S, S) square (aspect ratio is not kept, as in SAM 2) normalised with ImageNet statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Default robust percentiles for microscopy intensities.
DEFAULT_PERCENTILES = (0.5, 99.8)


def percentile_limits(
    data: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """Robust (low, high) intensity limits over the finite values of ``data``."""
    values = np.asarray(data)
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if values.size == 0:
        raise ValueError("cannot estimate intensity limits: the data has no finite values")
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi)


def rescale(data: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Map [low, high] to [0, 1] (clipped), float32. A flat range maps to 0."""
    lo, hi = float(limits[0]), float(limits[1])
    out = np.asarray(data, dtype=np.float32) - np.float32(lo)
    if hi > lo:
        out *= np.float32(1.0 / (hi - lo))
    else:
        out[:] = 0.0
    return np.clip(out, 0.0, 1.0, out=out)


def is_natural_rgb(image: np.ndarray) -> bool:
    """uint8 (H, W, 3): taken as Meta takes it (/255), no intensity normalisation."""
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a single 2-D image (H, W) or (H, W, C); raise ValueError saying what is wrong."""
    image = np.asarray(image)
    if image.dtype == object or image.dtype.kind not in "biuf":
        raise ValueError(f"image must be numeric, got dtype {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"expected a 2-D image (H, W) or (H, W, C), got shape {image.shape}; "
            "for stacks use the video predictor, one frame at a time here"
        )
    if image.shape[0] < 1 or image.shape[1] < 1 or image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4:
        raise ValueError(
            f"image shape {image.shape} looks channel-first; pass (H, W, C) (np.moveaxis(img, 0, -1))"
        )
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values; replace them (np.nan_to_num)")
    return image


def to_unit_rgb(
    image: np.ndarray,
    contrast_limits: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    channels: Sequence[int] | None = None,
) -> np.ndarray:
    """(H, W) or (H, W, C) of any dtype -> (H, W, 3) float32 in [0, 1].

    uint8 RGB without contrast limits is divided by 255 (Meta's convention). Anything else is
    rescaled with ``contrast_limits`` (one pair for all channels, or one per channel) or with
    robust percentiles of the image. One channel is replicated to RGB; two channels become
    (c0, c1, c0/2 + c1/2); more than three need ``channels`` (up to three indices).
    """
    image = check_image(image)
    if image.ndim == 3 and channels is not None:
        channels = list(channels)
        if not 1 <= len(channels) <= 3 or any(not 0 <= c < image.shape[-1] for c in channels):
            raise ValueError(
                f"channels={channels} must be 1 to 3 indices into the {image.shape[-1]} channels"
            )
        image = image[..., channels]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] > 3:
        raise ValueError(
            f"image has {image.shape[-1]} channels; choose up to 3 with channels=[...]"
        )
    if contrast_limits is None and is_natural_rgb(image):
        return image.astype(np.float32) / 255.0
    if image.ndim == 2:
        limits = contrast_limits if contrast_limits is not None else percentile_limits(image)
        g = rescale(image, _pair(limits))
        return np.repeat(g[..., None], 3, axis=-1)
    n = image.shape[-1]
    per_channel = _per_channel_limits(contrast_limits, n)
    chans = [
        rescale(image[..., c], per_channel[c] if per_channel else percentile_limits(image[..., c]))
        for c in range(n)
    ]
    if n == 2:
        chans.append(0.5 * chans[0] + 0.5 * chans[1])
    return np.stack(chans, axis=-1)


def _pair(limits) -> tuple[float, float]:
    lo, hi = limits
    return float(lo), float(hi)


def _per_channel_limits(limits, n: int) -> list[tuple[float, float]] | None:
    if limits is None:
        return None
    arr = np.asarray(limits, dtype=float)
    if arr.shape == (2,):
        return [(arr[0], arr[1])] * n
    if arr.shape == (n, 2):
        return [(a, b) for a, b in arr]
    raise ValueError(f"contrast_limits must be (low, high) or {n} such pairs, got shape {arr.shape}")


def canvas_hw(orig_hw: tuple[int, int], image_size: int, max_upscale: float = 0.0) -> tuple[int, int]:
    """The (H, W) area a frame occupies before the resize to the model input: the frame itself,
    or, with ``max_upscale`` k > 0, the frame in the top-left corner of an area at least
    image_size / k a side, so that the resize enlarges it at most k times
    (``SAM2Config.max_upscale``)."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if not max_upscale or max_upscale <= 0:
        return h, w
    side = int(np.ceil(image_size / max_upscale))
    return max(h, side), max(w, side)


def to_model_input(unit_rgb: np.ndarray | torch.Tensor, image_size: int, device=None,
                   max_upscale: float = 0.0) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, S, S): bilinear antialiased resize, ImageNet normalisation.

    ``max_upscale``: first place the frame on its :func:`canvas_hw`, the rest filled with the
    frame's background level (per channel, its 10th percentile).
    """
    x = torch.as_tensor(unit_rgb, dtype=torch.float32, device=device).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    hc, wc = canvas_hw((h, w), image_size, max_upscale)
    if (hc, wc) != (h, w):
        sample = x[0].flatten(1)[:, :: max(1, h * w // (1 << 20))]  # torch.quantile takes < 16 M values
        fill = torch.quantile(sample, 0.1, dim=1)
        canvas = fill.view(1, 3, 1, 1).expand(1, 3, hc, wc).clone()
        canvas[..., :h, :w] = x
        x = canvas
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def points_to_model(
    points_xy: np.ndarray | torch.Tensor, orig_hw: tuple[int, int], image_size: int, normalize: bool = True
) -> torch.Tensor:
    """(..., 2) (x, y): original pixels (or [0, 1] when ``normalize`` is False) -> model pixels."""
    p = torch.as_tensor(np.asarray(points_xy, dtype=np.float32)).clone()
    if normalize:
        p[..., 0] = p[..., 0] / orig_hw[1]
        p[..., 1] = p[..., 1] / orig_hw[0]
    return p * image_size


def boxes_to_model(
    boxes_xyxy: np.ndarray | torch.Tensor, orig_hw: tuple[int, int], image_size: int, normalize: bool = True
) -> torch.Tensor:
    """(..., 4) XYXY -> (B, 2, 2) corner points in model pixels."""
    b = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 2, 2)
    return points_to_model(b, orig_hw, image_size, normalize)


def masks_to_original(logits: torch.Tensor, orig_hw: tuple[int, int],
                      canvas: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, M, h, w) logits -> (B, M, H, W) by bilinear interpolation (align_corners=False); with a
    padded ``canvas`` (:func:`canvas_hw`), interpolated to it and cropped to the frame."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if canvas is None or tuple(canvas) == (h, w):
        return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    up = F.interpolate(logits.float(), size=tuple(int(c) for c in canvas), mode="bilinear", align_corners=False)
    return up[..., :h, :w]
