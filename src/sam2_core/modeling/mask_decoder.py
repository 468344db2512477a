"""Mask decoder: two-way transformer + mask, IoU and object-score heads."""

from __future__ import annotations

import torch
from torch import nn

from sam2_core.modeling.common import MLP, LayerNorm2d, PointwiseConv2d
from sam2_core.modeling.transformer import TwoWayTransformer


def stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """IoU of (logits > delta) vs (logits > -delta) over the last two axes; 1 where both empty."""
    flat = mask_logits.flatten(-2)
    inter = torch.sum(flat > delta, dim=-1).float()
    union = torch.sum(flat > -delta, dim=-1).float()
    return torch.where(union > 0, inter / union, torch.ones_like(inter))


class MaskDecoder(nn.Module):
    """Predicts masks (B, M, 4h, 4w), IoU (B, M), decoder tokens and object-score logits (B, 1).

    Token order: [object score, IoU, mask_0..mask_3, prompt tokens...].
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.obj_score_token = nn.Embedding(1, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.conv_s0 = PointwiseConv2d(c, c // 8)
        self.conv_s1 = PointwiseConv2d(c, c // 4)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True
        )
        self.pred_obj_score_head = MLP(c, c, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
        image_side: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embeddings: (B or 1, C, h, w).
            image_pe: (1 or B, C, h, w) (B: per-prompt windows of the grid).
            sparse_prompt_embeddings: (B, N, C).
            dense_prompt_embeddings: (B, C, h, w).
            multimask_output: return the 3 multimask outputs instead of the single one.
            repeat_image: repeat a single image embedding for each of the B prompts.
            high_res_features: [(B|1, C/8, 4h, 4w), (B|1, C/4, 2h, 2w)].
            image_side: the prompt-independent projections of the first two-way block for
                ``image_embeddings + dense`` (:meth:`image_side`), computed once per image; the
                image and its ``dense`` prompt then have batch 1, shared by the B prompts.

        Returns:
            masks (B, 3|1, 4h, 4w) logits, iou (B, 3|1), tokens for the object pointer
            (B, 3|1, C), object-score logits (B, 1).
        """
        masks, iou, mask_tokens, obj_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
            image_side,
        )
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
            tokens = mask_tokens[:, 1:]
        else:
            if self.dynamic_multimask_via_stability and not self.training:
                masks, iou = self._dynamic_multimask_via_stability(masks, iou)
            else:
                masks, iou = masks[:, 0:1], iou[:, 0:1]
            tokens = mask_tokens[:, 0:1]  # always the single-mask token, even after a fallback
        return masks, iou, tokens, obj_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None,
        image_side: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All 4 masks (B, 4, 4h, 4w), IoU (B, 4), mask tokens (B, 4, C), object logits (B, 1)."""
        out_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )
        b = sparse.shape[0]
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        if image_side is not None:  # one image shared by the B prompts, broadcast in the first block
            src = image_embeddings
        elif repeat_image:
            src = torch.repeat_interleave(image_embeddings, b, dim=0)
        else:
            if image_embeddings.shape[0] != b:
                raise ValueError(
                    f"{image_embeddings.shape[0]} image embeddings for {b} prompts "
                    "(use repeat_image=True to share one image)"
                )
            src = image_embeddings
        src = src + dense
        if image_side is not None or image_pe.shape[0] == b:
            pos_src = image_pe
        else:
            pos_src = torch.repeat_interleave(image_pe, b, dim=0)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens, image_side)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        if high_res_features is None:
            upscaled = self.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(ln1(dc1(src) + feat_s1))
            upscaled = act2(dc2(upscaled) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, 4, C/8)
        b, c8, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c8, uh * uw)).view(b, -1, uh, uw)
        iou_pred = self.iou_prediction_head(iou_token_out)
        obj_logits = self.pred_obj_score_head(hs[:, 0, :])
        return masks, iou_pred, mask_tokens_out, obj_logits

    def image_side(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                   dense: torch.Tensor) -> dict[str, torch.Tensor]:
        """The first two-way block's prompt-independent projections of one image (batch 1):
        pass them as ``image_side=`` to decode many prompts on that image for less."""
        keys, key_pe = self.transformer.image_tokens(image_embeddings + dense, image_pe)
        return self.transformer.layers[0].image_side(keys, key_pe)

    def _dynamic_multimask_via_stability(
        self, all_masks: torch.Tensor, all_iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the single-mask output if it is stable, else the best multimask output."""
        multi_masks, multi_iou = all_masks[:, 1:], all_iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=all_iou.device)
        best_masks = multi_masks[rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single_masks, single_iou = all_masks[:, 0:1], all_iou[:, 0:1]
        stable = stability_scores(single_masks, self.stability_delta) >= self.stability_thresh
        masks = torch.where(stable[..., None, None].expand_as(single_masks), single_masks, best_masks)
        iou = torch.where(stable.expand_as(single_iou), single_iou, best_iou)
        return masks, iou
