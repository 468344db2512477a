"""Image encoder: Hiera trunk + FPN neck with sine positional encodings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sam2_core.modeling.common import PointwiseConv2d
from sam2_core.modeling.hiera import Hiera
from sam2_core.modeling.position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """1x1 lateral convs to d_model channels; top-down (nearest 2x, summed) only at given levels.

    ``convs[j]`` handles backbone level n-j, i.e. ``convs[0]`` the deepest map.
    """

    def __init__(
        self,
        *,
        d_model: int,
        backbone_channel_list: Sequence[int],
        fpn_top_down_levels: Sequence[int] = (2, 3),
    ) -> None:
        super().__init__()
        self.position_encoding = PositionEmbeddingSine(num_pos_feats=d_model)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", PointwiseConv2d(dim, d_model))
            self.convs.append(lateral)
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """xs: trunk maps, high resolution first -> (features, positional encodings), same order.

        Channels-last inputs (the trunk's) give channels-last features."""
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [xs[0]] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode="nearest")
                prev = lateral + top_down
            else:
                prev = lateral
            out[i] = prev
        pos = [self.position_encoding(o).to(o.dtype) for o in out]
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk + neck; drops the ``scalp`` lowest-resolution levels from the output."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """image: (B, 3, S, S) normalised -> dict with

        - ``backbone_fpn``: [(B, 256, S/4, S/4), (B, 256, S/8, S/8), (B, 256, S/16, S/16)]
        - ``vision_pos_enc``: the matching sine encodings
        - ``vision_features``: the last (S/16) level.
        """
        features, pos = self.neck(self.trunk(image))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
