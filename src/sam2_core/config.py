"""Model configurations as frozen dataclasses, and the registry of named variants.

Only the knobs that differ between released checkpoints (and those a small model of ours needs)
are fields; every flag that is constant across Meta's releases is fixed in the code. Version
"2.1" adds the spatial no-object embedding and the projected, signed temporal encoding of
object pointers; "2.0" has neither.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk: width, heads and depth per stage, attention windows."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Stage widths, deepest first (the FPN neck's input order)."""
        return tuple(self.embed_dim * 2**i for i in reversed(range(len(self.stages))))


@dataclass(frozen=True)
class SAM2Config:
    """A whole SAM 2 model.

    Attributes:
        name: registry name (or a free name for custom models).
        trunk: the Hiera trunk.
        version: "2.0" or "2.1" (which extra parameters and encodings exist).
        image_size: square model input side in pixels, a multiple of 32.
        d_model: width of the neck, prompt encoder, decoder and memory attention.
        mem_dim: width of memory tokens.
        num_maskmem: memory slots (1 conditioning + num_maskmem-1 recent frames).
        max_obj_ptrs_in_encoder: object pointers looked at by memory attention.
        memory_attention_layers / memory_attention_ffn: memory-attention depth and FFN width.
        decoder_mlp_dim: FFN width of the mask decoder's two-way transformer.
        max_upscale: how far the predictors may enlarge a frame smaller than the input. 0 (Meta's
            way) resizes any frame to the input; k > 0 enlarges at most k times and pads the rest
            with the frame's background, so that small frames keep cells near the size a model
            trained at microscopy pixel scale knows (the bundled one: 2). Larger frames are
            resized either way.
        multimask_output_in_sam: a prompt of one click gives three candidate masks, of
            which the predictors keep the best-scored (Meta's choice, every official model);
            False: the decoder's single-mask output (with its fallback to the best candidate
            when that mask is unstable). For a model whose IoU head ranks the candidates badly
            (the bundled one), the single output is the better mask. Applies to the image
            predictor's default (``predict(multimask_output=None)``), the video predictor's
            prompted frames and training.
        multimask_output_for_tracking: tracked (unprompted) frames pick the best-scored of three
            candidates (Meta's choice); False: the single-mask output. Unlike Meta's flags, the
            two are independent (all official models set both).
    """

    name: str = "custom"
    trunk: HieraConfig = field(default_factory=HieraConfig)
    version: str = "2.1"
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    memory_attention_layers: int = 4
    memory_attention_ffn: int = 2048
    decoder_mlp_dim: int = 2048
    max_upscale: float = 0.0
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True

    #: Fields that change how a model is used, not its weights (an export may renew them).
    USAGE_FIELDS = ("max_upscale", "multimask_output_in_sam", "multimask_output_for_tracking")

    def __post_init__(self) -> None:
        if self.version not in ("2.0", "2.1"):
            raise ValueError(f"version must be '2.0' or '2.1', got {self.version!r}")
        if self.image_size % 32 or self.image_size < 64:
            raise ValueError(
                f"image_size must be a multiple of 32 and at least 64, got {self.image_size}"
            )

    # Fixed architecture constants (identical in every release).
    backbone_stride = 16
    sigmoid_scale_for_mem_enc = 20.0
    sigmoid_bias_for_mem_enc = -10.0

    @property
    def feat_size(self) -> int:
        """Side of the lowest-resolution feature grid used by decoder and memory (S / 16)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (S / 4)."""
        return self.image_size // 4

    @property
    def is_v21(self) -> bool:
        return self.version == "2.1"

    def replace(self, **changes: Any) -> SAM2Config:
        """A copy with some fields changed (e.g. ``image_size``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, strings, lists) safe to store in a ``weights_only`` checkpoint."""
        d = dataclasses.asdict(self)
        d["trunk"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["trunk"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAM2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        trunk = d.get("trunk", {})
        trunk = HieraConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in trunk.items()})
        return cls(**{**d, "trunk": trunk})


_TINY = HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9))
_SMALL = HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13))
_BASE_PLUS = HieraConfig(
    embed_dim=112,
    num_heads=2,
    stages=(2, 3, 16, 3),
    global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
)
_LARGE = HieraConfig(
    embed_dim=144,
    num_heads=2,
    stages=(2, 6, 36, 4),
    global_att_blocks=(23, 33, 43),
    window_spec=(8, 4, 16, 8),
)

#: The eight official variants, by the names used for their checkpoint files.
OFFICIAL_CONFIGS: dict[str, SAM2Config] = {}
for _version, _prefix in (("2.1", "sam2.1"), ("2.0", "sam2")):
    for _size, _trunk in (("tiny", _TINY), ("small", _SMALL), ("base_plus", _BASE_PLUS), ("large", _LARGE)):
        _name = f"{_prefix}_hiera_{_size}"
        OFFICIAL_CONFIGS[_name] = SAM2Config(name=_name, trunk=_trunk, version=_version)

#: Our own small configuration for the bundled model: a narrow Hiera (32 wide, 10 blocks) at
#: image_size 256, a 128-wide decoder and two memory-attention layers; built for CPU speed.
DEFAULT_CONFIG = SAM2Config(
    name="default",
    trunk=HieraConfig(embed_dim=32, num_heads=1, stages=(1, 2, 5, 2), global_att_blocks=(5, 7),
                      window_spec=(8, 4, 8, 8)),
    version="2.1",
    image_size=256,
    d_model=128,
    mem_dim=64,
    memory_attention_layers=2,
    memory_attention_ffn=512,
    decoder_mlp_dim=512,
    max_upscale=2.0,
    multimask_output_in_sam=False,  # its IoU head ranks the three candidates badly: docs/model-card.md
)
