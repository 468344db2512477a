"""Image predictor input handling and automatic seeding mechanics (numerics: test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_core import transforms as T
from sam2_core.automatic import (
    SAM2AutomaticMaskGenerator, blob_points, box_iou, crop_boxes, grid_points, mask_to_box, nms,
    records_to_labels, track_all,
)
from sam2_core.predictor.image import SAM2ImagePredictor
from sam2_core.simulate import simulate_timelapse

import torch


@pytest.fixture(scope="module")
def nuclei():
    return simulate_timelapse(n_frames=3, shape=(96, 96), n_cells=5, seed=2)


def test_errors_say_what_to_do(tiny256):
    pred = SAM2ImagePredictor(tiny256)
    with pytest.raises(RuntimeError, match=r"set_image"):
        pred.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(ValueError, match="NaN"):
        pred.set_image(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="empty"):
        pred.set_image(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="2-D image"):
        pred.set_image(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="channel-first"):
        pred.set_image(np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="channels="):
        pred.set_image(np.zeros((32, 32, 5), np.uint16))
    pred.set_image(np.zeros((32, 32, 5), np.uint16), channels=[0, 2, 4])
    with pytest.raises(ValueError, match="point_labels"):
        pred.predict(point_coords=[[1, 1]])
    with pytest.raises(ValueError, match="mask_input"):
        pred.predict(point_coords=[[1, 1]], point_labels=[1], mask_input=np.zeros((1, 10, 10)))


def test_any_dtype_and_batches(tiny256, nuclei):
    movie, labels = nuclei
    pred = SAM2ImagePredictor(tiny256)
    pred.set_image(movie[0])  # uint16 gray, robust percentiles
    ys, xs = np.nonzero(labels[0] == 1)
    masks, scores, low = pred.predict(point_coords=[[xs.mean(), ys.mean()]], point_labels=[1])
    assert masks.shape == (3, 96, 96) and masks.dtype == bool and scores.shape == (3,) and low.shape == (3, 64, 64)
    assert np.abs(low).max() <= 32
    pred.set_image_batch([movie[0], movie[1].astype(np.float32)])
    out = pred.predict_batch([[[10, 10]], [[20, 20]]], [[1], [1]], multimask_output=False)
    assert [m.shape for m in out[0]] == [(1, 96, 96), (1, 96, 96)]


def test_contrast_limits_and_channels():
    img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    rgb = T.to_unit_rgb(img, contrast_limits=(0, 99))
    assert rgb.shape == (10, 10, 3) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 2] == 1
    two = T.to_unit_rgb(np.stack([img, 99 - img], -1), contrast_limits=[(0, 99), (0, 99)])
    assert np.allclose(two[..., 2], 0.5)
    natural = np.full((4, 4, 3), 255, np.uint8)
    assert T.to_unit_rgb(natural).max() == 1.0
    assert T.to_unit_rgb(np.full((4, 4), 7, np.uint16)).max() == 0  # constant image: no division by zero


def test_seeding_helpers(nuclei):
    movie, labels = nuclei
    g = grid_points(4)
    assert g.shape == (16, 2) and g.min() == 0.125 and g.max() == 0.875
    seeds = blob_points(T.to_unit_rgb(movie[0]))
    truth = len(np.unique(labels[0])) - 1
    hit = {int(labels[0][int(round(y)), int(round(x))]) for x, y in seeds} - {0}
    assert len(hit) >= truth - 1 and len(seeds) <= 2 * truth  # about one seed per nucleus
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    assert box_iou(boxes, boxes)[0, 1] == pytest.approx(81 / 100)
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.5).tolist() == [1, 2]
    m = torch.zeros((2, 8, 8), dtype=torch.bool)
    m[0, 2:5, 3:7] = True
    assert mask_to_box(m).tolist() == [[3, 2, 6, 4], [0, 0, 0, 0]]
    crops = crop_boxes(100, 200, 1, 0.3)
    assert crops[0] == ([0, 0, 200, 100], 0) and len(crops) == 5


def test_automatic_generator_records_and_track_all(tiny256, nuclei):
    movie, _ = nuclei
    loose = dict(pred_iou_thresh=0, stability_score_thresh=0, max_mask_fraction=1.0)
    gen = SAM2AutomaticMaskGenerator(tiny256, seeding="blobs", **loose)
    records = gen.generate(movie[0])
    assert records and set(records[0]) == {
        "segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"}
    assert records[0]["segmentation"].shape == (96, 96)
    assert [r["area"] for r in records] == sorted((r["area"] for r in records), reverse=True)
    assert records_to_labels(records, min_visible=0).max() == len(records)
    lab = records_to_labels(records)  # masks mostly hidden under smaller ones dropped
    assert 1 <= lab.max() <= len(records) and len(np.unique(lab)) == lab.max() + 1
    out = track_all(movie, model=tiny256, generator_kwargs=dict(seeding="blobs", **loose))
    assert out.shape == movie.shape and out.max() >= 1
    strict = SAM2AutomaticMaskGenerator(tiny256, points_per_side=4, pred_iou_thresh=1.01)
    assert strict.generate(movie[0]) == []


def test_embedding_cached_by_content(tiny256):
    from sam2_core.predictor.image import SAM2ImagePredictor

    movie, _ = simulate_timelapse(n_frames=3, shape=(64, 64), n_cells=2, seed=9)
    pred = SAM2ImagePredictor(tiny256, cache_size=2)
    pred.set_image(movie[0])
    first = pred.predict(point_coords=[[30, 30]], point_labels=[1])[2]
    pred.set_image(movie[1])
    pred.set_image(movie[0].copy())  # same content, another array: no encoder run
    assert pred.encoded == 2
    assert np.array_equal(pred.predict(point_coords=[[30, 30]], point_labels=[1])[2], first)
    pred.set_image(movie[0], contrast_limits=(0, 1000))  # other preprocessing: a new embedding
    pred.set_image(movie[2])  # evicts the oldest (cache_size=2)
    pred.set_image(movie[1])
    assert pred.encoded == 5
    pred.clear_cache()
    pred.set_image(movie[2])
    assert pred.encoded == 6


def test_cached_decoder_equals_the_decoder(tiny256, nuclei):
    """predict() reuses the prompt-independent decoder parts per image: same results as the model's
    own decoder (bit for bit with one prompt; batched prompts up to float rounding)."""
    movie, _ = nuclei
    fast, plain = SAM2ImagePredictor(tiny256), SAM2ImagePredictor(tiny256)
    plain.fast_decoder = False
    for p in (fast, plain):
        p.set_image_batch([movie[0], movie[1]])
    one = [
        dict(point_coords=[[40, 50]], point_labels=[1]),
        dict(point_coords=[[40, 50], [70, 20]], point_labels=[1, 0], multimask_output=False),
        dict(box=[10, 10, 60, 70]),
        dict(box=[10, 10, 60, 70], point_coords=[[40, 50]], point_labels=[1], multimask_output=False),
    ]
    for kw in one:
        for i in (0, 1):
            a = fast.predict(**kw, return_logits=True, image_index=i)
            b = plain.predict(**kw, return_logits=True, image_index=i)
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), kw
    prev = fast.predict(**one[0])[2][:1]
    a = fast.predict(**one[0], mask_input=prev, return_logits=True)  # mask input: the decoder itself
    b = plain.predict(**one[0], mask_input=prev, return_logits=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    many = [dict(point_coords=np.array([[[40, 50]], [[70, 20]], [[90, 90]]]), point_labels=np.ones((3, 1))),
            dict(box=np.array([[10, 10, 60, 70], [30, 30, 90, 95]]), multimask_output=False)]
    for kw in many:
        a = fast.predict(**kw, return_logits=True)
        b = plain.predict(**kw, return_logits=True)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-3)
    # the per-image cache follows the image
    fast.set_image(movie[2])
    plain.set_image(movie[2])
    a = fast.predict(**one[0], return_logits=True)
    b = plain.predict(**one[0], return_logits=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
