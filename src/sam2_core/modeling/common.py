"""Small building blocks shared by several modules: MLP, LayerNorm2d, a 1x1 convolution,
multi-head Attention."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from sam2_core.modeling import linear as lin
from sam2_core.modeling.linear import Linear

#: log2(e): exp(x) = exp2(x * LOG2_E).
LOG2_E = 1.0 / math.log(2.0)


class PointwiseConv2d(nn.Conv2d):
    """1x1 convolution (B, C, H, W) -> (B, C', H, W) with nn.Conv2d's parameters (same keys).

    A channels-last input (a permuted (B, H, W, C) map, as the trunk returns its stages) is
    multiplied over its channels directly and the output stays channels-last: the convolution's
    function up to float rounding, without the slow path the CPU convolution takes on such views.
    Other inputs take the ordinary convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.stride(1) != 1:
            return super().forward(x)
        y = lin.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)  # (B, H, W, C')
        return y.permute(0, 3, 1, 2)


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last).

    Parameters live under ``layers.{k}`` so that checkpoint keys match Meta's.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = lin.linear_act(x, layer, self.act) if i < last else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor, with per-channel affine."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width.

    ``q_proj``: dim -> dim / downsample_rate; ``k_proj``/``v_proj``: kv_in_dim -> same;
    ``out_proj`` back to dim. Scaled dot-product attention without mask or bias.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide {self.internal_dim}")
        self.q_proj = Linear(embedding_dim, self.internal_dim)
        self.k_proj = Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _project(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, project_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split into heads; ``project_values=False`` leaves v as given (B, Nk, kv_in_dim)
        for :meth:`_attend_folded`."""
        q = split_heads(self.q_proj(q), self.num_heads)  # (B, h, Nq, d)
        k = split_heads(self.k_proj(k), self.num_heads)  # (B, h, Nk, d)
        if project_values:
            v = split_heads(self.v_proj(v), self.num_heads)  # (B, h, Nk, d)
        return q, k, v

    def folds_values(self, q: torch.Tensor) -> bool:
        """Whether :meth:`_attend_folded` applies to queries ``q``: float32 on the CPU
        without autocast, autograd or dropout, and values narrower than a head (memory attention's
        64-channel memories, 256-wide head). Elsewhere the fused SDPA kernels are faster."""
        return (self.kv_in_dim + 1 < self.internal_dim // self.num_heads and q.device.type == "cpu"
                and q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and not torch.is_grad_enabled() and (not self.training or self.dropout_p == 0.0))

    def _attend_folded(self, q: torch.Tensor, k: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """Attention to unprojected values: q, k (B, h, Nq|Nk, d), v_in (B, Nk, kv_in_dim) -> (B, Nq, dim).

        The weights of each softmax row sum to one, so ``A (v_in W^T + b) = (A v_in) W^T + b``: the
        value projection can follow the attention. With 64-channel memories and a 256-wide head
        that is a quarter of the product with the values (exact up to rounding; the fused SDPA
        kernel needs values as wide as the keys). A ones column appended to the values gives each
        row's sum of weights, so the weights are normalised after the product (c + 1 wide) rather
        than before it (Nk wide). As in flash attention, scores are made for blocks of up to 1024
        queries and ~4096 keys (16 MB, which the allocator reuses), with a running maximum per
        query: blocks already summed are rescaled when a later block raises it. The score and value
        products go through :func:`sam2_core.modeling.linear.linear`'s oneDNN kernel where that
        is faster. The queries carry a factor log2(e), so the weights are ``exp2`` of the scores:
        the same weights, computed 2-4x faster than with ``exp`` (torch's CPU kernels;
        docs/engine.md).
        """
        b, h, nq, d = q.shape
        nk, c = v_in.shape[1], v_in.shape[2]
        q = q * (d**-0.5 * LOG2_E)  # scores in base 2: exp2 is several times faster than exp on CPUs
        kt = k.transpose(-1, -2)  # (B, h, d, Nk)
        v1 = torch.cat([v_in, v_in.new_ones(b, nk, 1)], dim=-1)  # (B, Nk, c + 1)
        out = q.new_empty(b, h, nq, c + 1)
        rows = min(nq, 1024)
        n_blocks = -(-nk // 4096)
        cols = -(-nk // n_blocks)  # key blocks of equal size (memory frames plus pointers)
        onednn = lin.applies(q)  # blocks through oneDNN where it is faster (modeling.linear)
        starts = range(0, nk, cols)
        if onednn:  # the kernel takes its weight's rows: key rows, and value columns per block
            k = k.contiguous()
            v1t = [[v1[i, k0:k0 + cols].t().contiguous() for k0 in starts] for i in range(b)]
        buf = None if onednn else q.new_empty(rows, cols)
        for i, j in itertools.product(range(b), range(h)):
            for s in range(0, nq, rows):
                e = min(nq, s + rows)
                acc, top = out[i, j, s:e], None  # (rows, c + 1) accumulator; running row maxima
                for n, k0 in enumerate(starts):
                    k1 = min(nk, k0 + cols)
                    if onednn:
                        scores = lin.linear(q[i, j, s:e], k[i, j, k0:k1])
                    else:
                        scores = torch.mm(q[i, j, s:e], kt[i, j, :, k0:k1], out=buf[: e - s, : k1 - k0])
                    m = scores.amax(dim=-1, keepdim=True)
                    if top is not None:  # rescale what is summed to the new row maxima
                        m = torch.maximum(top, m)
                        acc.mul_((top - m).exp2_())
                    weights = scores.sub_(m).exp2_()
                    if onednn:
                        part = lin.linear(weights, v1t[i][n])
                        if top is None:
                            acc.copy_(part)
                        else:
                            acc.add_(part)
                    elif top is None:
                        torch.mm(weights, v1[i, k0:k1], out=acc)
                    else:
                        acc.addmm_(weights, v1[i, k0:k1])
                    top = m
        w = out[..., :c] / out[..., c:]  # (B, h, Nq, c): attention-weighted raw values
        weight = self.v_proj.weight.view(h, d, c)
        v = torch.einsum("bhnc,hdc->bhnd", w, weight) + self.v_proj.bias.view(h, 1, d)
        return self.out_proj(merge_heads(v))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, Nq, d)
        return self.out_proj(merge_heads(out))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, Nq, dim); k, v: (B, Nk, kv_in_dim) -> (B, Nq, dim)."""
        return self._attend(*self._project(q, k, v))
