"""SAM 2's training losses (torch).

Masks: sigmoid focal loss (weight 20) + dice loss (weight 1) as in SAM 2, plus a class-balanced
BCE (weight 1; set ``balanced_bce=0`` for SAM 2's exact recipe), on the best of the candidate masks
when several are predicted (plus 0.1 of their mean, see below); IoU head: L1 to the true IoU of every candidate; object-score head:
binary cross-entropy against "the object is visible". Mask and IoU losses count only where the
object is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    score: float = 1.0
    all_candidates: float = 0.1
    balanced_bce: float = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """(..., H, W) logits and {0, 1} targets -> (...) mean focal loss per mask."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (...) mean BCE over the object's pixels + mean BCE over the background's.

    Unlike focal loss averaged over the image, its push on the object's pixels does not shrink
    with the object's share of the image, nor vanish when the logits saturate: a model trained
    from scratch on small cells learns to segment in tens of steps instead of thousands.
    """
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-2)
    t = target.flatten(-2)
    pos = (ce * t).sum(-1) / t.sum(-1).clamp(min=1)
    neg = (ce * (1 - t)).sum(-1) / (1 - t).sum(-1).clamp(min=1)
    return pos + neg


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(..., H, W) -> (...) 1 - soft Dice."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (...) IoU of the thresholded masks (no gradient)."""
    with torch.no_grad():
        m = (logits > 0).flatten(-2)
        t = target.flatten(-2) > 0.5
        inter = (m & t).sum(-1).float()
        union = (m | t).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def step_losses(
    multimask_logits: torch.Tensor,
    ious: torch.Tensor,
    score_logits: torch.Tensor,
    target: torch.Tensor,
    w: LossWeights = LossWeights(),
) -> dict[str, torch.Tensor]:
    """Losses of one frame for B objects.

    Args:
        multimask_logits: (B, M, S, S) mask logits (M = 1 or 3).
        ious: (B, M) predicted IoU.
        score_logits: (B, 1) object-score logits.
        target: (B, S, S) float {0, 1}.

    Returns:
        dict of scalar tensors: focal, dice, iou, score, total (weighted), and (no gradient) the
        IoU of the chosen mask, "miou", over present objects.
    """
    present = (target.flatten(1).amax(1) > 0).float()  # (B,)
    # Gated "absent" masks are -1024 (no gradient flows there): count them as -32 so that the loss
    # values stay readable. A plain clamp would also cut the gradient of ordinary saturated logits.
    logits = torch.where(multimask_logits <= -1000.0, torch.full_like(multimask_logits, -32.0), multimask_logits)
    t = target[:, None].expand_as(logits)
    focal = focal_loss(logits, t)
    dice = dice_loss(logits, t)
    bal = balanced_bce(logits, t) if w.balanced_bce else torch.zeros_like(dice)
    combo = w.focal * focal + w.dice * dice + w.balanced_bce * bal  # (B, M)
    best = combo.argmin(dim=1)
    rows = torch.arange(len(best), device=best.device)
    true_iou = mask_iou(logits, t)  # (B, M)
    n = present.sum().clamp(min=1.0)
    # Best candidate (SAM 2), plus a small share of every candidate: from scratch the emptiest
    # mask always has the lowest loss at first, and the other candidates would never learn.
    focal_t = focal[rows, best] + w.all_candidates * focal.mean(1)
    dice_t = dice[rows, best] + w.all_candidates * dice.mean(1)
    bal_t = bal[rows, best] + w.all_candidates * bal.mean(1)
    out = {
        "focal": (focal_t * present).sum() / n,
        "dice": (dice_t * present).sum() / n,
        "bce": (bal_t * present).sum() / n,
        "iou": ((ious - true_iou).abs().mean(1) * present).sum() / n,
        "score": F.binary_cross_entropy_with_logits(score_logits[:, 0], present),
    }
    out["total"] = (w.focal * out["focal"] + w.dice * out["dice"] + w.balanced_bce * out["bce"]
                    + w.iou * out["iou"] + w.score * out["score"])
    chosen = ious.argmax(dim=1)
    out["miou"] = (true_iou[rows, chosen] * present).sum() / n
    out["miou_best"] = (true_iou.amax(1) * present).sum() / n
    return out
