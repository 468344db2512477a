"""SAM2Model: the assembled network and its stateless steps.

Attribute names equal Meta's so that official checkpoints load unchanged. Tracking state
(which frames are memories, which objects exist) lives in the predictors, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam2_core.config import SAM2Config
from sam2_core.modeling.common import MLP
from sam2_core.modeling.hiera import Hiera
from sam2_core.modeling.image_encoder import FpnNeck, ImageEncoder
from sam2_core.modeling.mask_decoder import MaskDecoder
from sam2_core.modeling.memory_attention import MemoryAttention
from sam2_core.modeling.memory_encoder import MemoryEncoder
from sam2_core.modeling.position_encoding import sine_1d
from sam2_core.modeling.prompt_encoder import PromptEncoder
from sam2_core.modeling.transformer import TwoWayTransformer

#: Logit written where an object is absent (its mask is certainly empty).
NO_OBJ_SCORE = -1024.0


@dataclass
class HeadsOutput:
    """What the SAM heads give for a batch of B objects on one frame.

    Attributes:
        low_res_multimasks: (B, M, S/4, S/4) logits, M = 3 or 1.
        high_res_multimasks: (B, M, S, S) logits.
        ious: (B, M) predicted IoU in [0, 1].
        low_res_masks: (B, 1, S/4, S/4) the chosen mask.
        high_res_masks: (B, 1, S, S).
        obj_ptr: (B, d_model) object pointer.
        object_score_logits: (B, 1); > 0 means the object is present.
    """

    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor


@dataclass
class ImageFeatures:
    """Encoded image(s).

    Attributes:
        vision_features: (B, C, h, w) lowest level, raw (no no-memory embedding).
        vision_pos: (B, C, h, w) its sine encoding.
        high_res: [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)] decoder skips (after conv_s0/conv_s1).
    """

    vision_features: torch.Tensor
    vision_pos: torch.Tensor
    high_res: list[torch.Tensor]

    def select(self, index: torch.Tensor | slice | int) -> ImageFeatures:
        """Features of a subset of the batch (keeps the batch axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ImageFeatures(
            self.vision_features[index], self.vision_pos[index], [f[index] for f in self.high_res]
        )

    def to(self, device: torch.device | str) -> ImageFeatures:
        return ImageFeatures(
            self.vision_features.to(device),
            self.vision_pos.to(device),
            [f.to(device) for f in self.high_res],
        )


class SAM2Model(nn.Module):
    """Image encoder, prompt encoder, mask decoder, memory encoder and memory attention."""

    def __init__(self, config: SAM2Config) -> None:
        super().__init__()
        self.config = config
        # settings calibrated for these weights (stored in the checkpoint), e.g. the automatic
        # generator's "pred_iou_thresh" / "stability_score_thresh"; empty: the usual defaults
        self.recommended: dict[str, float] = {}
        c, cm, t = config.d_model, config.mem_dim, config.trunk
        self.image_size = config.image_size
        self.num_maskmem = config.num_maskmem
        trunk = Hiera(
            embed_dim=t.embed_dim,
            num_heads=t.num_heads,
            stages=t.stages,
            global_att_blocks=t.global_att_blocks,
            window_spec=t.window_spec,
            window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size,
        )
        neck = FpnNeck(d_model=c, backbone_channel_list=trunk.channel_list)
        self.image_encoder = ImageEncoder(trunk, neck, scalp=1)
        self.memory_attention = MemoryAttention(
            d_model=c,
            mem_dim=cm,
            num_layers=config.memory_attention_layers,
            dim_feedforward=config.memory_attention_ffn,
        )
        self.memory_encoder = MemoryEncoder(in_dim=c, out_dim=cm)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, cm))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))  # unused; kept for the keys
        feat = config.feat_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=c,
            image_embedding_size=(feat, feat),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=c,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=c, num_heads=8, mlp_dim=config.decoder_mlp_dim
            ),
            iou_head_hidden_dim=c,
        )
        self.obj_ptr_proj = MLP(c, c, c, 3)
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        # Conv that turns a 0/1 mask at S into low-res logits at S/4 (mask-as-output path).
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        if config.is_v21:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, cm))
            self.obj_ptr_tpos_proj = nn.Linear(c, cm)
        else:
            self.no_obj_embed_spatial = None
            self.obj_ptr_tpos_proj = None
        self._init_extra_parameters()

    def _init_extra_parameters(self) -> None:
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr):
            nn.init.trunc_normal_(p, std=0.02)
        if self.no_obj_embed_spatial is not None:
            nn.init.trunc_normal_(self.no_obj_embed_spatial, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    # --- image ------------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """image: (B, 3, S, S) normalised -> ImageFeatures (high-res skips precomputed)."""
        out = self.image_encoder(image)
        fpn = out["backbone_fpn"]  # channels-last views (the neck's 1x1 convs keep the layout)
        dec = self.sam_mask_decoder
        return ImageFeatures(
            vision_features=fpn[-1].contiguous(),
            vision_pos=out["vision_pos_enc"][-1],
            high_res=[dec.conv_s0(fpn[0]).contiguous(), dec.conv_s1(fpn[1]).contiguous()],
        )

    def add_no_mem_embed(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) + the no-memory embedding (an un-tracked or single image)."""
        return vision_features + self.no_mem_embed.reshape(1, -1, 1, 1)

    # --- SAM heads ---------------------------------------------------------------------------

    def forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
        image_pe: torch.Tensor | None = None,
    ) -> HeadsOutput:
        """Prompt encoder + decoder for B objects, gated by the object score.

        Args:
            backbone_features: (B, C, h, w) (memory-conditioned, or + no_mem_embed); a window
                of the feature grid when ``image_pe`` is given.
            point_coords: (B, N, 2) (x, y) in model pixels; None = no clicks.
            point_labels: (B, N).
            mask_inputs: (B, 1, H', W') logits; resized to (4h, 4w) if needed.
            high_res_features: decoder skips, batch B.
            multimask_output: 3 candidates and a best-IoU pick, else one mask.
            image_pe: (B, C, h, w) dense positional encoding of each item's window (crops of
                ``sam_prompt_encoder.get_dense_pe()``); default the whole grid's. Windows take
                no clicks or mask prompts (tracking steps only).
        """
        b = backbone_features.shape[0]
        dev = backbone_features.device
        if point_coords is None:
            point_coords = torch.zeros(b, 1, 2, device=dev)
            point_labels = -torch.ones(b, 1, dtype=torch.int32, device=dev)
        mask_prompt = None
        if mask_inputs is not None:
            mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder((point_coords, point_labels), None, mask_prompt)
        if image_pe is None:
            image_pe = self.sam_prompt_encoder.get_dense_pe()
        elif mask_prompt is not None:
            raise ValueError("mask prompts need the whole feature grid (image_pe=None)")
        if dense.shape[-2:] != backbone_features.shape[-2:]:  # no-mask embedding, broadcast
            dense = dense[:, :, :1, :1].expand(-1, -1, *backbone_features.shape[-2:])
        low_res_multi, ious, tokens, obj_logits = self.sam_mask_decoder(
            backbone_features,
            image_pe,
            sparse,
            dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        present = obj_logits > 0  # (B, 1)
        low_res_multi = torch.where(present[:, None, None], low_res_multi, NO_OBJ_SCORE).float()
        high_res_multi = F.interpolate(
            low_res_multi, size=(4 * low_res_multi.shape[-2], 4 * low_res_multi.shape[-1]),
            mode="bilinear", align_corners=False,
        )
        token = tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=dev)
            low_res, high_res = low_res_multi[rows, best].unsqueeze(1), high_res_multi[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            low_res, high_res = low_res_multi, high_res_multi
        obj_ptr = self._gate_pointer(self.obj_ptr_proj(token), present.float())
        return HeadsOutput(low_res_multi, high_res_multi, ious, low_res, high_res, obj_ptr, obj_logits)

    def _gate_pointer(self, obj_ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Absent objects (present = 0) get exactly the learned no-object pointer."""
        return present * obj_ptr + (1 - present) * self.no_obj_ptr

    def use_mask_as_output(
        self,
        backbone_features: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        mask_inputs: torch.Tensor,
    ) -> HeadsOutput:
        """A given mask (B, 1, S, S) in {0,1} becomes the output (logits +-10); pointer via SAM."""
        m = mask_inputs.float()
        high_res = m * 20.0 - 10.0
        low_res = F.interpolate(
            high_res,
            size=(high_res.shape[-2] // 4, high_res.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = m.new_ones(m.shape[0], 1)
        ptr = self.forward_sam_heads(
            backbone_features, mask_inputs=self.mask_downsample(m), high_res_features=high_res_features
        ).obj_ptr
        present = torch.any(m.flatten(1) > 0.0, dim=1)[..., None].float()
        obj_logits = 20.0 * present - 10.0
        obj_ptr = self._gate_pointer(ptr, present)
        return HeadsOutput(low_res, high_res, ious, low_res, high_res, obj_ptr, obj_logits)

    # --- memory ------------------------------------------------------------------------------

    def encode_memory(
        self,
        vision_features: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of one frame for B objects.

        Args:
            vision_features: (B, C, h, w) raw features of the frame (not memory-conditioned).
            high_res_masks: (B, 1, S, S) mask logits.
            object_score_logits: (B, 1).
            binarize: threshold the mask at 0 instead of a sigmoid (frames with clicks).

        Returns:
            maskmem_features (B, mem_dim, h, w) and maskmem_pos_enc (B, mem_dim, h, w).
        """
        if binarize and not self.training:
            m = (high_res_masks > 0).float()
        else:
            m = torch.sigmoid(high_res_masks)
        m = m * self.config.sigmoid_scale_for_mem_enc + self.config.sigmoid_bias_for_mem_enc
        feats, pos = self.memory_encoder(vision_features, m)
        if self.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score_logits > 0).float()  # (B, 1)
            feats = feats + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return feats, pos

    def max_obj_ptrs(self, num_frames: int | None) -> int:
        """How many object pointers memory attention sees in a stack of ``num_frames``."""
        n = self.config.max_obj_ptrs_in_encoder
        return n if num_frames is None else min(num_frames, n)

    def obj_ptr_tpos(self, rel_pos: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Temporal encoding (N, mem_dim) of object pointers at signed frame offsets (N,).

        2.1: projected sine encoding of rel_pos / (P - 1) with P = :meth:`max_obj_ptrs`;
        2.0: zeros.
        """
        cm = self.config.mem_dim
        if self.obj_ptr_tpos_proj is None:
            return rel_pos.new_zeros(rel_pos.shape[0], cm, dtype=torch.float32)
        t_max = max(self.max_obj_ptrs(num_frames) - 1, 1)
        enc = sine_1d(rel_pos.float() / t_max, self.config.d_model)
        return self.obj_ptr_tpos_proj(enc)

    def build_memory(
        self,
        spatial: list[tuple[torch.Tensor, int]],
        maskmem_pos: torch.Tensor | list[torch.Tensor],
        pointers: list[tuple[torch.Tensor, int]],
        num_frames: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory tokens for memory attention, for a batch of B objects with the same layout.

        Args:
            spatial: (maskmem_features (B, mem_dim, h, w), t_pos) per memory frame; t_pos 0 for
                conditioning frames, 1..num_maskmem-1 for recent ones (num_maskmem-1 = adjacent).
            maskmem_pos: (1 or B, mem_dim, h, w) sine encoding of the memory grid, or one such
                tensor per spatial entry (memories stored at windows of the grid).
            pointers: (obj_ptr (B, d_model), signed frame offset) per object-pointer frame.
            num_frames: frames in the stack (scales 2.1's pointer time encoding).

        Returns:
            memory (B, M, mem_dim), memory_pos (B, M, mem_dim) with spatial tokens first, and the
            number of pointer tokens (each pointer is split into d_model / mem_dim tokens).
        """
        n_mem = self.num_maskmem
        tokens, encs = [], []
        b = spatial[0][0].shape[0] if spatial else pointers[0][0].shape[0]
        if isinstance(maskmem_pos, torch.Tensor):
            maskmem_pos = [maskmem_pos] * len(spatial)
        for (feats, t_pos), pos in zip(spatial, maskmem_pos):
            tokens.append(feats.flatten(2).transpose(1, 2).float())
            tpos = self.maskmem_tpos_enc[n_mem - t_pos - 1].reshape(1, 1, -1)
            encs.append((pos.flatten(2).transpose(1, 2) + tpos).expand(b, -1, -1))
        n_ptr_tokens = 0
        if pointers:
            c, cm = self.config.d_model, self.config.mem_dim
            split = c // cm
            rel = torch.tensor([p for _, p in pointers], device=self.device)
            vecs = torch.stack([v for v, _ in pointers], dim=1)  # (B, Np, C)
            tokens.append(vecs.reshape(b, -1, split, cm).flatten(1, 2).float())  # pointer-major
            tpos = self.obj_ptr_tpos(rel, num_frames).repeat_interleave(split, dim=0)  # (Np*split, Cm)
            encs.append(tpos.unsqueeze(0).expand(b, -1, -1))
            n_ptr_tokens = len(pointers) * split
        return torch.cat(tokens, dim=1), torch.cat(encs, dim=1), n_ptr_tokens

    def condition_on_memory(
        self,
        vision_features: torch.Tensor,
        vision_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
        rope=None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Memory attention on (B, C, h, w) features -> (B, C, h, w) conditioned features.

        Args:
            memory, memory_pos: (B, M, mem_dim), spatial tokens first, pointer tokens last.
            rope: explicit RoPE tables when the features or memories are windows of the grid
                (see :meth:`MemoryAttention.window_rope`); None for whole grids.
            first: :meth:`first_self_attention` of these (shared) features, computed once for
                several batches of objects on one frame.
        """
        b, c, h, w = vision_features.shape
        curr = vision_features.flatten(2).transpose(1, 2)  # (B, hw, C)
        pos = vision_pos.flatten(2).transpose(1, 2)
        out = self.memory_attention(
            curr, pos, memory, memory_pos, feat_hw=(h, w), num_obj_ptr_tokens=num_obj_ptr_tokens, rope=rope,
            first=first,
        )
        return out.transpose(1, 2).reshape(b, c, h, w)

    def first_self_attention(self, vision_features: torch.Tensor, vision_pos: torch.Tensor) -> torch.Tensor:
        """Memory attention's first self-attention on one frame's (1, C, h, w) features -> (1, hw, C):
        the same for every object of that frame (pass it to :meth:`condition_on_memory` as ``first``)."""
        h, w = vision_features.shape[-2:]
        return self.memory_attention.first_self_attention(
            vision_features[:1].flatten(2).transpose(1, 2), vision_pos[:1].flatten(2).transpose(1, 2), feat_hw=(h, w))
