"""SAM2ImagePredictor: embed an image once, then decode masks for any number of prompts."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from sam2_core import transforms as T
from sam2_core.modeling.common import split_heads
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
        """Prompt-independent decoder inputs and first-block projections of one image (no mask)."""
        dec, pe = self.model.sam_mask_decoder, self.model.sam_prompt_encoder
        layer0 = dec.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
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
        src = self._image_embed[image_index : image_index + 1] + dense  # as MaskDecoder.predict_masks
        keys = src.flatten(2).permute(0, 2, 1)  # as TwoWayTransformer.forward
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        k = keys + key_pe
        st = {
            "version": version, "image_pe": image_pe, "keys": keys, "key_pe": key_pe,
            "t2i_k": split_heads(t2i.k_proj(k), t2i.num_heads),
            "t2i_v": split_heads(t2i.v_proj(keys), t2i.num_heads),
            # contiguous: the CPU attention kernel is ~2x faster on it for 4096 queries (same result)
            "i2t_q": split_heads(i2t.q_proj(k), i2t.num_heads).contiguous(),
        }
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
        """The cached path skips the decoder module's call: not in training, nor when hooks watch it."""
        from torch.nn.modules import module as nn_module

        dec = self.model.sam_mask_decoder
        watched = (dec._forward_hooks or dec._forward_pre_hooks or nn_module._global_forward_hooks
                   or nn_module._global_forward_pre_hooks)
        return self.fast_decoder and not self.model.training and not dec.training and not watched

    def _decode_cached(self, sparse, multimask_output, image_index, high_res):
        """``MaskDecoder.forward`` (no mask input) with the first block's image side precomputed.

        Same operations in the same order as MaskDecoder.predict_masks / TwoWayTransformer /
        TwoWayAttentionBlock (tests/test_image_predictor.py checks the two agree).
        """
        st = self._static_parts(image_index)
        dec = self.model.sam_mask_decoder
        tr = dec.transformer
        b = sparse.shape[0]
        out_tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        keys, key_pe, query_pe = st["keys"], st["key_pe"], tokens
        # first two-way block, image-side projections taken from the cache
        layer0 = tr.layers[0]
        queries = tokens
        if layer0.skip_first_layer_pe:
            queries = layer0.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + layer0.self_attn(q, q, queries)
        queries = layer0.norm1(queries)
        t2i = layer0.cross_attn_token_to_image
        qh = split_heads(t2i.q_proj(queries + query_pe), t2i.num_heads)
        kh, vh = (st[n].expand(b, -1, -1, -1) for n in ("t2i_k", "t2i_v"))
        queries = layer0.norm2(queries + t2i._attend(qh, kh, vh))
        queries = layer0.norm3(queries + layer0.mlp(queries))
        i2t = layer0.cross_attn_image_to_token
        q = queries + query_pe
        kh = split_heads(i2t.k_proj(q), i2t.num_heads)
        vh = split_heads(i2t.v_proj(queries), i2t.num_heads)
        keys = layer0.norm4(keys + i2t._attend(st["i2t_q"].expand(b, -1, -1, -1), kh, vh))
        for layer in tr.layers[1:]:
            queries, keys = layer(queries, keys, query_pe, key_pe)
        q, k = queries + query_pe, keys + key_pe
        hs = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q, k, keys))
        # the rest of MaskDecoder.predict_masks
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + dec.num_mask_tokens, :]
        _, c, h, w = st["image_pe"].shape
        src = keys.transpose(1, 2).reshape(b, c, h, w)
        if high_res is None:
            upscaled = dec.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = dec.output_upscaling
            feat_s0, feat_s1 = high_res
            upscaled = act1(ln1(dc1(src) + feat_s1))
            upscaled = act2(dc2(upscaled) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        _, c8, uh, uw = upscaled.shape
        all_masks = (hyper_in @ upscaled.view(b, c8, uh * uw)).view(b, -1, uh, uw)
        all_iou = dec.iou_prediction_head(iou_token_out)
        # MaskDecoder.forward's choice of outputs
        if multimask_output:
            return all_masks[:, 1:], all_iou[:, 1:]
        if dec.dynamic_multimask_via_stability and not dec.training:
            return dec._dynamic_multimask_via_stability(all_masks, all_iou)
        return all_masks[:, 0:1], all_iou[:, 0:1]
