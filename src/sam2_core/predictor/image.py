"""SAM2ImagePredictor: embed an image once, then decode masks for any number of prompts."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from sam2_core import allocator
from sam2_core import transforms as T
from sam2_core.modeling.sam2 import ImageFeatures, SAM2Model


class SAM2ImagePredictor:
    """Interactive single-image segmentation with a SAM 2 model (Meta's API, numpy in and out).

    Args:
        model: a :class:`SAM2Model` (see :func:`sam2_core.build_sam2`).
        mask_threshold: logit threshold for binary masks.
        cache_size: embeddings kept, keyed by the content of the model input (image, contrast,
            channels): setting an image seen recently costs no encoder run. 0 disables.

    Click latency: besides the embedding, the parts of the mask decoder that do not depend on
    the prompt are computed once per image (on the first click without ``mask_input``): the
    grid's positional encoding, the image tokens with the no-mask embedding, and the first
    two-way block's projections of the image tokens (keys and values of the token-to-image
    attention, queries of the image-to-token attention). Each click then runs only the rest of
    the decoder; the results equal the decoder's own (bit for bit for one prompt). The decoder
    module itself is called when it has hooks, in training mode, with ``mask_input``, or with
    ``fast_decoder = False``.
    """

    #: Reuse the prompt-independent parts of the decoder between clicks on the same image.
    fast_decoder: bool = True

    def __init__(self, model: SAM2Model, *, mask_threshold: float = 0.0, cache_size: int = 4) -> None:
        self.model = model
        if model.device.type == "cpu":
            allocator.tune_cpu_allocator()  # large tensors reuse memory (allocator.py)
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
        self._canvas_hw: list[tuple[int, int]] = []  # see transforms.canvas_hw
        self._is_image_set = False
        self._is_batch = False
        self._static: dict[int, dict[str, torch.Tensor]] = {}  # per image index, see _static_parts

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
        x = T.to_model_input(rgb, self.model.image_size, device=self.device, max_upscale=self.max_upscale)
        hw = tuple(image.shape[:2])
        self.set_model_input(x, [hw], [T.canvas_hw(hw, self.model.image_size, self.max_upscale)])

    @torch.inference_mode()
    def set_image_batch(self, images: Sequence[np.ndarray], **kwargs) -> None:
        """Embed several images at once; then use :meth:`predict_batch`."""
        if len(images) == 0:
            raise ValueError("set_image_batch needs at least one image")
        xs, hws = [], []
        for img in images:
            img = np.asarray(img)
            rgb = T.to_unit_rgb(img, kwargs.get("contrast_limits"), kwargs.get("channels"))
            xs.append(T.to_model_input(rgb, self.model.image_size, device=self.device, max_upscale=self.max_upscale))
            hws.append(tuple(img.shape[:2]))
        self.set_model_input(torch.cat(xs), hws,
                             [T.canvas_hw(hw, self.model.image_size, self.max_upscale) for hw in hws])
        self._is_batch = True

    @property
    def max_upscale(self) -> float:
        """How far an image smaller than the input may be enlarged (``SAM2Config.max_upscale``)."""
        return float(self.model.config.max_upscale)

    def canvas_hw(self, image_index: int = 0) -> tuple[int, int]:
        """The area an image occupied before the resize (itself, or padded: ``T.canvas_hw``)."""
        return self._canvas_hw[image_index]

    @torch.inference_mode()
    def set_model_input(self, x: torch.Tensor, orig_hw: list[tuple[int, int]],
                        canvas_hw: list[tuple[int, int]] | None = None) -> None:
        """Embed already-preprocessed input (B, 3, S, S) whose originals had sizes ``orig_hw``
        (resized from ``canvas_hw`` when they were padded first; default: the originals)."""
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
        self._canvas_hw = [(int(h), int(w)) for h, w in (canvas_hw or orig_hw)]
        self._is_image_set = True

    def clear_cache(self) -> None:
        """Forget cached embeddings (e.g. after changing the model's weights in place)."""
        self._cache.clear()
        self._static.clear()
        self._pe_cache = None

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
        multimask_output: bool | None = None,
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
            multimask_output: three candidate masks instead of one. None (default): three, as
                Meta's default, except for a prompt of one click on a model whose config says
                ``multimask_output_in_sam=False`` (the bundled one), which gives its single-mask
                output: the better mask when its IoU head ranks the candidates badly.
            return_logits: return logits instead of boolean masks.
            normalize_coords: coordinates are pixels (True) or already in [0, 1] (False).

        Returns:
            masks (C, H, W) bool (or logits), scores (C,) predicted IoU, low-res logits
            (C, L, L) clamped to +-32; with B prompts each gains a leading B axis.
        """
        self._require_image()
        if not 0 <= image_index < len(self._orig_hw):
            raise IndexError(f"image_index {image_index} out of range for {len(self._orig_hw)} image(s)")
        hw, canvas = self._orig_hw[image_index], self._canvas_hw[image_index]
        coords, labels, boxes, masks = self._prep_prompts(
            point_coords, point_labels, box, mask_input, hw, normalize_coords, canvas
        )
        if multimask_output is None:
            one_click = boxes is None and masks is None and coords is not None and coords.shape[1] == 1
            multimask_output = not one_click or bool(self.model.config.multimask_output_in_sam)
        low_res, iou = self._predict(coords, labels, boxes, masks, multimask_output, image_index)
        full = T.masks_to_original(low_res, hw, canvas)
        low_res = torch.clamp(low_res, -32.0, 32.0)
        out = full if return_logits else full > self.mask_threshold
        squeeze = low_res.shape[0] == 1
        res = [t[0] if squeeze else t for t in (out, iou, low_res)]
        return tuple(r.float().cpu().numpy() if r.dtype != torch.bool else r.cpu().numpy() for r in res)

    def predict_batch(self, point_coords_batch=None, point_labels_batch=None, box_batch=None,
                      mask_input_batch=None, multimask_output=None, return_logits=False,
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

    def _prep_prompts(self, point_coords, point_labels, box, mask_input, hw, normalize, canvas=None):
        s = self.model.image_size
        scale = None  # [0, 1] coordinates of a padded image: to pixels first, then over the canvas
        if canvas is not None and tuple(canvas) != tuple(hw):
            scale = None if normalize else np.array([hw[1], hw[0]], np.float32)
            hw, normalize = canvas, True
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
            coords = T.points_to_model(pc if scale is None else pc * scale, hw, s, normalize).to(dev)
            labels = torch.as_tensor(pl, dtype=torch.int32, device=dev)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            b = np.asarray(box, dtype=np.float32)
            if b.shape[-1] != 4 or b.ndim > 2:
                raise ValueError(f"box must be (4,) or (B, 4) XYXY, got shape {b.shape}")
            boxes = T.boxes_to_model(b if scale is None else b * np.tile(scale, 2), hw, s, normalize).to(dev)
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

    def _dense_pe(self) -> torch.Tensor:
        """The prompt encoder's (1, C, h, w) grid encoding, computed once per weights and device."""
        pe = self.model.sam_prompt_encoder
        g = pe.pe_layer.positional_encoding_gaussian_matrix
        key = (tuple(pe.image_embedding_size), g.data_ptr(), g._version, str(g.device), g.dtype)
        cached = getattr(self, "_pe_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, pe.get_dense_pe())
            self._pe_cache = cached
        return cached[1]

    def _static_parts(self, image_index: int) -> dict[str, torch.Tensor]:
        """The decoder's prompt-independent work on one image without a mask prompt
        (:meth:`MaskDecoder.image_side`), cached until the image or the weights change."""
        dec, pe = self.model.sam_mask_decoder, self.model.sam_prompt_encoder
        t2i = dec.transformer.layers[0].cross_attn_token_to_image
        i2t = dec.transformer.layers[0].cross_attn_image_to_token
        # weights changed in place (load_state_dict, copy_, mul_ ...) bump these version counters
        used = (pe.no_mask_embed.weight, pe.pe_layer.positional_encoding_gaussian_matrix, t2i.k_proj.weight,
                t2i.k_proj.bias, t2i.v_proj.weight, t2i.v_proj.bias, i2t.q_proj.weight, i2t.q_proj.bias)
        version = tuple((t.data_ptr(), t._version) for t in used)
        st = self._static.get(image_index)
        if st is not None and st["version"] == version:
            return st
        image_pe = self._dense_pe()
        h, w = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        image = self._image_embed[image_index : image_index + 1]
        st = {"version": version, "image_pe": image_pe, "dense": dense,
              "side": dec.image_side(image, image_pe, dense)}
        self._static[image_index] = st
        return st

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
        if masks is None and self._can_cache_decoder():
            return self._decode_cached(sparse, multimask_output, image_index, feats.high_res)
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            self._image_embed[image_index : image_index + 1],
            self._dense_pe(),
            sparse,
            dense,
            multimask_output=multimask_output,
            repeat_image=batched,
            high_res_features=feats.high_res,
        )
        return low_res, iou

    def _can_cache_decoder(self) -> bool:
        """The per-image decoder cache holds for inference (weights fixed between clicks)."""
        return self.fast_decoder and not self.model.training and not self.model.sam_mask_decoder.training

    def _decode_cached(self, sparse, multimask_output, image_index, high_res):
        """The decoder on one image's cached prompt-independent parts (see :meth:`_static_parts`)."""
        st = self._static_parts(image_index)
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            self._image_embed[image_index : image_index + 1], st["image_pe"], sparse, st["dense"],
            multimask_output=multimask_output, repeat_image=False, high_res_features=high_res,
            image_side=st["side"])
        return low_res, iou
