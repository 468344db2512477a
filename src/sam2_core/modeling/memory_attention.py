"""Memory attention: condition the current frame's features on the memory bank.

Self-attention over the current frame and cross-attention to memory tokens, both with 2-D axial
RoPE; the trailing object-pointer tokens of the memory are left unrotated.

Queries and memories normally cover the whole feature grid (one table, repeated over memory
frames). For windows of the grid (local tracking) the caller passes explicit tables, built from
each token's true grid coordinates (:func:`window_rope_tables`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from sam2_core.modeling.common import Attention
from sam2_core.modeling.linear import Linear, linear_act
from sam2_core.modeling.position_encoding import apply_rope, axial_rope_tables, window_rope_tables

#: (cos, sin) RoPE tables, each (N, d/2) shared or (B, N, d/2) per batch item.
RopeTables = tuple[torch.Tensor, torch.Tensor]


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary encoding of queries and (the first) keys.

    Args:
        rope_theta: RoPE base.
        rope_k_repeat: keys may span several frames of the query grid; the table repeats.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, dropout, kv_in_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._tables: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_tables(self, feat_hw: tuple[int, int], device: torch.device):
        """Cached (cos, sin) tables for a (H, W) grid, each (H*W, head_dim/2)."""
        key = (feat_hw[0], feat_hw[1], str(device))
        if key not in self._tables:
            head_dim = self.internal_dim // self.num_heads
            self._tables[key] = axial_rope_tables(
                head_dim, feat_hw[1], feat_hw[0], self.rope_theta, device=device
            )
        return self._tables[key]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        feat_hw: tuple[int, int],
        num_k_exclude_rope: int = 0,
        rope: tuple[RopeTables, RopeTables] | None = None,
    ) -> torch.Tensor:
        """q: (B, Nq, C); k, v: (B, Nk, kv_in_dim) -> (B, Nq, C).

        Args:
            feat_hw: the (H, W) grid of the query tokens (row-major), Nq = H*W.
            num_k_exclude_rope: number of trailing keys (object pointers) left unrotated.
            rope: explicit (query tables, key tables) for tokens that are not one whole grid;
                the key tables cover the Nk - num_k_exclude_rope rotated keys.
        """
        # if folded, the value projection follows the attention (Attention._attend_folded)
        folded = k.shape[-2] > 0 and self.folds_values(q)
        q, k, v = self._project(q, k, v, project_values=not folded)
        if rope is None:
            if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
                raise ValueError("keys and queries differ in length but rope_k_repeat is off")
            q_tab = k_tab = self.rope_tables(feat_hw, q.device)
        else:
            q_tab, k_tab = rope
        q = apply_rope(q, *q_tab)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            k_rot = apply_rope(k[:, :, :n_rope], *k_tab)
            k = torch.cat([k_rot, k[:, :, n_rope:]], dim=2) if num_k_exclude_rope else k_rot
        return self._attend_folded(q, k, v) if folded else self._attend(q, k, v)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to memory, ReLU FFN."""

    def __init__(
        self,
        *,
        d_model: int = 256,
        mem_dim: int = 64,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, 1, dropout=dropout)
        self.cross_attn_image = RoPEAttention(
            d_model, 1, dropout=dropout, kv_in_dim=mem_dim, rope_k_repeat=True
        )
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        *,
        feat_hw: tuple[int, int],
        num_k_exclude_rope: int = 0,
        rope: tuple[RopeTables, RopeTables] | None = None,
        batch: int | None = None,
        self_done: bool = False,
    ) -> torch.Tensor:
        """tgt (B, HW, C); memory, memory_pos (B, M, mem_dim) -> (B, HW, C).

        ``rope``: explicit (query, memory) tables, see :meth:`RoPEAttention.forward`.
        ``batch``: tgt is one (1, HW, C) item shared by ``batch`` objects (the first layer, whose
        queries are the same image features for every object): self-attention runs once and
        its result is broadcast before the per-object cross-attention.
        ``self_done``: tgt is already :meth:`self_part`'s result (computed once for a frame).
        """
        if not self_done:
            tgt = self.self_part(tgt, feat_hw=feat_hw, rope=rope)
        t = self.norm2(tgt)
        if batch is not None:
            tgt, t = tgt.expand(batch, -1, -1), t.expand(batch, -1, -1)
        t = self.cross_attn_image(
            t,
            memory + memory_pos,
            memory,
            feat_hw=feat_hw,
            num_k_exclude_rope=num_k_exclude_rope,
            rope=rope,
        )
        tgt = tgt + self.dropout2(t)
        t = self.norm3(tgt)
        # (the ReLU is fused into linear1's product where oneDNN runs it: modeling.linear)
        t = self.linear2(self.dropout(linear_act(t, self.linear1, self.activation)))
        return tgt + self.dropout3(t)

    def self_part(self, tgt: torch.Tensor, *, feat_hw: tuple[int, int],
                  rope: tuple[RopeTables, RopeTables] | None = None) -> torch.Tensor:
        """The self-attention step with its residual: tgt (B, HW, C) -> (B, HW, C)."""
        t = self.norm1(tgt)
        self_rope = None if rope is None else (rope[0], rope[0])
        return tgt + self.dropout1(self.self_attn(t, t, t, feat_hw=feat_hw, rope=self_rope))


class MemoryAttention(nn.Module):
    """A stack of memory-attention layers with a final LayerNorm (batch-first throughout)."""

    def __init__(
        self,
        *,
        d_model: int = 256,
        mem_dim: int = 64,
        num_layers: int = 4,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(
                d_model=d_model, mem_dim=mem_dim, dim_feedforward=dim_feedforward, dropout=dropout
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self._window_tables: OrderedDict[tuple, RopeTables] = OrderedDict()

    def window_rope(self, window: tuple[int, int, int, int], device: torch.device) -> RopeTables:
        """RoPE tables for the tokens of a window (y0, x0, h, w) of the feature grid (cached)."""
        key = (*window, str(device))
        tables = self._window_tables.get(key)
        if tables is None:
            attn = self.layers[0].self_attn
            head_dim = attn.internal_dim // attn.num_heads
            tables = window_rope_tables(head_dim, window, attn.rope_theta, device=device)
            self._window_tables[key] = tables
            if len(self._window_tables) > 512:
                self._window_tables.popitem(last=False)
        else:
            self._window_tables.move_to_end(key)
        return tables

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        *,
        feat_hw: tuple[int, int],
        num_obj_ptr_tokens: int = 0,
        rope: tuple[RopeTables, RopeTables] | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition current features on memory.

        Args:
            curr: (B, H*W, C) current-frame features (row-major grid ``feat_hw``).
            curr_pos: (B, H*W, C) their sine encoding (0.1 of it is added at the input).
            memory: (B, M, mem_dim) spatial memory tokens followed by object-pointer tokens.
            memory_pos: (B, M, mem_dim) positional + temporal encodings of the memory.
            num_obj_ptr_tokens: how many trailing memory tokens are object pointers.
            rope: explicit RoPE tables (queries, spatial memory tokens) for windowed tokens.
            first: the first layer's self-attention result for these features, (1, H*W, C) from
                :meth:`first_self_attention`, when several calls share one frame's features
                (inference only); ``curr`` and ``curr_pos`` are then not read.

        Returns:
            (B, H*W, C) memory-conditioned features.
        """
        dtype = curr.dtype if first is None else first.dtype
        if memory.dtype != dtype:  # e.g. bf16-stored memory with fp32 compute (sam2#577)
            memory, memory_pos = memory.to(dtype), memory_pos.to(dtype)
        b = memory.shape[0]
        # Objects tracked on one frame share its image features (an expanded batch): the first
        # layer's self-attention is then the same for all of them and runs once (inference only,
        # so that training keeps independent dropout per object).
        if first is None and (b > 1 and not self.training and curr.stride(0) == 0 and curr_pos.stride(0) == 0
                              and (rope is None or rope[0][0].ndim == 2)):
            first = self.first_self_attention(curr, curr_pos, feat_hw=feat_hw, rope=rope)
        # a contiguous (B, HW, C) residual stream: features flattened from (B, C, H, W) are a
        # strided view, and sums keep their operands' layout, so every LayerNorm copied its input
        out = (curr + 0.1 * curr_pos if first is None else first).contiguous()
        for k, layer in enumerate(self.layers):
            shared = first is not None and k == 0  # the self-attention is done: broadcast to the batch
            out = layer(
                out, memory, memory_pos, feat_hw=feat_hw, num_k_exclude_rope=num_obj_ptr_tokens, rope=rope,
                batch=b if shared else None, self_done=shared,
            )
        return self.norm(out)

    def first_self_attention(self, curr: torch.Tensor, curr_pos: torch.Tensor, *, feat_hw: tuple[int, int],
                             rope: tuple[RopeTables, RopeTables] | None = None) -> torch.Tensor:
        """The first layer's self-attention on one frame's features (1, H*W, C) and their encoding
        -> (1, H*W, C): the same for every object tracked on that frame, so it can be computed
        once and passed to :meth:`forward` as ``first`` for each batch of objects."""
        tgt = (curr[:1] + 0.1 * curr_pos[:1]).contiguous()  # (see forward)
        return self.layers[0].self_part(tgt, feat_hw=feat_hw, rope=rope)
