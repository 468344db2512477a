"""The CPU-only speed paths of exact mode compute the same function as the plain ones.

- memory attention's cross-attention attends to the raw 64-channel memories and projects the
  result (``Attention._attend_folded``) instead of projecting every memory to 256 channels;
- the image encoder keeps its interpolated position embedding between frames;
- the image encoder projects only the real tokens of zero-padded windows;
- the 1x1 convolutions of the neck and the decoder's skips multiply channels-last trunk maps
  over their channels (``PointwiseConv2d``) rather than copying them for the convolution;
- the allocator keeps large freed blocks for reuse (``sam2_core.allocator``);
- float32 linear layers and memory attention's score blocks go through oneDNN where a probe found
  it faster (``sam2_core.modeling.linear``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sam2_core import allocator
from sam2_core.modeling.common import PointwiseConv2d
from sam2_core.modeling.hiera import Hiera
from sam2_core.modeling import linear as lin
from sam2_core.modeling.memory_attention import MemoryAttention, RoPEAttention

needs_onednn = pytest.mark.skipif(lin._onednn_op() is None, reason="torch built without oneDNN")


@pytest.fixture(params=["torch", pytest.param("onednn", marks=needs_onednn)])
def linear_kernel(request, monkeypatch):
    """Each test runs with torch's default linear kernel and with oneDNN's, forced."""
    monkeypatch.setenv("NAPARI_SAM2_LINEAR", request.param)
    return request.param


def _cross(num_heads: int = 1) -> RoPEAttention:
    torch.manual_seed(0)
    return RoPEAttention(256, num_heads, kv_in_dim=64, rope_k_repeat=True).eval()


@pytest.mark.parametrize("num_heads", [1, 2])
def test_folded_cross_attention_matches_float64(num_heads, linear_kernel):
    """Several query blocks (> 1024 queries) and uneven key blocks (3 frames + 16 pointers)."""
    attn = _cross(num_heads)
    q = torch.randn(2, 48 * 48, 256) * 3
    k = torch.randn(2, 3 * 48 * 48 + 16, 64) * 3
    v = torch.randn(2, 3 * 48 * 48 + 16, 64)
    with torch.no_grad():
        assert attn.folds_values(attn.q_proj(q[:, :1]))
        ours = attn(q, k, v, feat_hw=(48, 48), num_k_exclude_rope=16)
        attn.folds_values = lambda q: False  # the SDPA path, as Meta computes it
        sdpa = attn(q, k, v, feat_hw=(48, 48), num_k_exclude_rope=16)
        ref = attn.double()(q.double(), k.double(), v.double(), feat_hw=(48, 48), num_k_exclude_rope=16)
    err, sdpa_err = (ours.double() - ref).abs().max().item(), (sdpa.double() - ref).abs().max().item()
    assert err <= max(2 * sdpa_err, 1e-5 * ref.abs().max().item()), (err, sdpa_err)


def test_folded_attention_survives_large_logits(linear_kernel):
    """A later key block with a higher maximum rescales the sums already made (no overflow)."""
    attn = _cross()
    q = torch.randn(1, 32 * 32, 256)
    k = torch.randn(1, 3 * 32 * 32, 64)
    k[:, -10:] *= 200.0  # the largest scores come last
    v = torch.randn(1, 3 * 32 * 32, 64)
    with torch.no_grad():
        ours = attn(q, k, v, feat_hw=(32, 32))
        attn.folds_values = lambda q: False
        sdpa = attn(q, k, v, feat_hw=(32, 32))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, sdpa, atol=1e-4 * max(1.0, sdpa.abs().max().item()))


def test_folding_only_where_it_is_exact_and_faster():
    attn = _cross()
    q = attn.q_proj(torch.randn(1, 4, 256))
    with torch.no_grad():
        assert attn.folds_values(q.detach())
        assert not attn.folds_values(q.detach().bfloat16())  # bf16: the fused kernel
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not attn.folds_values(q.detach())
    assert not attn.folds_values(q)  # autograd (training) keeps the differentiable path
    self_attn = RoPEAttention(256, 1)
    with torch.no_grad():
        assert not self_attn.folds_values(q.detach())  # values as wide as the head: nothing to gain


def test_memory_attention_with_grad_equals_without(linear_kernel):
    """The whole stack: inference (folded) and autograd (SDPA) paths agree."""
    torch.manual_seed(1)
    ma = MemoryAttention(num_layers=2, dim_feedforward=128).eval()
    curr, pos = torch.randn(2, 256, 256), torch.randn(2, 256, 256)
    mem, mpos = torch.randn(2, 2 * 256 + 8, 64), torch.randn(2, 2 * 256 + 8, 64)
    with torch.no_grad():
        fast = ma(curr, pos, mem, mpos, feat_hw=(16, 16), num_obj_ptr_tokens=8)
    slow = ma(curr, pos, mem, mpos, feat_hw=(16, 16), num_obj_ptr_tokens=8).detach()
    assert (fast - slow).abs().max().item() <= 1e-4 * max(1.0, slow.abs().max().item())


def test_position_embedding_kept_and_renewed():
    torch.manual_seed(2)
    trunk = Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,)).eval()
    with torch.inference_mode():
        first = trunk._pos_embed((16, 16))
        assert trunk._pos_embed((16, 16)) is first  # kept between frames
        assert trunk._pos_embed((8, 8)).shape == (1, 8, 8, 16)  # another size: made anew
    with torch.no_grad():
        trunk.pos_embed.add_(1.0)  # new weights (loading, training) renew it
    with torch.inference_mode():
        renewed = trunk._pos_embed((16, 16))
    assert torch.allclose(renewed, first + 1.0, atol=1e-5)
    assert torch.equal(renewed, trunk._make_pos_embed((16, 16)))
    x = trunk._pos_embed((16, 16))  # with autograd on: computed, so gradients reach the weights
    x.sum().backward()
    assert trunk.pos_embed.grad is not None


def _run(code: str, **env: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


_FAULTS = """
    import resource, torch
    from sam2_core import allocator
    def faults():  # minor page faults of 5 rounds of 8 blocks of 24 MB, written, then freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            blocks = [torch.empty(6 << 20).fill_(1.0) for _ in range(8)]
            del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # glibc's starting settings, fixed (its adaptive threshold may or may not have risen by now)
    allocator._glibc().mallopt(allocator.M_MMAP_THRESHOLD, 128 << 10)
    allocator._glibc().mallopt(allocator.M_TRIM_THRESHOLD, 128 << 10)
    faults()
    untuned = faults()
    tuned = allocator.tune_cpu_allocator()
    faults()
    print(tuned, untuned, faults())
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="allocator settings apply to glibc only")
def test_allocator_reuses_large_blocks():
    tuned, untuned, after = _run(_FAULTS).split()
    assert tuned == "True"
    # With glibc's starting settings each 24 MB block (6,144 pages) is mapped anew and unmapped
    # when freed, so every round faults its 192 MB in again; tuned, the blocks are reused.
    assert int(after) < 10_000 < int(untuned), (untuned, after)


def test_allocator_left_alone_on_request():
    out = _run("from sam2_core import allocator; print(allocator.tune_cpu_allocator())", NAPARI_SAM2_MALLOC="system")
    assert out == "False"


def test_position_embedding_of_weights_made_in_inference_mode():
    """Parameters created under inference mode have no version counter: computed each time."""
    with torch.inference_mode():
        trunk = Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,)).eval()
        assert torch.equal(trunk._pos_embed((16, 16)), trunk._make_pos_embed((16, 16)))


def test_pointwise_conv_on_channels_last_maps():
    """Same values and gradients as nn.Conv2d; the layout of the input is kept."""
    torch.manual_seed(0)
    conv = PointwiseConv2d(96, 256)
    plain = torch.nn.Conv2d(96, 256, kernel_size=1)
    plain.load_state_dict(conv.state_dict())  # the same keys and shapes as nn.Conv2d's
    tokens = torch.randn(2, 20, 24, 96, dtype=torch.float64)  # (B, H, W, C), as the trunk has them
    x = tokens.permute(0, 3, 1, 2).requires_grad_()  # (B, C, H, W) view, channels-last
    conv, plain = conv.double(), plain.double()
    ours = conv(x)
    ref = plain(x.detach().contiguous())
    assert ours.shape == (2, 256, 20, 24) and ours.stride(1) == 1  # no copy into (B, C, H, W)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.square().sum().backward()
    xr = x.detach().contiguous().requires_grad_()
    plain(xr).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
    contiguous = conv(x.detach().contiguous())  # (B, C, H, W) input: the ordinary convolution
    assert contiguous.is_contiguous()
    torch.testing.assert_close(contiguous, ref, rtol=1e-12, atol=1e-12)


def test_encoder_features_contiguous():
    """The features the predictors keep are ordinary (B, C, H, W) tensors."""
    from sam2_core import build_sam2

    model = build_sam2("sam2.1_hiera_tiny", image_size=256, device="cpu", pretrained=False).eval()
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, 256, 256))
    assert feats.vision_features.is_contiguous()
    assert all(f.is_contiguous() for f in feats.high_res)


def test_trunk_stages_are_channels_last():
    """Every stage map, the first included, is a contiguous (B, H, W, C) map seen as (B, C, H, W):
    the neck's 1x1 convolutions then run as products over the channels (PointwiseConv2d), and no
    pass over stage 1 is strided (a channels-first patch embedding used to carry its layout
    through the first block)."""
    from sam2_core import build_sam2

    model = build_sam2("sam2.1_hiera_tiny", image_size=256, device="cpu", pretrained=False).eval()
    with torch.no_grad():
        stages = model.image_encoder.trunk(torch.randn(1, 3, 256, 256))
        for x in stages:
            assert x.permute(0, 2, 3, 1).is_contiguous(), (tuple(x.shape), x.stride())


@pytest.mark.parametrize("rectangular", [False, True])
@pytest.mark.parametrize("block_index", [4, 10, 11])
def test_padded_windows_project_real_tokens_only(block_index, rectangular):
    """Windowed blocks of a map that is not a multiple of the window (stage 3 and 4 at 512 px:
    32 x 32 in 14-px windows, 16 x 16 in 7-px windows, the pooling block between them; and
    rectangular maps, whose edge windows differ in shape): the inference path (real tokens
    projected; without pooling only their queries attend) equals the plain one (padded tokens
    projected and attending, as under autograd)."""
    torch.manual_seed(0)
    trunk = Hiera(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                  window_pos_embed_bkg_spatial_size=(7, 7)).double().eval()
    for p in trunk.parameters():
        p.data.normal_(0, 0.1)
    block = trunk.blocks[block_index]
    hw = 16 if block_index == 11 else 32
    width = hw - 6 if rectangular else hw  # 26 or 10: other edge windows than the rows'
    assert hw % block.window_size and width % block.window_size  # padded
    x = torch.randn(2, hw, width, block.dim, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x)
    plain = block(x)  # autograd on: every padded token projected
    assert plain.requires_grad and ours.shape == plain.shape
    torch.testing.assert_close(ours, plain.detach(), rtol=1e-10, atol=1e-10)


@needs_onednn
@pytest.mark.parametrize("layout", ["2d", "4d", "channels_last_view", "no_bias"])
def test_onednn_linear_matches_float64(layout, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM2_LINEAR", "onednn")
    torch.manual_seed(0)
    w, b = torch.randn(288, 96), torch.randn(288)
    x = {"2d": torch.randn(700, 96), "4d": torch.randn(2, 24, 24, 96), "no_bias": torch.randn(700, 96),
         "channels_last_view": torch.randn(2, 96, 24, 24).permute(0, 2, 3, 1)}[layout]
    b = None if layout == "no_bias" else b
    with torch.no_grad():
        assert lin.applies(x)
        ours = lin.linear(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert ours.shape == ref.shape and ours.dtype == torch.float32 and ours.is_contiguous()
    assert (ours.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_linear_kernel_choice(monkeypatch):
    """oneDNN only for float32 CPU inference; autograd, autocast and other dtypes keep F.linear."""
    layer = lin.Linear(8, 4)
    assert list(layer.state_dict()) == list(torch.nn.Linear(8, 4).state_dict())  # Meta's keys
    x = torch.randn(3, 8)
    monkeypatch.setenv("NAPARI_SAM2_LINEAR", "onednn")
    assert not lin.applies(x)  # autograd on: the op has no backward
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        assert lin.applies(x) == (lin._onednn_op() is not None)
        assert not lin.applies(x.double()) and not lin.applies(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not lin.applies(x)
        monkeypatch.setenv("NAPARI_SAM2_LINEAR", "torch")
        assert not lin.applies(x)
        monkeypatch.setenv("NAPARI_SAM2_LINEAR", "mkl")
        with pytest.raises(ValueError, match="NAPARI_SAM2_LINEAR"):
            lin.applies(x)
    monkeypatch.delenv("NAPARI_SAM2_LINEAR")
    assert (lin.probe_speedup() > 0.0) == (lin._onednn_op() is not None)  # timed once; 0.0 without oneDNN
    assert lin.onednn_faster() == (lin.probe_speedup() >= lin.MIN_SPEEDUP)


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.GELU(), torch.nn.GELU(approximate="tanh"), torch.nn.SiLU()])
def test_linear_with_activation_fused(act, linear_kernel):
    """The MLPs' hidden layers: act(layer(x)), fused into oneDNN's kernel for ReLU and exact GELU."""
    torch.manual_seed(0)
    layer = lin.Linear(96, 384)
    x = torch.randn(2, 40, 40, 96)
    with torch.no_grad():
        ours = lin.linear_act(x, layer, act)
    ref = act.double()(torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double()))
    assert ours.shape == ref.shape
    assert (ours.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("window", [2, (2, 2)])  # Hiera's blocks give a pair
def test_query_pooling_equals_max_pool(strided, window, monkeypatch):
    """Hiera's 2x2 pooling of a strided map (the queries' view of a qkv tensor) as the maximum of
    strided views: the same values as ``max_pool2d``; contiguous and odd maps take max_pool2d."""
    from sam2_core.modeling import hiera

    pool = torch.nn.MaxPool2d(window, stride=window)
    if strided:
        x = torch.randn(6, 8 * 8, 3, 2, 48).unbind(2)[0].reshape(6, 8, 8, 96)
        assert not x.is_contiguous()
    else:
        x = torch.randn(2, 16, 12, 32)
    ref = F.max_pool2d(x.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
    calls = []
    monkeypatch.setattr(pool, "forward", lambda t: calls.append(t) or F.max_pool2d(t, 2, 2))
    assert torch.equal(hiera._pool(x, pool), ref)
    assert len(calls) == (0 if strided else 1)  # strided: the maximum of views, not max_pool2d
    odd = torch.randn(1, 7, 10, 8)[:, :, 1:]  # not a multiple of the window: max_pool2d drops the rest
    assert torch.equal(hiera._pool(odd, pool), F.max_pool2d(odd.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1))
    assert len(calls) == (1 if strided else 2)


@pytest.mark.parametrize("hw, ws", [((32, 32), 14), ((16, 16), 7), ((30, 45), 8), ((5, 3), 8), ((13, 28), 14)])
def test_padded_window_partition_written_directly(hw, ws):
    """Without autograd a padded map is written into its windows block by block: the same
    windows as padding then reordering (the autograd path), padding exactly zero, and the
    round trip gives the map back."""
    from sam2_core.modeling.hiera import window_partition, window_unpartition

    x = torch.randn(2, *hw, 6)[:, :, :, 1:]  # a strided view, as a map's channels may be
    with torch.no_grad():
        direct, pad_hw = window_partition(x, ws)
        back = window_unpartition(direct, ws, pad_hw, hw)
    with torch.enable_grad():
        padded, pad_ref = window_partition(x, ws)
    assert pad_hw == pad_ref
    assert torch.equal(direct, padded)
    assert torch.equal(back, x)


def test_memory_attention_residual_stream_contiguous():
    """Features flattened from (B, C, H, W) are a strided (B, HW, C) view: memory attention makes
    its residual stream contiguous once, so that no LayerNorm copies its input, with the same
    result as for contiguous features."""
    from sam2_core.modeling.memory_attention import MemoryAttention

    torch.manual_seed(0)
    ma = MemoryAttention(num_layers=2).eval()
    curr = torch.randn(1, 256, 8, 8).flatten(2).transpose(1, 2)  # (1, 64, 256), channels-first memory
    pos = torch.randn(1, 256, 8, 8).flatten(2).transpose(1, 2)
    mem, mem_pos = torch.randn(1, 2 * 64 + 4, 64), torch.randn(1, 2 * 64 + 4, 64)
    assert not curr.is_contiguous()
    seen = []
    for layer in ma.layers:
        for norm in (layer.norm1, layer.norm2, layer.norm3):
            norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        out = ma(curr, pos, mem, mem_pos, feat_hw=(8, 8), num_obj_ptr_tokens=4)
        ref = ma(curr.contiguous(), pos.contiguous(), mem, mem_pos, feat_hw=(8, 8), num_obj_ptr_tokens=4)
    assert seen and all(seen)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
