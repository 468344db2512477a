"""SAM2ImagePredictor: embed an image once, then decode masks for any number of prompts."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from sam2_core import transforms as T
from sam2_core.modeling.sam2 import ImageFeatures, SAM2Model


class SAM2ImagePredictor:
    """Interactive single-image segmentation with a SAM 2 model (Meta's API, numpy in and out).

    Args:
        model: a :class:`SAM2Model` (see :func:`sam2_core.build_sam2`).
        mask_threshold: logit threshold for binary masks.
        cache_size: embeddings kept, keyed by the content of the model input (image, contrast,
            channels): setting an image seen recently costs no encoder run. 0 disables.
    """

    def __init__(self, model: SAM2Model, *, mask_threshold: float = 0.0, cache_size: int = 4) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, ImageFeatures] = OrderedDict()
        self.encoded = 0  # images run through the encoder (cache misses)
        self.reset_predictor()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", **kwargs) -> SAM2ImagePredictor:
        """A predictor for a model name (see ``list_models()``) or a checkpoint file."""
        from sam2_core.build import build_sam2

        device = kwargs.pop("device", None)
        if os.path.exists(str(name_or_path)):
            model = build_sam2(checkpoint=name_or_path, device=device)
        else:
            model = build_sam2(str(name_or_path), device=device)
        return cls(model, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        """Forget the current image(s)."""
        self._features: ImageFeatures | None = None
        self._image_embed: torch.Tensor | None = None
        self._orig_hw: list[tuple[int, int]] = []
        self._is_image_set = False
        self._is_batch = False

    # --- images ------------------------------------------------------------------------------

    @torch.inference_mode()
    def set_image(
        self,
        image: np.ndarray,
        *,
        contrast_limits: tuple[float, float] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        """Compute the embedding of one image (H, W) or (H, W, C), any dtype.

        uint8 RGB is taken as Meta takes it; other data is rescaled with ``contrast_limits`` or
        robust percentiles (see :func:`sam2_core.transforms.to_unit_rgb`).
        """
        image = np.asarray(image)
        rgb = T.to_unit_rgb(image, contrast_limits, channels)
        x = T.to_model_input(rgb, self.model.image_size, device=self.device)
        self.set_model_input(x, [tuple(image.shape[:2])])

    @torch.inference_mode()
    def set_image_batch(self, images: Sequence[np.ndarray], **kwargs) -> None:
        """Embed several images at once; then use :meth:`predict_batch`."""
        if len(images) == 0:
            raise ValueError("set_image_batch needs at least one image")
        xs, hws = [], []
        for img in images:
            img = np.asarray(img)
            rgb = T.to_unit_rgb(img, kwargs.get("contrast_limits"), kwargs.get("channels"))
            xs.append(T.to_model_input(rgb, self.model.image_size, device=self.device))
            hws.append(tuple(img.shape[:2]))
        self.set_model_input(torch.cat(xs), hws)
        self._is_batch = True

    @torch.inference_mode()
    def set_model_input(self, x: torch.Tensor, orig_hw: list[tuple[int, int]]) -> None:
        """Embed already-preprocessed input (B, 3, S, S) whose originals had sizes ``orig_hw``."""
        self.reset_predictor()
        key = hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
        key += str(tuple(x.shape)).encode()
        features = self._cache.get(key)
        if features is None:
            features = self.model.encode_image(x)
            self.encoded += 1
            if self.cache_size > 0:
                self._cache[key] = features
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        self._features = features
        self._image_embed = self.model.add_no_mem_embed(self._features.vision_features)
        self._orig_hw = [(int(h), int(w)) for h, w in orig_hw]
        self._is_image_set = True

    def clear_cache(self) -> None:
        """Forget cached embeddings (e.g. after changing the model's weights in place)."""
        self._cache.clear()

    def get_image_embedding(self) -> torch.Tensor:
        """(B, C, h, w) embedding of the current image(s) (with the no-memory embedding)."""
        self._require_image()
        return self._image_embed

    def _require_image(self) -> None:
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # --- prompts -----------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        *,
        image_index: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        Args:
            point_coords: (N, 2) or (B, N, 2) (x, y) pixels of the original image.
            point_labels: (N,) or (B, N): 1 foreground, 0 background.
            box: (4,) or (B, 4) XYXY pixels.
            mask_input: (1, L, L) or (B, 1, L, L) low-res logits from an earlier call (L = S/4).
            multimask_output: three candidate masks instead of one.
            return_logits: return logits instead of boolean masks.
            normalize_coords: coordinates are pixels (True) or already in [0, 1] (False).

        Returns:
            masks (C, H, W) bool (or logits), scores (C,) predicted IoU, low-res logits
            (C, L, L) clamped to +-32; with B prompts each gains a leading B axis.
        """
        self._require_image()
        if not 0 <= image_index < len(self._orig_hw):
            raise IndexError(f"image_index {image_index} out of range for {len(self._orig_hw)} image(s)")
        hw = self._orig_hw[image_index]
        coords, labels, boxes, masks = self._prep_prompts(
            point_coords, point_labels, box, mask_input, hw, normalize_coords
        )
        low_res, iou = self._predict(coords, labels, boxes, masks, multimask_output, image_index)
        full = T.masks_to_original(low_res, hw)
        low_res = torch.clamp(low_res, -32.0, 32.0)
        out = full if return_logits else full > self.mask_threshold
        squeeze = low_res.shape[0] == 1
        res = [t[0] if squeeze else t for t in (out, iou, low_res)]
        return tuple(r.float().cpu().numpy() if r.dtype != torch.bool else r.cpu().numpy() for r in res)

    def predict_batch(self, point_coords_batch=None, point_labels_batch=None, box_batch=None,
                      mask_input_batch=None, multimask_output=True, return_logits=False,
                      normalize_coords=True):
        """:meth:`predict` for each image set with :meth:`set_image_batch`; lists of results."""
        self._require_image()
        n = len(self._orig_hw)
        results = ([], [], [])
        for i in range(n):
            pick = lambda b: None if b is None else b[i]  # noqa: E731
            r = self.predict(pick(point_coords_batch), pick(point_labels_batch), pick(box_batch),
                             pick(mask_input_batch), multimask_output, return_logits,
                             normalize_coords, image_index=i)
            for acc, v in zip(results, r):
                acc.append(v)
        return results

    def _prep_prompts(self, point_coords, point_labels, box, mask_input, hw, normalize):
        s = self.model.image_size
        dev = self.device
        coords = labels = boxes = masks = None
        if point_coords is not None:
            pc = np.asarray(point_coords, dtype=np.float32)
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            pl = np.asarray(point_labels)
            if pc.ndim not in (2, 3) or pc.shape[-1] != 2 or pl.shape != pc.shape[:-1]:
                raise ValueError(
                    f"point_coords must be (N, 2) or (B, N, 2) with labels (N,) or (B, N); "
                    f"got {pc.shape} and {pl.shape}"
                )
            if not np.isfinite(pc).all():
                raise ValueError("point_coords contain NaN or infinite values")
            bad = set(np.unique(pl).tolist()) - {-1, 0, 1, 2, 3}
            if bad:
                raise ValueError(f"point labels must be 1 (positive) or 0 (negative), got {sorted(bad)}")
            coords = T.points_to_model(pc, hw, s, normalize).to(dev)
            labels = torch.as_tensor(pl, dtype=torch.int32, device=dev)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            b = np.asarray(box, dtype=np.float32)
            if b.shape[-1] != 4 or b.ndim > 2:
                raise ValueError(f"box must be (4,) or (B, 4) XYXY, got shape {b.shape}")
            boxes = T.boxes_to_model(b, hw, s, normalize).to(dev)  # (B, 2, 2)
        if mask_input is not None:
            masks = torch.as_tensor(np.asarray(mask_input, dtype=np.float32), device=dev)
            if masks.ndim == 3:
                masks = masks[None]
            want = self.model.sam_prompt_encoder.mask_input_size
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != want:
                raise ValueError(
                    f"mask_input must be (1, {want[0]}, {want[1]}) low-res logits (as returned by "
                    f"predict), got shape {tuple(masks.shape)}"
                )
        return coords, labels, boxes, masks

    def _predict(self, coords, labels, boxes, masks, multimask_output, image_index):
        """Decoder on model-space prompts -> low-res logits (B, C, L, L), IoU (B, C)."""
        if boxes is not None:
            box_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=boxes.device)
            box_labels = box_labels.repeat(boxes.shape[0], 1)
            if coords is not None:
                coords = torch.cat([boxes, coords], dim=1)
                labels = torch.cat([box_labels, labels], dim=1)
            else:
                coords, labels = boxes, box_labels
        points = (coords, labels) if coords is not None else None
        pe = self.model.sam_prompt_encoder
        sparse, dense = pe(points, None, masks)
        batched = coords is not None and coords.shape[0] > 1
        feats = self._features.select(image_index)
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            self._image_embed[image_index : image_index + 1],
            pe.get_dense_pe(),
            sparse,
            dense,
            multimask_output=multimask_output,
            repeat_image=batched,
            high_res_features=feats.high_res,
        )
        return low_res, iou
