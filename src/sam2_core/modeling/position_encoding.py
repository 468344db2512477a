"""Positional encodings: 2-D sine (neck, memory encoder), random Fourier (prompts), axial RoPE.

Nothing here is stored in a checkpoint except the random-Fourier Gaussian matrix; every table is
computed for the grid it is used on, so any image size (a multiple of 32) works.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding of a (B, C, H, W) map: C/2 channels per axis, y first then x.

    Per axis, channel pairs share a frequency: [sin(v/t0), cos(v/t1), sin(v/t2), ...] with
    t_k = temperature^(2*floor(k/2)/F) and v = (index+1)/(size+eps) * 2pi.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.scale = scale
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _encode(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        eps = 1e-6
        f = self.num_pos_feats
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        y = y / (y[-1:] + eps) * self.scale
        x = x / (x[-1:] + eps) * self.scale
        dim_t = torch.arange(f, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / f)
        py = y[:, None] / dim_t  # (H, F)
        px = x[:, None] / dim_t  # (W, F)
        py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
        px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (py[:, None, :].expand(h, w, f), px[None, :, :].expand(h, w, f)), dim=2
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1).contiguous()  # (2F, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 2F, H, W) float32 encoding (the values of x are not used)."""
        b, _, h, w = x.shape
        key = (h, w, str(x.device))
        pos = self._cache.get(key)
        if pos is None:
            pos = self._encode(h, w, x.device)
            self._cache[key] = pos
        return pos[None].expand(b, -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier encoding of (x, y) coordinates in [0, 1]: concat(sin, cos) of 2pi*(2p-1)@G."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: (..., 2) in [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of an (h, w) grid of cell centres -> (C, h, w)."""
        h, w = size
        g = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=g.device, dtype=g.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords: (B, N, 2) (x, y) in model pixels; image_size (H, W) -> (B, N, C)."""
        coords = coords.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


# --- 2-D axial rotary position embedding (memory attention) -----------------------------------


def axial_rope_tables(
    dim: int, end_x: int, end_y: int, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables of 2-D axial RoPE for an (end_y, end_x) grid in row-major order.

    The head dimension is viewed as dim/2 rotation pairs (2j, 2j+1): the first dim/4 pairs turn
    with the column x, the last dim/4 with the row y, at frequencies theta^(-4k/dim).

    Returns:
        (cos, sin), each (end_x * end_y, dim / 2) float32.
    """
    t = torch.arange(end_x * end_y, dtype=torch.float32, device=device)
    return rope_tables_at(dim, t % end_x, torch.div(t, end_x, rounding_mode="floor"), theta)


def rope_tables_at(
    dim: int, xs: torch.Tensor, ys: torch.Tensor, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE tables for tokens at grid columns ``xs`` and rows ``ys`` (each (N,)).

    Used for a window of the feature grid: its tokens keep their true coordinates, so a window's
    queries and memories stored at other windows rotate exactly as on the full grid.

    Returns:
        (cos, sin), each (N, dim / 2) float32.
    """
    k = torch.arange(0, dim, 4, device=xs.device)[: dim // 4].float()
    freqs = 1.0 / (theta ** (k / dim))  # (dim/4,)
    angles = torch.cat([torch.outer(xs.float(), freqs), torch.outer(ys.float(), freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def window_rope_tables(
    dim: int, window: tuple[int, int, int, int], theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables (h*w, dim/2) of the row-major tokens of window (y0, x0, h, w) of a grid."""
    y0, x0, h, w = window
    t = torch.arange(h * w, dtype=torch.float32, device=device)
    return rope_tables_at(dim, x0 + t % w, y0 + torch.div(t, w, rounding_mode="floor"), theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last axis of x (B, h, N, d) by (N', d/2) or (B, N, d/2) tables.

    Shared (N', d/2) tables may repeat (N a multiple of N', e.g. over several memory frames);
    per-item (B, N, d/2) tables give each batch item its own token positions. Computed in
    float32 with real arithmetic (works on every device) and cast back to x's dtype.
    """
    n = x.shape[-2]
    xf = x.float()
    if cos.ndim == 3:
        if cos.shape[-2] != n:
            raise ValueError(f"per-item RoPE tables of {cos.shape[-2]} positions for {n} tokens")
        cos, sin = cos[:, None], sin[:, None]
        pairs = xf.reshape(*x.shape[:-1], -1, 2)
    else:
        reps = n // cos.shape[0]
        if reps * cos.shape[0] != n:
            raise ValueError(f"RoPE table of {cos.shape[0]} positions cannot cover {n} tokens")
        # repeated tables broadcast over a (reps, N') view of the tokens instead of being copied
        pairs = xf.reshape(*x.shape[:-2], reps, cos.shape[0], -1, 2)
    xr, xi = pairs[..., 0], pairs[..., 1]
    if torch.is_grad_enabled() and (pairs.requires_grad or cos.requires_grad or sin.requires_grad):
        out = torch.stack((xr * cos - xi * sin, xr * sin + xi * cos), dim=-1)  # differentiable
    else:  # inference: written in place into one buffer (the same values, no stack copy)
        out = torch.empty_like(pairs)
        re, im = out[..., 0], out[..., 1]
        torch.mul(xr, cos, out=re)
        re.sub_(xi * sin)
        torch.mul(xr, sin, out=im)
        im.add_(xi * cos)
    return out.reshape(x.shape).type_as(x)


def sine_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine encoding of positions (N,) -> (N, dim): [sin(p*w), cos(p*w)] concatenated."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    emb = pos.unsqueeze(-1) / dim_t
    return torch.cat([emb.sin(), emb.cos()], dim=-1)
