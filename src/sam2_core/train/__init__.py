"""Training and fine-tuning SAM 2 on labelled stacks (SAM 2's recipe, on the CPU or a GPU).

- :mod:`~sam2_core.train.data`: clips of frames with per-object targets, from our simulator or
  from the user's labelled stacks (image + labels with ids consistent over time).
- :mod:`~sam2_core.train.prompts`: clicks, boxes and corrective clicks simulated from the truth.
- :mod:`~sam2_core.train.losses`: focal + dice on masks, IoU-prediction and object-score losses.
- :mod:`~sam2_core.train.loop`: one clip through the model (prompt, corrections, memory-conditioned
  tracking) and the resumable AdamW loop that writes checkpoints in Meta's format.
- :mod:`~sam2_core.train.evaluate`: the model card's metrics on held-out simulated movies.
"""

from sam2_core.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
