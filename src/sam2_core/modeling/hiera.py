"""Hiera trunk ("HieraDet"): a hierarchical ViT with windowed attention and query pooling.

Input (B, 3, S, S) with S a multiple of 32; outputs one (B, C_i, S/4/2^i, S/4/2^i) map per stage,
highest resolution first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from sam2_core.modeling.common import MLP
from sam2_core.modeling.linear import Linear, linear


def _real_blocks(hw: tuple[int, int], ws: int):
    """The real (unpadded) part of a map of size hw cut into ws x ws windows, as up to four
    blocks, each (rows of the map, columns of the map, the same pixels as indices of the
    (window row, row in window, window column, column in window) grid, the block's shape in
    that grid)."""
    def spans(n: int):
        full, rest = divmod(n, ws)
        if full:
            yield slice(0, full * ws), slice(0, full), slice(None), (full, ws)
        if rest:
            yield slice(full * ws, n), slice(full, full + 1), slice(0, rest), (1, rest)

    for rows, wr, ir, (nwr, nir) in spans(hw[0]):
        for cols, wc, ic, (nwc, nic) in spans(hw[1]):
            yield rows, cols, (wr, ir, wc, ic), (nwr, nir, nwc, nic)


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H and W up to multiples of ws.

    Without autograd a padded map is written into its windows directly (its real blocks copied,
    the padding zeroed): one pass instead of padding, then reordering, a copy each."""
    b, h, w, c = x.shape
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    hp, wp = h + pad_h, w + pad_w
    if (pad_h or pad_w) and not torch.is_grad_enabled():
        windows = x.new_empty(b, hp // ws, wp // ws, ws, ws, c)
        grid = windows.permute(0, 1, 3, 2, 4, 5)  # (B, H/ws, ws, W/ws, ws, C): map order
        for rows, cols, (wr, ir, wc, ic), (nwr, nir, nwc, nic) in _real_blocks((h, w), ws):
            grid[:, wr, ir, wc, ic] = x[:, rows, cols].reshape(b, nwr, nir, nwc, nic, c)
        if pad_h:
            grid[:, -1, ws - pad_h:] = 0
        if pad_w:
            grid[:, :, :, -1, ws - pad_w:] = 0
        return windows.view(-1, ws, ws, c), (hp, wp)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    x = x.view(b, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), cropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // ws // ws)
    x = windows.reshape(b, hp // ws, wp // ws, ws, ws, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a (B, H, W, C) map spatially.

    A strided map, such as the queries split from ``qkv``, pooled as Hiera pools (k x k windows,
    stride k, H and W multiples of k) is taken as the elementwise maximum of its k * k strided
    views: the same values, without the copy to a channels-first layout that ``max_pool2d`` makes
    of it (4x faster on a 1024-px image's stage-2 queries). A contiguous map goes to
    ``max_pool2d``'s channels-last kernel, which is as fast or faster there."""
    if pool is None:
        return x
    _, h, w, _ = x.shape
    if isinstance(pool, nn.MaxPool2d) and not pool.ceil_mode and not x.is_contiguous():
        (kh, kw), stride = _pair(pool.kernel_size), _pair(pool.stride)
        if (stride == (kh, kw) and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
                and h % kh == 0 and w % kw == 0):
            grid = x.unflatten(2, (w // kw, kw)).unflatten(1, (h // kh, kh))  # (B, H/kh, kh, W/kw, kw, C)
            out = grid[:, :, 0, :, 0]
            for i, j in itertools.product(range(kh), range(kw)):
                if i or j:
                    out = torch.maximum(out, grid[:, :, i, :, j])
            return out
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H', W', C)


class MultiScaleAttention(nn.Module):
    """Self-attention over (B, H, W, C) tokens within ws x ws windows (ws = 0: over the whole map),
    optionally max-pooling the queries 2x.

    Windows are zero-padded and the padded tokens take part in attention unmasked (Meta's rule):
    their keys and values are the projection biases. Without autograd, a padded map has only its
    real tokens projected (``_padded_windows``), and without query pooling only their queries
    attend (``_real_queries``); the output projection always runs after the windows are merged,
    on real tokens only.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = Linear(dim, dim_out * 3)
        self.proj = Linear(dim_out, dim_out)
        stride = q_pool.stride if q_pool is not None else 1
        self.pool_stride = stride[0] if isinstance(stride, tuple) else stride

    def forward(self, x: torch.Tensor, window_size: int = 0) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H', W', dim_out), H' = H / 2 when the queries are pooled."""
        _, h, w, _ = x.shape
        ws, stride = window_size, self.pool_stride
        if ws == 0:
            return self.proj(self._attend(self.qkv(x)))
        if (h % ws or w % ws) and not torch.is_grad_enabled():
            if self.q_pool is None:
                return self.proj(self._real_queries(x, ws))
            out, pad_hw = self._padded_windows(x, ws)
        else:
            windows, pad_hw = window_partition(x, ws)  # (B * nW, ws, ws, dim)
            out = self._attend(self.qkv(windows))
        ws_out = ws // stride
        out = window_unpartition(out, ws_out, (pad_hw[0] // stride, pad_hw[1] // stride),
                                 (h // stride, w // stride))
        return self.proj(out)

    def _padded_windows(self, x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Attention in padded windows, projecting only the real tokens.

        A padded token's q, k and v are the biases. Projecting without bias and padding with
        zeros, then adding the query bias, leaves out the key bias (it adds q . b_k to every key's
        score of a query: softmax ignores it) and the value bias (the weights sum to one, so it is
        added to the output). The same function up to float rounding, on (H*W) instead of
        (Hp*Wp) tokens."""
        qkv, pad_hw = window_partition(linear(x, self.qkv.weight), ws)  # padded tokens exactly 0
        q_bias, _, v_bias = self.qkv.bias.chunk(3)
        return self._attend(qkv, q_bias=q_bias, v_bias=v_bias), pad_hw

    def _real_queries(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        """Padded windows as :meth:`_padded_windows` computes them, for the real tokens' queries
        only: (B, H, W, dim) -> (B, H, W, dim_out) before proj. The padded tokens' keys and values
        still take part; their queries, whose outputs are cropped, are not computed."""
        b, h, w, _ = x.shape
        qkv, (hp, wp) = window_partition(linear(x, self.qkv.weight), ws)  # padded tokens exactly 0
        c, heads = qkv.shape[-1] // 3, self.num_heads
        q_bias, _, v_bias = self.qkv.bias.chunk(3)
        grid = qkv.view(b, hp // ws, wp // ws, ws, ws, 3 * c)  # (B, window row, window col, ws, ws, 3C)
        out = x.new_empty(b, h, w, c)
        for rows, cols, (wr, ir, wc, ic), (nwr, nir, nwc, nic) in _real_blocks((h, w), ws):
            blk = grid[:, wr, wc]  # (B, nwr, nwc, ws, ws, 3C): windows of one shape of real part
            n = b * nwr * nwc
            q = blk[:, :, :, ir, ic, :c].reshape(n, nir * nic, heads, -1) + q_bias.view(heads, -1)
            k = blk[..., c:2 * c].reshape(n, ws * ws, heads, -1)
            v = blk[..., 2 * c:].reshape(n, ws * ws, heads, -1)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            o = (o + v_bias.view(heads, 1, -1)).transpose(1, 2)  # (n, nir * nic, heads, d)
            out[:, rows, cols] = o.reshape(b, nwr, nwc, nir, nic, c).transpose(2, 3).reshape(
                b, nwr * nir, nwc * nic, c)
        return out

    def _attend(self, qkv: torch.Tensor, q_bias: torch.Tensor | None = None,
                v_bias: torch.Tensor | None = None) -> torch.Tensor:
        """qkv: (N, h, w, 3 * dim_out) -> attention output (N, h', w', dim_out), before proj."""
        n, h, w, _ = qkv.shape
        qkv = qkv.reshape(n, h * w, 3, self.num_heads, -1)  # (N, hw, 3, heads, d)
        q, k, v = torch.unbind(qkv, 2)  # each (N, hw, heads, d)
        if q_bias is not None:
            q = q + q_bias.to(q.dtype).view(self.num_heads, -1)  # (autocast: q is reduced precision)
        if self.q_pool is not None:
            q = _pool(q.reshape(n, h, w, -1), self.q_pool)  # (N, h/2, w/2, heads*d)
            h, w = q.shape[1:3]
            q = q.reshape(n, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )  # (N, heads, h'w', d)
        if v_bias is not None:
            out = out + v_bias.to(out.dtype).view(self.num_heads, 1, -1)
        return out.transpose(1, 2).reshape(n, h, w, -1)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block; stage transitions widen the channels and pool the queries.

    The shortcut of a widening block is ``pool(proj(norm1(x)))`` (it uses the normalised input).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H', W', dim_out)."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        x = shortcut + self.attn(x, self.window_size)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv 7x7 stride 4 patch embedding: (B, 3, S, S) -> (B, S/4, S/4, C).

    On the CPU the image is given to the convolution channels-last, so the output is a
    contiguous (B, H, W, C) map (2.3-2.6x faster than the channels-first convolution). From a
    channels-first output, stage 1 would keep that memory layout through its additions and every
    later pass over the map (norms, projections, the neck's 1x1 convolution) would be strided."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.proj(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


class Hiera(nn.Module):
    """Hierarchical trunk. Window sizes lag one block behind stage changes (Meta's rule)."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        stage = 1
        dim = embed_dim
        for i in range(sum(stages)):
            dim_out = dim
            window_size = 0 if i in global_att_blocks else window_spec[stage - 1]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    q_stride=q_stride if i in q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background PE interpolated to hw plus the window PE tiled over it -> (1, H, W, C).

        Without autograd the result is kept for the next frame (the bicubic interpolation is
        ~1.5 % of a 1024-px encoding), keyed by the parameters' storage and version, so that
        loading or training weights renews it."""
        params = (self.pos_embed, self.pos_embed_window)
        if torch.is_grad_enabled() or any(p.is_inference() for p in params):  # (no version counter)
            return self._make_pos_embed(hw)
        key = (hw, *((p.data_ptr(), p._version, p.dtype) for p in params))
        cached = getattr(self, "_pos_cache", None)
        if cached is None or cached[0] != key:
            cached = self._pos_cache = (key, self._make_pos_embed(hw))
        return cached[1]

    def _make_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        win = self.pos_embed_window
        reps = [a // b for a, b in zip(pos.shape, win.shape)]
        if any(a % b for a, b in zip(pos.shape[2:], win.shape[2:])):
            raise ValueError(
                f"feature map {hw} is not a multiple of the {win.shape[-1]}-pixel window: "
                "image_size must be a multiple of 32"
            )
        return (pos + win.tile(reps)).permute(0, 2, 3, 1).contiguous()  # (1, H, W, C)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, S, S) -> per stage (B, C_i, S/2^(i+2), S/2^(i+2)), high resolution first."""
        x = self.patch_embed(x)
        x = x + self._pos_embed(tuple(x.shape[1:3]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return outputs
