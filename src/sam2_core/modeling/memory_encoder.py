"""Memory encoder: fuse a frame's features with its predicted mask into memory tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from sam2_core.modeling.common import LayerNorm2d
from sam2_core.modeling.linear import Linear, linear_act
from sam2_core.modeling.position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """[Conv k3 s2 -> LayerNorm2d -> GELU] x log2(total_stride), then a 1x1 conv to embed_dim.

    (B, 1, S, S) -> (B, embed_dim, S/16, S/16); channels grow 1 -> 4 -> 16 -> 64 -> 256.
    """

    def __init__(self, embed_dim: int = 256, total_stride: int = 16) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride))
        layers: list[nn.Module] = []
        c_in = 1
        for _ in range(num_layers):
            c_out = c_in * 4
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), LayerNorm2d(c_out), nn.GELU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm2d, MLP x4 with GELU, layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        y = self.gamma * self.pwconv2(linear_act(y, self.pwconv1, self.act))  # GELU fused where oneDNN runs
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A sequence of CXBlocks under ``layers``."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """pix (B, C, h, w) + mask (B, 1, 16h, 16w) -> memory (B, mem_dim, h, w) and its sine PE."""

    def __init__(self, *, in_dim: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(embed_dim=in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, num_layers=2)
        self.position_encoding = PositionEmbeddingSine(num_pos_feats=out_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """masks are already scaled mask values (e.g. 20 * sigmoid(logits) - 10)."""
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)
