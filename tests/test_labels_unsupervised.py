"""Tests of diffugen.labels.daam on synthetic heatmaps with known blobs."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from diffugen.labels.daam import (
    Instance,
    LabelParams,
    WordLabels,
    extract_labels,
    kernel_side,
    normalize_heatmap,
    semantic_mask,
)

H, W = 256, 384  # non-square on purpose


def disc(cx: float, cy: float, r: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def noisy_map(*blobs: tuple[np.ndarray, float], seed: int = 0, noise: float = 0.08) -> np.ndarray:
    """Blobs (bool mask, peak) on low uniform noise, lightly blurred, scaled arbitrarily."""
    rng = np.random.default_rng(seed)
    m = rng.random((H, W)).astype(np.float32) * noise
    for mask, peak in blobs:
        m[mask] += peak
    m = cv2.GaussianBlur(m, (3, 3), 0)
    return m * 7.5 + 3.0  # not normalised


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    pts = np.round(polygon * np.array([w, h])).astype(np.int32)
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [pts], 1)
    return out.astype(bool)


def instance_full_mask(inst: Instance, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    x, y = round(inst.box[0] * w), round(inst.box[1] * h)
    out = np.zeros(shape, bool)
    out[y : y + inst.mask.shape[0], x : x + inst.mask.shape[1]] = inst.mask
    return out


# ---------------------------------------------------------------------------------------------


def test_normalize_heatmap_range_and_flat():
    m = np.array([[2.0, 4.0], [6.0, 10.0]], np.float64)
    n = normalize_heatmap(m)
    assert n.dtype == np.float32 and n.shape == (2, 2)
    np.testing.assert_allclose(n, [[0, 0.25], [0.5, 1.0]], atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero / invalid warnings
        for flat in (np.zeros((5, 7), np.float32), np.full((5, 7), 3.3), np.ones((4, 4), np.int64)):
            z = normalize_heatmap(flat)
            assert z.dtype == np.float32 and not z.any() and np.isfinite(z).all()
    f32 = np.random.default_rng(1).normal(size=(32, 48)).astype(np.float32) * 1e3
    n32 = normalize_heatmap(f32)
    assert n32.min() == 0.0 and n32.max() == 1.0
    with pytest.raises(ValueError):
        normalize_heatmap(np.zeros((2, 3, 4)))


def test_single_disc_non_square():
    truth = disc(cx=250, cy=100, r=40)
    wl = extract_labels(noisy_map((truth, 1.0)))
    assert isinstance(wl, WordLabels)
    assert wl.mask.shape == (H, W) and wl.mask.dtype == bool
    assert 0.0 < wl.threshold < 1.0
    assert len(wl.instances) == 1
    inst = wl.instances[0]

    # semantic mask and instance mask match the disc
    assert iou(wl.mask, truth) >= 0.9
    full = instance_full_mask(inst, (H, W))
    assert inst.mask.dtype == bool
    assert iou(full, truth) >= 0.9
    assert abs(inst.area - full.sum() / (H * W)) < 1e-9

    # box: (x, y, w, h) normalised, matches the disc's pixel box within a few pixels
    ys, xs = np.nonzero(truth)
    true_box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    px_box = (inst.box[0] * W, inst.box[1] * H, inst.box[2] * W, inst.box[3] * H)
    assert np.allclose(px_box, true_box, atol=3), (px_box, true_box)
    assert inst.mask.shape == (round(inst.box[3] * H), round(inst.box[2] * W))

    # polygon: normalised, >= 3 points, fills back to the disc and agrees with the mask
    poly = inst.polygon
    assert poly.ndim == 2 and poly.shape[1] == 2 and poly.shape[0] >= 3
    assert (poly >= 0).all() and (poly <= 1).all()
    assert not np.array_equal(poly[0], poly[-1])
    filled = fill_polygon(poly, (H, W))
    assert iou(filled, truth) >= 0.9
    assert iou(filled, full) >= 0.9

    assert 0.0 < inst.score <= 1.0


def test_raw_contour_polygon_when_epsilon_zero():
    truth = disc(cx=100, cy=150, r=30)
    hm = noisy_map((truth, 1.0))
    raw = extract_labels(hm, LabelParams(polygon_epsilon=0.0)).instances[0].polygon
    simple = extract_labels(hm, LabelParams(polygon_epsilon=0.01)).instances[0].polygon
    assert len(raw) > len(simple) >= 3
    assert iou(fill_polygon(raw, (H, W)), truth) >= 0.9


def test_gaussian_blob_otsu():
    yy, xx = np.mgrid[:H, :W]
    g = np.exp(-((xx - 300.0) ** 2 + (yy - 60.0) ** 2) / (2 * 20.0**2)).astype(np.float32)
    wl = extract_labels(g)
    assert len(wl.instances) == 1
    x, y, w, h = wl.instances[0].box
    cx, cy = (x + w / 2) * W, (y + h / 2) * H
    assert abs(cx - 300) <= 2 and abs(cy - 60) <= 2
    assert abs(w * W - h * H) <= 3  # round blob → square-ish pixel box


def test_two_blobs_ordered_by_score():
    big = disc(cx=100, cy=128, r=45)
    small = disc(cx=300, cy=128, r=25)
    wl = extract_labels(noisy_map((small, 0.6), (big, 1.0)))
    assert len(wl.instances) == 2
    first, second = wl.instances
    assert first.score > second.score
    assert iou(instance_full_mask(first, (H, W)), big) >= 0.85
    assert iou(instance_full_mask(second, (H, W)), small) >= 0.85
    # semantic mask is the union of the instance masks
    union = instance_full_mask(first, (H, W)) | instance_full_mask(second, (H, W))
    assert np.array_equal(wl.mask, union)


def test_score_terms():
    # Equal peak: the larger blob beyond full_score_area has size term 1; the small one is
    # penalised proportionally to its area.
    big = disc(cx=100, cy=128, r=45)  # ~0.065 of the image
    small = disc(cx=300, cy=128, r=8)  # ~0.002 of the image
    hm = noisy_map((big, 1.0), (small, 1.0))
    wl = extract_labels(hm)
    assert len(wl.instances) == 2
    b, s = wl.instances
    assert b.area > 0.01 and s.area < 0.01
    norm = normalize_heatmap(hm)
    for inst, size in ((b, 1.0), (s, s.area / 0.01)):
        intensity = norm[instance_full_mask(inst, (H, W))].mean()
        assert inst.score == pytest.approx(intensity * size, rel=1e-5)
    assert 0.7 < b.score <= 1.0
    assert s.score < 0.5 * b.score


def test_tiny_speck_dropped():
    truth = disc(cx=200, cy=128, r=40)
    speck = disc(cx=40, cy=40, r=4)  # ~50 px < 0.001 * 256 * 384 ~ 98 px after morphology
    wl = extract_labels(noisy_map((truth, 1.0), (speck, 1.0)))
    assert len(wl.instances) == 1
    assert not wl.mask[30:50, 30:50].any()  # dropped from the semantic mask too
    # with min_area = 0 the speck is kept
    wl0 = extract_labels(noisy_map((truth, 1.0), (speck, 1.0)), LabelParams(min_area=0.0))
    assert len(wl0.instances) == 2


@pytest.mark.parametrize(
    "hm",
    [
        np.zeros((H, W), np.float32),
        np.full((H, W), 0.7, np.float32),
        np.full((H, W), -3, np.int32),
        np.zeros((0, 0), np.float32),
    ],
    ids=["zeros", "constant", "int-constant", "empty"],
)
@pytest.mark.parametrize("threshold", ["otsu", 0.5])
def test_flat_maps_give_nothing(hm, threshold):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wl = extract_labels(hm, LabelParams(threshold=threshold))
    assert wl.instances == []
    assert wl.mask.shape == hm.shape and wl.mask.dtype == bool and not wl.mask.any()


def test_blob_touching_border_and_sparse_map():
    # a blob cut by the image border is kept (no border erosion); map mostly exact zeros
    m = np.zeros((H, W), np.float32)
    truth = disc(cx=0, cy=0, r=50)
    m[truth] = 1.0
    wl = extract_labels(m)
    assert len(wl.instances) == 1
    assert iou(wl.mask, truth) >= 0.9
    assert wl.instances[0].box[:2] == (0.0, 0.0)


def test_fixed_threshold():
    yy, xx = np.mgrid[:H, :W]
    r2 = (xx - 190.0) ** 2 + (yy - 130.0) ** 2
    cone = np.clip(1.0 - np.sqrt(r2) / 100.0, 0, None).astype(np.float32)  # linear falloff
    p = LabelParams(threshold=0.5, erode=0.0, dilate=0.0)
    wl = extract_labels(cone, p)
    assert wl.threshold == 0.5
    assert len(wl.instances) == 1
    # value > 0.5  <=>  distance < 50 px
    assert iou(wl.mask, r2 < 50.0**2) >= 0.97
    # a higher threshold gives a smaller region
    wl8 = extract_labels(cone, LabelParams(threshold=0.8, erode=0.0, dilate=0.0))
    assert 0 < wl8.mask.sum() < wl.mask.sum()


def test_erode_removes_thin_lines():
    m = np.zeros((H, W), np.float32)
    m[100:102, 20:360] = 1.0  # 2-px line, 340 px long (area well above min_area)
    truth = disc(cx=200, cy=200, r=30)
    m[truth] = 1.0
    assert len(extract_labels(m, LabelParams(erode=0.0, dilate=0.0)).instances) == 2
    wl = extract_labels(m)  # default erosion kernel (3 px) removes the line
    assert len(wl.instances) == 1
    assert iou(wl.mask, truth) >= 0.9


def test_kernel_side():
    assert kernel_side(0.0, 512, 512) == 0
    assert kernel_side(0.01, 512, 512) == 5
    assert kernel_side(0.02, 512, 512) == 11  # round(10.24) = 10 → next odd
    assert kernel_side(0.001, 64, 512) == 1
    assert kernel_side(0.01, 256, 384) == 3  # uses min(H, W)


def test_hole_is_background_but_polygon_external():
    ring = disc(cx=190, cy=128, r=60) & ~disc(cx=190, cy=128, r=30)
    m = np.zeros((H, W), np.float32)
    m[ring] = 1.0
    wl = extract_labels(m)
    assert len(wl.instances) == 1
    inst = wl.instances[0]
    assert not wl.mask[128, 190] and not instance_full_mask(inst, (H, W))[128, 190]
    assert fill_polygon(inst.polygon, (H, W))[128, 190]  # external contour only


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": "median"}, "threshold"),
        ({"erode": -0.1}, "erode"),
        ({"dilate": 1.0}, "dilate"),
        ({"min_area": -1e-3}, "min_area"),
        ({"polygon_epsilon": 2}, "polygon_epsilon"),
        ({"full_score_area": -0.5}, "full_score_area"),
        ({"blur": 3}, "blur"),
        ({"max_area": 0}, "max_area"),
        ({"max_area": 1.5}, "max_area"),
    ],
)
def test_invalid_params(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        LabelParams(**kwargs)
    assert field in str(exc.value)
    assert any(err["loc"][0] == field for err in exc.value.errors())


def test_params_from_json_config():
    p = LabelParams.model_validate_json('{"threshold": 0.3, "erode": 0.0, "min_area": 0.01}')
    assert p.threshold == 0.3 and p.erode == 0.0 and p.dilate == 0.02
    assert LabelParams.model_validate({}).threshold == "otsu"
    assert LabelParams.model_validate(p.model_dump()) == p


def test_semantic_mask_two_words():
    a = disc(cx=100, cy=128, r=40)
    b = disc(cx=280, cy=128, r=40)
    wa = extract_labels(noisy_map((a, 1.0), seed=1))
    wb = extract_labels(noisy_map((b, 1.0), seed=2))
    sem = semantic_mask([wa, wb], [1, 2], (H, W))
    assert sem.dtype == np.uint8 and sem.shape == (H, W)
    assert set(np.unique(sem)) == {0, 1, 2}
    assert iou(sem == 1, a) >= 0.9 and iou(sem == 2, b) >= 0.9
    assert sem[0, 0] == 0


def test_semantic_mask_overlap_rules():
    left = np.zeros((H, W), bool)
    left[:, :200] = True
    right = np.zeros((H, W), bool)
    right[:, 150:] = True
    wl_left = WordLabels(mask=left, instances=[], threshold=0.5)
    wl_right = WordLabels(mask=right, instances=[], threshold=0.5)
    # without heatmaps: later entries win
    sem = semantic_mask([wl_left, wl_right], [3, 7], (H, W))
    assert (sem[:, :150] == 3).all() and (sem[:, 150:] == 7).all()
    # with heatmaps: larger normalised heat wins in the overlap
    xx = np.tile(np.arange(W, dtype=np.float32), (H, 1))
    heat_left = (W - xx) * 100.0  # decreasing to the right, different scale
    heat_right = xx.copy()
    sem_h = semantic_mask([wl_left, wl_right], [3, 7], (H, W), heatmaps=[heat_left, heat_right])
    overlap = sem_h[:, 150:200]
    nl, nr = normalize_heatmap(heat_left)[:, 150:200], normalize_heatmap(heat_right)[:, 150:200]
    assert np.array_equal(overlap == 3, nl > nr)
    assert (sem_h[:, :150] == 3).all() and (sem_h[:, 200:] == 7).all()
    with pytest.raises(ValueError):
        semantic_mask([wl_left], [0], (H, W))
    with pytest.raises(ValueError):
        semantic_mask([wl_left], [1, 2], (H, W))
    assert not semantic_mask([], [], (H, W)).any()


# ---- snapping to the image's edges (labels.snap) -------------------------------------------------
def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red square on grey ground and a map of it as attention gives one: on a grid 8 times coarser than the
    image, upsampled, so its blob is rounder and wider than the square."""
    image = np.full((64, 96, 3), 120, np.uint8)
    square = np.zeros((64, 96), bool)
    square[18:38, 30:50] = True
    image[square] = (200, 30, 30)
    coarse = cv2.resize(square.astype(np.float32), (12, 8), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(cv2.GaussianBlur(coarse, (3, 3), 0), (96, 64), interpolation=cv2.INTER_CUBIC)
    return image, square, np.round(normalize_heatmap(heat) * 255).astype(np.uint8)


def test_guided_filter_takes_the_guides_edges():
    from diffugen.labels.daam import guided_filter

    image, square, heat = _scene()
    guide = image.astype(np.float32) / 255
    src = heat.astype(np.float32) / 255
    (out,) = guided_filter(guide, [src], radius=8)
    assert out.shape == src.shape and out.dtype == np.float32
    assert iou(normalize_heatmap(out) > 0.5, square) > 0.95 > iou(src > 0.5, square)
    (fast,) = guided_filter(guide, [src], radius=8, scale=4)  # the fits on a 4x coarser grid, upsampled
    assert iou(normalize_heatmap(fast) > 0.5, square) > 0.9
    (flat,) = guided_filter(np.full_like(guide, 0.5), [src], radius=2)  # no edges to take: a box blur of the map
    box = cv2.boxFilter(cv2.boxFilter(src, -1, (5, 5), borderType=cv2.BORDER_REFLECT), -1, (5, 5),
                        borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(flat, box, atol=1e-5)


def test_snap_cuts_labels_to_the_image_and_never_adds_pixels():
    from diffugen.labels.daam import instance_mask, label_heatmaps

    image, square, heat = _scene()
    args = ([heat], ["box"], ["box"], {"box": 1})
    plain = label_heatmaps(*args, LabelParams(snap=0, grow=0), [(0.0, 1.0)], image)
    snapped = label_heatmaps(*args, LabelParams(grow=0), [(0.0, 1.0)], image)
    assert label_heatmaps(*args, LabelParams(), [(0.0, 1.0)]).mask.tolist() == plain.mask.tolist()  # no image
    (a,), (b,) = plain.word_labels[0].instances, snapped.word_labels[0].instances
    ma, mb = instance_mask(a, square.shape), instance_mask(b, square.shape)
    assert not (mb & ~ma).any() and not (mb & ~square).any() and (ma & ~square).any()  # the halo is gone
    assert iou(mb, square) > iou(ma, square)
    blob = label_heatmaps(*args, LabelParams(core=False, grow=0), [(0.0, 1.0)], image).word_labels[0].instances[0]
    assert iou(instance_mask(blob, square.shape), square) > 0.95  # the Otsu blob, cut to the square's edges
    # The blob's own features are those of the blob as found; what the cuts left of it is scored too.
    from diffugen.labels.scoring import BLOB_FEATURES

    assert all(b.features[k] == a.features[k] for k in BLOB_FEATURES)
    assert b.features["cut_kept"] < a.features["cut_kept"] <= 1 and b.score != a.score
    assert (snapped.mask == 1).tolist() == mb.tolist()
    assert LabelParams().snap == 0.25 and LabelParams(snap=0).snap == 0
    with pytest.raises(ValidationError):
        LabelParams(snap=1.0)


def test_grow_takes_back_the_rest_of_the_objects_colour_short_of_the_other_words():
    """Two touching red squares, "box" and "cube"; the box's map holds only its left two thirds (an off-centre
    attention peak), so the cuts leave a part of it. ``labels.grow`` takes the rest of its colour back, but not the
    cube's pixels, which the cube's map holds; alone, the box's colour runs on over the cube, past ``grow_limit``
    times its area, and the label is left as the cuts made it."""
    from diffugen.labels.daam import instance_mask, label_heatmaps

    image = np.full((64, 96, 3), 120, np.uint8)
    box, cube, left = (np.zeros((64, 96), bool) for _ in range(3))
    box[16:40, 16:40], cube[16:40, 40:64], left[16:40, 16:32] = True, True, True
    image[box], image[cube] = (200, 30, 30), (205, 35, 30)

    def attention_like(mask):
        coarse = cv2.resize(mask.astype(np.float32), (12, 8), interpolation=cv2.INTER_AREA)
        heat = cv2.resize(cv2.GaussianBlur(coarse, (3, 3), 0), (96, 64), interpolation=cv2.INTER_CUBIC)
        return np.round(normalize_heatmap(heat) * 255).astype(np.uint8)

    both = ([attention_like(left), attention_like(cube)], ["box", "cube"], ["box", "cube"], {"box": 1, "cube": 2})
    ranges = [(0.0, 1.0), (0.0, 1.0)]

    def box_label(args, params, r):
        return instance_mask(label_heatmaps(*args, params, r, image).word_labels[0].instances[0], box.shape)

    cut, grown = box_label(both, LabelParams(grow=0), ranges), box_label(both, LabelParams(), ranges)
    assert iou(cut, box) < 0.6 and not (cut & ~grown).any() and iou(grown, box) > 0.9
    assert (grown & cube).sum() < 0.02 * cube.sum()
    alone = (both[0][:1], ["box"], ["box"], {"box": 1})
    assert box_label(alone, LabelParams(), ranges[:1]).tolist() == box_label(alone, LabelParams(grow=0), ranges[:1]).tolist()
    assert box_label(alone, LabelParams(grow_limit=3), ranges[:1])[cube].mean() > 0.25  # what a higher limit lets through
    # A word said twice, each occurrence's map on part of its own square: each label grows over its square, and no
    # pixel goes to both (the pixels no map's mask holds are free to either, and taken by the first).
    twice = ([attention_like(left), attention_like(cube)], ["box", "box"], ["box", "box"], {"box": 1})
    a, b = (instance_mask(wl.instances[0], box.shape)
            for wl in label_heatmaps(*twice, LabelParams(), ranges, image).word_labels)
    assert not (a & b).any() and iou(a, box) > 0.8
    assert LabelParams().grow == 20 and LabelParams().grow_limit == 1.75
    for bad in ({"grow": -1}, {"grow_limit": 0.5}):
        with pytest.raises(ValidationError):
            LabelParams(**bad)


def test_a_map_spread_over_the_background_is_no_label():
    """A word whose object was not drawn: its map covers the background around the other word's object. The
    cuts keep that region whole (one colour); ``max_area`` drops it, and the word is missing."""
    from diffugen.labels.daam import label_heatmaps, missing_words

    image, square, heat = _scene()
    args = ([heat, 255 - heat], ["box", "ball"], ["box", "ball"], {"box": 1, "ball": 2})
    ranges = [(0.0, 1.0), (0.0, 0.8)]
    dropped = label_heatmaps(*args, LabelParams(), ranges, image)
    kept = label_heatmaps(*args, LabelParams(max_area=1), ranges, image)
    (ball,) = kept.word_labels[1].instances
    assert ball.area > 0.5 and not dropped.word_labels[1].instances and not dropped.word_labels[1].mask.any()
    assert not (dropped.mask == 2).any() and (kept.mask == 2).any()
    assert len(dropped.word_labels[0].instances) == 1  # the drawn word keeps its label
    assert missing_words(dropped, ["box", "ball"], 0.0) == ["ball"] and missing_words(kept, ["box", "ball"], 0.0) == []
