"""Our video predictor against Meta's, on goldens from tests/reference/make_video_goldens.py.

Random weights amplify float rounding from frame to frame (a 1e-6 relative change of the
memory moves later logits by ~1e-4), so two correct implementations drift apart when run
freely. We therefore compare (1) every prompt result exactly, (2) every tracking step
"teacher-forced": Meta's memory bank is loaded into our state and each frame is recomputed
from it, within 1e-3 of the logits' scale, and (3) the freely running result (from Meta's prompt
memories) by mask agreement.
Meta stores memory in bfloat16, and so do we by default; its CPU path skips hole filling, so
both run with fill_hole_area=0.
"""

from __future__ import annotations

import contextlib
import copy
import re

import numpy as np
import pytest
import torch

from conftest import DATA, perturbed_weights
from sam2_core import build_sam2
from sam2_core.predictor.state import FrameOutput
from sam2_core.predictor.video import SAM2VideoPredictor

FILES = sorted(DATA.glob("golden_video_*.npz"))
TOL = 1e-3  # relative to the largest |logit| of the reference tensor


def _close(ours: torch.Tensor, ref: np.ndarray, what: str, tol: float = TOL, noise: float = 0.0) -> None:
    """Within ``tol`` of the reference's scale, or 4x our measured rounding sensitivity ``noise``."""
    ours = ours.detach().float().cpu().numpy()
    assert ours.shape == ref.shape, what
    scale = max(1.0, float(np.abs(ref).max()))
    allowed = max(tol * scale, 4.0 * noise)
    err = float(np.abs(ours - ref).max())
    assert err <= allowed, f"{what}: max |diff| {err:.3g} > {allowed:.3g} (scale {scale:.3g}, noise {noise:.3g})"


#: Weight perturbations (conftest.perturbed_weights) whose largest effect measures our own rounding
#: sensitivity; one draw underestimates it (on a prompt's memory: 0 %, 0 % and 4.6 % of values).
PERTURBATION_SEEDS = (0, 1, 2)


def _mem_bad(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Fraction of memory values further than one bfloat16 step (+1e-3 of the scale) from ``ref``."""
    ref, ours = ref.float().cpu(), ours.float().cpu()
    ulp = ref.abs() * 2.0**-7 + 1e-6  # one bfloat16 step, rounding may go either way
    return ((ours - ref).abs() > ulp + 1e-3 * ref.abs().max()).float().mean().item()


def _mem_close(ours: torch.Tensor, ref_bits: np.ndarray, what: str, noise: float = 0.0) -> None:
    """Within a bfloat16 step of Meta's stored memory, but for 0.1 % of the values or twice the
    share ``noise`` that our own rounding sensitivity moves (a binarised mask flips pixels)."""
    bad = _mem_bad(ours, torch.from_numpy(ref_bits).view(torch.bfloat16))
    allowed = max(1e-3, 2.0 * noise)
    assert bad <= allowed, (f"{what}: {bad:.2%} of memory values differ by more than a bfloat16 step "
                            f"(allowed {allowed:.2%}; our own sensitivity {noise:.2%})")


def _bank(g, prefix):
    """{(obj, frame): (entry prefix)} of a stored memory bank."""
    out = {}
    for k in g.files:
        m = re.match(rf"{prefix}__o(\d+)_f(\d+)__cond$", k)
        if m:
            out[(int(m.group(1)), int(m.group(2)))] = k[: -len("__cond")]
    return out


def _entry(g, k) -> FrameOutput:
    mem = torch.from_numpy(g[k + "__mem_bf16"]).view(torch.bfloat16)
    return FrameOutput(torch.from_numpy(g[k + "__ptr"]), torch.from_numpy(g[k + "__score"]), mem,
                       torch.from_numpy(g[k + "__pred"]))


def _inject(state, g, prefix) -> None:
    for (obj, f), k in _bank(g, prefix).items():
        o = state.objects[obj]
        (o.cond if bool(g[k + "__cond"]) else o.non_cond)[f] = _entry(g, k)


def _teacher_forced(pred, state, g, prefix, reverse, frames) -> int:
    """Recompute every non-conditioning entry of ``frames`` from Meta's bank; returns the count."""
    checked = 0
    for (obj, f), k in sorted(_bank(g, prefix).items(), key=lambda x: x[0][1], reverse=reverse):
        if f not in frames or bool(g[k + "__cond"]):
            continue
        o = state.objects[obj]
        del o.non_cond[f]
        pred._track_frame(state, [o], f, reverse)
        ours = o.non_cond[f]
        _close(ours.pred_masks, g[k + "__pred"], f"{prefix} obj {obj} frame {f} logits")
        _close(ours.obj_ptr, g[k + "__ptr"], f"{prefix} obj {obj} frame {f} pointer")
        _close(ours.object_score_logits, g[k + "__score"], f"{prefix} obj {obj} frame {f} score")
        _mem_close(ours.maskmem_features, g[k + "__mem_bf16"], f"{prefix} obj {obj} frame {f} memory")
        o.non_cond[f] = _entry(g, k)
        checked += 1
    return checked


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.stem)
def case(request, seeded_checkpoint):
    g = np.load(request.param)
    name, seed = str(g["meta_variant"]), int(g["meta_seed"])
    model = build_sam2(checkpoint=seeded_checkpoint(name, seed, float(g["meta_obj_score_bias"])),
                       image_size=int(g["meta_image_size"]), device="cpu")
    return g, SAM2VideoPredictor(model, fill_hole_area=0)


def _prompt(pred, state, g):
    out1 = pred.add_new_points_or_box(state, 0, 1, points=g["prompt_o1_f0_points"], labels=[1])
    out2 = pred.add_new_points_or_box(state, 2, 2, box=g["prompt_o2_f2_box"])
    return out1, out2


def test_goldens_present():
    assert len(FILES) == 2, "run tests/reference/make_video_goldens.py in the reference venv"


def test_prompt_outputs_match(case):
    g, pred = case
    state = pred.init_state(g["movie"])
    (f1, ids1, m1), (f2, ids2, m2) = _prompt(pred, state, g)
    assert (f1, ids1, f2, ids2) == (0, [1], 2, [1, 2])
    _close(m1, g["add_o1_f0__logits"], "click on frame 0")
    _close(m2, g["add_o2_f2__logits"], "box on frame 2")


@torch.inference_mode()
def test_teacher_forced_steps(case):
    g, pred = case

    def prompted():
        st = pred.init_state(g["movie"])
        _prompt(pred, st, g)
        pred.propagate_in_video_preflight(st)
        return st

    shaken = []
    for seed in PERTURBATION_SEEDS:
        with perturbed_weights(pred.model, seed=seed):
            shaken.append(prompted())
    state = prompted()
    for (obj, f), k in _bank(g, "fwd").items():  # our prompt memories equal Meta's
        if bool(g[k + "__cond"]):
            ours = state.objects[obj].cond[f].maskmem_features
            noise = max(_mem_bad(st.objects[obj].cond[f].maskmem_features, ours) for st in shaken)
            _mem_close(ours, g[k + "__mem_bf16"], f"cond memory {obj}/{f}", noise=noise)
            _close(state.objects[obj].cond[f].obj_ptr, g[k + "__ptr"], f"cond pointer {obj}/{f}")
    _inject(state, g, "fwd")
    n = state.num_frames
    assert _teacher_forced(pred, state, g, "fwd", False, range(n)) == 2 * n - 2
    for f in range(n):
        for o in state.objects.values():
            o.tracked[f] = False
    # correction: a click on a tracked frame becomes a conditioning frame, fed the previous logits
    saved = copy.deepcopy(state.objects)
    with perturbed_weights(pred.model):  # our own rounding sensitivity for this click
        _, _, shaken = pred.add_new_points_or_box(state, 3, 1, points=g["prompt_o1_f3_points"], labels=[1],
                                                  clear_old_points=False)
    state.objects = saved
    _, _, m = pred.add_new_points_or_box(state, 3, 1, points=g["prompt_o1_f3_points"], labels=[1],
                                         clear_old_points=False)
    noise = float((m - shaken).abs().max())
    _close(m, g["add_o1_f3__logits"], "correction click on frame 3", noise=noise)
    pred.propagate_in_video_preflight(state)
    assert 3 in state.objects[1].cond and 3 not in state.objects[1].non_cond
    _inject(state, g, "corr")
    assert _teacher_forced(pred, state, g, "corr", False, range(3, n)) == 2 * (n - 3) - 1
    _inject(state, g, "rev")
    assert _teacher_forced(pred, state, g, "rev", True, range(0, 3)) == 4  # objects 1 and 2 on 1, 2 and 0, 1


def _use_meta_prompt_memories(pred, state, g, prefix) -> None:
    """Make Meta's stored conditioning entries (memory, pointer, mask) the state's own."""
    pred.propagate_in_video_preflight(state)
    for (obj, f), k in _bank(g, prefix).items():
        if bool(g[k + "__cond"]):
            state.objects[obj].cond[f] = _entry(g, k)


def test_free_running_masks_agree(case):
    """Run freely from Meta's prompt memories, our masks agree with Meta's on >= 99 % of the pixels
    wherever our own result is that stable.

    A clicked frame's memory encodes the binarised mask, so rounding that flips a few of its
    pixels on another CPU moves 1-5 % of the memory values; on random weights later frames
    amplify that (with our own prompt memories, a 1e-6 relative weight perturbation left an object
    of the sam2.1 case at 27-94 % agreement with itself by frame 4). The prompt memories are
    therefore Meta's (ours are compared with them in the teacher-forced test), and pairs of frame
    and object that three such perturbations of our weights move by more than 1 % are not
    compared."""
    g, pred = case
    # Meta's own free-running masks differ between CPU kinds (the stored goldens against a rerun
    # on an AVX-512 Xeon: 99.2 % on the correction click, 62-100 % on later frames), so the
    # goldens made on other CPUs (tests/data/other_cpus, same script) are references too: our
    # run, from a golden's own prompt memories, must agree with at least one of them.
    refs = [g] + [np.load(p) for p in sorted(OTHER_CPUS.glob(f"golden_video_{g['meta_variant']}_*.npz"))]
    results = [_free_running(pred, r) for r in refs]
    assert any(not failed and len(checked) >= len(unstable) for checked, unstable, failed in results), results


#: goldens of tests/reference/make_video_goldens.py made on other CPU kinds (free-running test only)
OTHER_CPUS = DATA / "other_cpus"


def _free_running(pred, g) -> tuple[list, list, list]:
    """Our free-running masks against golden ``g``'s: (pairs checked, pairs too unstable to
    compare, failures (part, frame, object, share))."""

    def run(seed=None):
        shake = contextlib.nullcontext() if seed is None else perturbed_weights(pred.model, seed=seed)
        with shake:
            state = pred.init_state(g["movie"])
            _prompt(pred, state, g)
            _use_meta_prompt_memories(pred, state, g, "fwd")
            fwd = {f: (ids, m.numpy() > 0) for f, ids, m in pred.propagate_in_video(state)}
            _, _, m3 = pred.add_new_points_or_box(state, 3, 1, points=g["prompt_o1_f3_points"], labels=[1],
                                                  clear_old_points=False)
            _use_meta_prompt_memories(pred, state, g, "corr")
            corr = {f: (ids, m.numpy() > 0) for f, ids, m in pred.propagate_in_video(state, start_frame_idx=3)}
            rev = {f: (ids, m.numpy() > 0)
                   for f, ids, m in pred.propagate_in_video(state, start_frame_idx=3, reverse=True)}
        return {"fwd": fwd, "click": {3: ([1], m3.numpy() > 0)}, "corr": corr, "rev": rev}

    ours = run()
    shaken = [run(seed) for seed in PERTURBATION_SEEDS]
    n = len(ours["fwd"])
    assert list(ours["fwd"]) == list(range(n)) and list(ours["corr"]) == list(range(3, n))
    assert list(ours["rev"]) == [3, 2, 1, 0]

    def share(a, b, o) -> float:
        return float((a[1][a[0].index(o)] == b[1][b[0].index(o)]).mean())

    checked, unstable, failed = [], [], []
    for part, objects in (("fwd", (1, 2)), ("click", (1,)), ("corr", (1, 2)), ("rev", (1, 2))):
        for f, got in ours[part].items():
            ids, m = got
            if part == "click":
                ref = ([1], g["add_o1_f3__logits"] > 0)
            else:
                bits = np.unpackbits(g[f"{part}__yield_f{f}"])[: m.size].reshape(m.shape).astype(bool)
                ref = (ids, bits)
            for o in objects:
                if min(share(got, s[part][f], o) for s in shaken) < 0.99:
                    unstable.append((part, f, o))
                    continue
                if share(got, ref, o) < 0.99:
                    failed.append((part, f, o, round(share(got, ref, o), 4)))
                checked.append((part, f, o))
    return checked, unstable, failed
