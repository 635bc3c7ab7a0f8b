"""The label score and the resolution of words against each other: on synthetic maps in units of
attention, on a real generation (one heatmap per occurrence, scales stored, relabel reproduces the
labels), and the toy-world judge that measures them."""

from __future__ import annotations

from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
from conftest import small_config

from diffugen.config import parse_config
from diffugen.errors import DatasetError
from diffugen.generation.family import token_runs
from diffugen.generation.runner import generate
from diffugen.labels.daam import REVIEW_FEATURES, LabelParams, label_heatmaps
from diffugen.labels.relabel import preview_relabel, relabel
from diffugen.labels.scoring import BLOB_FEATURES, FEATURES, attention_score, instance_features
from diffugen.toyworld.evaluation import auroc, judge_labels, label_metrics

H, W = 48, 64
IDS = {"circle": 1, "square": 2}


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def attention_map(*blobs: tuple[np.ndarray, float], floor: float = 0.02) -> np.ndarray:
    """A map in units of attention: ``floor`` plus each blob's extra attention, lightly blurred."""
    import cv2

    m = np.full((H, W), floor, np.float32)
    for mask, extra in blobs:
        m[mask] += extra
    return cv2.GaussianBlur(m, (5, 5), 0)


def stored(raw: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """What the runner stores of a map: uint8 min-max normalised, and its (floor, peak)."""
    lo, hi = float(raw.min()), float(raw.max())
    return np.round((raw - lo) / (hi - lo) * 255).astype(np.uint8), (lo, hi)


def two_words(circle: np.ndarray, square: np.ndarray, params: LabelParams = LabelParams()):
    (mc, rc), (ms, rs) = stored(circle), stored(square)
    return label_heatmaps([mc, ms], ["circle", "square"], ["circle", "square"], IDS, params, [rc, rs])


def test_token_runs_split_occurrences():
    assert token_runs([3, 7]) == [[3], [7]]
    assert token_runs([3, 4, 9, 10, 11]) == [[3, 4], [9, 10, 11]]
    assert token_runs([]) == []


def test_resolution_gives_each_pixel_to_one_word():
    left, right = disc(20, 24, 9), disc(44, 24, 9)
    # "square" attends weakly to the circle's object too: without resolution both words label it
    circle = attention_map((left, 0.10))
    square = attention_map((right, 0.10), (left, 0.06))
    unresolved = two_words(circle, square, LabelParams(resolve=False))
    resolved = two_words(circle, square)
    sq_unresolved = unresolved.word_labels[1].mask
    assert (sq_unresolved & left).sum() > 0.5 * left.sum()  # the square's mask covers the circle too
    masks = [wl.mask for wl in resolved.word_labels]
    assert not (masks[0] & masks[1]).any()
    assert (masks[0] & left).sum() > 0.8 * left.sum() and (masks[1] & left).sum() == 0
    assert (masks[1] & right).sum() > 0.8 * right.sum()
    # the semantic mask agrees with the instances
    assert np.array_equal(resolved.mask, masks[0] * np.uint8(1) + masks[1] * np.uint8(2))


def test_attention_decides_between_words_the_papers_score_cannot():
    """Two words whose maps are alike once normalised, one with 4× the attention on the object: the
    strong word keeps the object and is sure of it; the weak one keeps nothing there. Normalised, the
    paper's score sees two equally sure words."""
    blob = disc(32, 24, 10)
    strong, weak = attention_map((blob, 0.2)), attention_map((blob, 0.05), floor=0.005)
    (ms, rs), (mw, rw) = stored(strong), stored(weak)
    assert np.abs(ms.astype(int) - mw.astype(int)).max() <= 1
    labels = label_heatmaps([ms, mw], ["circle", "square"], ["circle", "square"], IDS, LabelParams(), [rs, rw])
    circle, square = labels.word_labels
    assert circle.instances and set(circle.instances[0].features) == {*FEATURES, *BLOB_FEATURES}
    assert circle.instances[0].features["share"] > 0.7
    assert not (square.mask & blob).any()
    paper = label_heatmaps([ms, mw], ["circle", "square"], ["circle", "square"], IDS,
                           LabelParams(score="size_intensity", resolve=False), [rs, rw])
    a, b = (wl.instances[0] for wl in paper.word_labels)
    assert a.score == pytest.approx(b.score, abs=0.02) and not a.features


def test_share_feature_sees_the_other_words():
    blob = disc(32, 24, 10)
    raw = attention_map((blob, 0.1))
    alone = instance_features(raw, raw, raw > 0.06, blob, float(raw.min()))
    rival = attention_map((blob, 0.3))
    contested = instance_features(raw, raw + rival, raw > 0.06, blob, float(raw.min()))
    assert alone["share"] == pytest.approx(1.0) and contested["share"] < 0.4


def test_a_word_said_twice_reads_each_instance_against_its_own_occurrence():
    """"a red circle and a yellow circle": each occurrence's token attends to its own disc, so each instance holds about
    half of the word's attention and pixels (``blob_share``, ``core_share``) but nearly all of its occurrence's
    (``own_*``); a word said once reads the same both ways."""
    left, right = disc(16, 24, 8), disc(48, 24, 8)
    red = attention_map((left, 0.10), (right, 0.07))  # each token attends to both discs, the more to its own
    yellow = attention_map((right, 0.10), (left, 0.07))
    (mr, rr), (my, ry) = stored(red), stored(yellow)
    labels = label_heatmaps([mr, my], ["circle", "circle"], ["circle", "circle"], IDS, LabelParams(), [rr, ry])
    for wl, blob in zip(labels.word_labels, (left, right)):
        (inst,) = wl.instances
        assert (wl.mask & blob).sum() > 0.8 * blob.sum()
        f = inst.features
        assert f["repeated"] == 1.0
        assert f["blob_share"] < 0.7 and f["own_blob_share"] > 0.9
        assert f["core_share"] < 0.7 and f["own_core_share"] > 0.9
    once = label_heatmaps([mr], ["circle"], ["circle"], IDS, LabelParams(), [rr]).word_labels[0].instances
    assert once and all(i.features["repeated"] == 0.0 and i.features["own_blob_share"] == i.features["blob_share"]
                        and i.features["own_core_share"] == i.features["core_share"] for i in once)


def test_margin_doubts_a_label_on_an_object_another_word_attends_to_at_its_peak():
    """The "square" attends to its own square at its peak and less to the circle, but its floor is higher
    everywhere, so in units of attention it wins the circle's pixels from the "circle", whose map peaks there: the
    label of the square is sure of its margin over the circle's map, the square's label on the circle is not (each map
    scaled to its own peak), and the review says why."""
    from diffugen.curation.review import label_reasons
    from diffugen.labels.scoring import rival_margin

    circle_blob, square_blob = disc(16, 24, 8), disc(48, 24, 8)
    circle = attention_map((circle_blob, 0.03), floor=0.01)
    square = attention_map((square_blob, 0.12), (circle_blob, 0.08), floor=0.03)
    labels = two_words(circle, square)
    by_blob = {name: [(c, i) for c, wl in zip(labels.classes, labels.word_labels) for i in wl.instances
                      if (i.mask.sum() and (labels_mask(i) & blob).sum() > 0.5 * i.mask.sum())]
               for name, blob in (("circle", circle_blob), ("square", square_blob))}
    ((cls, on_circle),) = by_blob["circle"]
    ((_, on_square),) = by_blob["square"]
    assert cls == "square"  # the higher floor took the circle's pixels at resolution
    assert on_square.features["margin"] > 0.5 > 0 > on_circle.features["margin"]
    assert on_circle.score < on_square.score
    assert any("another class word's map" in r for r in label_reasons({"confidence": 0.9, **on_circle.features}, 0.5))
    assert not any("another class word's map" in r
                   for r in label_reasons({"confidence": 0.9, **on_square.features}, 0.5))
    own, rival = np.full((H, W), 0.9, np.float32), np.full((H, W), 0.2, np.float32)
    assert rival_margin(own, [rival], circle_blob) == pytest.approx(0.7)
    assert rival_margin(own, [], circle_blob) == pytest.approx(0.9)  # one class word: nothing to stand above
    assert rival_margin(own, [rival], np.zeros((H, W), bool)) == 0.0


def labels_mask(inst) -> np.ndarray:
    from diffugen.labels.daam import instance_mask

    return instance_mask(inst, (H, W))


def test_colour_step_doubts_a_label_that_does_not_stand_out():
    """The same map over a red disc on grey, and over the same grey with nothing drawn: the label of the drawn disc
    differs from what surrounds it, the one on bare ground does not and scores lower, and the review says why; an
    unknown image gets the training median."""
    from diffugen.curation.review import label_reasons
    from diffugen.labels.scoring import NO_IMAGE_COLOUR_STEP, colour_step, cut_features, image_lab

    blob = disc(32, 24, 10)
    m, scale = stored(attention_map((blob, 0.2)))
    ground = np.full((H, W, 3), 128, np.uint8)
    drawn = ground.copy()
    drawn[blob] = (220, 30, 30)
    on_object, on_ground = (label_heatmaps([m], ["circle"], ["circle"], IDS, LabelParams(), [scale], image)
                            .word_labels[0].instances[0] for image in (drawn, ground))
    assert np.expm1(on_object.features["log_colour_step"]) > 50 > 1 > np.expm1(on_ground.features["log_colour_step"])
    assert on_ground.score < on_object.score
    assert colour_step(image_lab(drawn), blob) == pytest.approx(on_object.features["log_colour_step"], abs=0.3)
    assert colour_step(image_lab(drawn), np.zeros((H, W), bool)) == 0.0
    assert cut_features({"log_area": 0.0}, 0.1, blob, blob)["log_colour_step"] == NO_IMAGE_COLOUR_STEP
    reasons = label_reasons({"confidence": on_ground.score, **on_ground.features}, 0.5)
    assert any("hardly stands out" in r for r in reasons)
    assert not any("stands out" in r for r in label_reasons({"confidence": 0.9, **on_object.features}, 0.5))


def test_attention_score_is_logistic():
    f = dict.fromkeys(FEATURES, 1.0)
    assert attention_score(f, dict.fromkeys(FEATURES, 0.0), 0.0) == pytest.approx(0.5)
    w = dict.fromkeys(FEATURES, 0.5)
    assert attention_score(f, w, -3.0) == pytest.approx(1 / (1 + np.exp(-(-3.0 + 0.5 * len(FEATURES)))))


def test_heatmaps_without_scale_get_the_papers_score():
    blob = disc(32, 24, 10)
    m, _ = stored(attention_map((blob, 0.2)))
    labels = label_heatmaps([m], ["circle"], ["circle"], IDS, LabelParams())
    inst = labels.word_labels[0].instances[0]
    assert not inst.features and 0 < inst.score <= 1


@pytest.mark.parametrize("image_format", ["png", "jpg"])  # a JPEG is snapped to as stored, as relabel reads it
def test_one_heatmap_per_occurrence_and_relabel_reproduces_labels(tmp_path, dataset_name, image_format):
    cfg = small_config(dataset_name, tmp_path / "out", templates=["a red {object} and a blue {object} at {time}"],
                       attributes={"object": ["car"], "time": ["noon"]}, image_format=image_format)
    generate(parse_config(cfg))
    ds = fo.load_dataset(dataset_name)
    for s in ds:
        assert s["class_words"] == ["car"]
        hms = s["word_heatmaps"]
        assert [h["word"] for h in hms] == ["car", "car"]
        assert all(0 <= h["floor"] < h["peak"] <= 1 for h in hms)
    before = [(d.label, round(d.confidence, 6), d.bounding_box) for s in ds for d in s.daam_detections.detections]
    assert before and all(d.confidence is not None for s in ds for d in s.daam_detections.detections)
    relabel(ds, parse_config(cfg).labels)  # the labels are snapped to the image read back from its file
    ds.reload()
    after = [(d.label, round(d.confidence, 6), d.bounding_box) for s in ds for d in s.daam_detections.detections]
    assert after == before
    unsnapped = parse_config({**cfg, "labels": {"snap": 0, "grow": 0}}).labels
    assert preview_relabel(ds, unsnapped).labels_after == len(before)  # the same blobs, with their halo
    first = ds.first()
    Path(first.filepath).unlink()
    with pytest.raises(DatasetError, match=f"image file missing or unreadable for sample {first.id}"):
        relabel(ds.select(first.id), parse_config(cfg).labels)
    relabel(ds.select(first.id), unsnapped)  # without the snap and the growth the image is not needed
    last = ds.last()
    cv2.imwrite(last.filepath, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=f"image of sample {last.id} is 8x8 px, its heatmaps"):
        preview_relabel(ds.select(last.id), parse_config(cfg).labels)


def test_joint_attention_maps_take_their_own_weights_and_keep_them_for_relabel(tmp_path, dataset_name):
    """An SD3 model's maps are scored with the joint-attention weights, the heatmaps say so, and relabeling scores
    them alike; a UNet's keep the cross-attention ones."""
    from diffugen.labels.scoring import JOINT_BIAS, JOINT_WEIGHTS

    f = dict.fromkeys(FEATURES, 0.5)
    assert attention_score(f, attention="joint") == attention_score(f, JOINT_WEIGHTS, JOINT_BIAS) != attention_score(f)
    with pytest.raises(ValueError, match="attention 'self'"):
        attention_score(f, attention="self")
    cfg = small_config(dataset_name, tmp_path / "out", model="builtin:tiny-sd3", steps=2, seeds=[5],
                       attributes={"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]})
    generate(parse_config(cfg))
    ds = fo.load_dataset(dataset_name)
    assert {h["attention"] for s in ds for h in s["word_heatmaps"]} == {"joint"}
    dets = [d for s in ds for d in s.daam_detections.detections]
    assert dets and all(d.has_field(k) for d in dets for k in REVIEW_FEATURES)  # the review's reasons, as on a UNet
    before = [round(d.confidence, 6) for d in dets]
    relabel(ds, parse_config(cfg).labels)
    ds.reload()
    assert [round(d.confidence, 6) for s in ds for d in s.daam_detections.detections] == before
    unet_name = f"{dataset_name}-unet"
    generate(parse_config(small_config(unet_name, tmp_path / "unet", steps=2, seeds=[5])))
    assert {h["attention"] for s in fo.load_dataset(unet_name) for h in s["word_heatmaps"]} == {"cross"}
    fo.delete_dataset(unet_name)


def test_judge_matches_one_to_one_by_score():
    a, b = disc(16, 24, 8), disc(46, 24, 8)
    image_prompt = "a red circle and a yellow circle"
    image = np.zeros((H, W, 3), np.uint8)
    image[a] = (220, 30, 30)
    image[b] = (235, 220, 40)
    # two labels on the same object: the better scored is right, the other wrong; one on nothing
    j = judge_labels("txt2img", image_prompt, image, ["circle", "circle", "circle"], [0.9, 0.8, 0.3],
                     [a, a, disc(5, 5, 3)], ["circle"])
    assert sorted(o.colour for o in j.objects) == ["red", "yellow"]
    assert j.right == [True, False, False]
    m = label_metrics([j])
    assert m["labels"] == 3 and m["right"] == 1 and m["labels_at_threshold"] == 2
    assert m["precision_at_threshold"] == pytest.approx(0.5) and m["right_kept_at_threshold"] == 1.0
    assert m["auroc"] == 1.0  # the right label (0.9) ranks above both wrong ones (0.8, 0.3)
    assert auroc([0.9, 0.1], [True, False]) == 1.0


def test_judge_per_object_drawn_splits_a_colour_drawn_twice_not_a_broken_ring():
    """The same labels judged per colour and per object drawn: "a red circle" drawn twice is two true circles (a label
    of one is right only per object), while a ring broken into pieces inside one object's box, and a fleck beside an
    object, stay one object."""
    from diffugen.toyworld.evaluation import colour_instances

    a, b = disc(14, 24, 8), disc(48, 24, 8)
    image = np.zeros((H, W, 3), np.uint8)
    image[a | b] = (220, 30, 30)
    per_colour = judge_labels("txt2img", "a red circle", image, ["circle"], [0.9], [a], ["circle"])
    per_object = judge_labels("txt2img", "a red circle", image, ["circle"], [0.9], [a], ["circle"], per_object=True)
    assert len(per_colour.objects) == 1 and per_colour.right == [False]
    assert len(per_object.objects) == 2 and per_object.right == [True]
    ring = disc(32, 24, 9) & ~disc(32, 24, 5)
    broken = ring.copy()
    broken[:, 31:34] = False  # two halves, 3 px apart
    fleck = disc(50, 40, 1.5)
    (one,) = colour_instances(broken | fleck)
    assert (one == (broken | fleck)).all()
    assert len(colour_instances(a | b)) == 2
    # A white disc drifting to pink-white on one side (ΔRGB 68 from the palette's white) on blue water: the palette's tolerance
    # reads half of it, the judge per object drawn all of it, and none of the water.
    c = disc(32, 24, 10)
    image = np.full((H, W, 3), (40, 70, 160), np.uint8)
    image[c] = (250, 250, 250)
    image[c & (np.mgrid[:H, :W][1] > 32)] = (255, 185, 215)
    (tight,) = judge_labels("txt2img", "a white circle", image, ["circle"], [0.9], [c], ["circle"]).objects
    (drawn,) = judge_labels("txt2img", "a white circle", image, ["circle"], [0.9], [c], ["circle"], per_object=True).objects
    assert tight.mask.sum() < 0.6 * c.sum() and (drawn.mask & c).sum() >= 0.95 * c.sum() and not (drawn.mask & ~c).any()


def test_label_metrics_not_drawn_and_merged():
    a, b = disc(16, 24, 8), disc(46, 24, 8)
    image = np.zeros((H, W, 3), np.uint8)
    image[a] = (220, 30, 30)
    image[b] = (235, 220, 40)
    # "triangle" was asked for but not drawn: its label scored 0.7 is junk; the circle's mask covers both
    j = judge_labels("txt2img", "a red circle and a yellow square and a white triangle", image,
                     ["circle", "triangle"], [0.9, 0.7], [a | b, disc(30, 10, 4)], ["circle", "square", "triangle"])
    m = label_metrics([j])
    assert m["not_drawn_pairs"] == 1 and m["junk_per_not_drawn_pair"] == 1.0
    assert m["two_object_images"] == 1 and m["merged_two_object"] == 1.0
    split = judge_labels("txt2img", "a red circle and a yellow square", image, ["circle", "square"], [0.9, 0.9],
                         [a, b], ["circle", "square"])
    assert label_metrics([split])["merged_two_object"] == 0.0
    assert label_metrics([split])["mask_iou"] > 0.95  # the truth read-back opens 1-px edges away


def test_core_cuts_a_blurred_map_back_to_its_object():
    """A map blurred beyond its object (as a 16×16 attention grid upsampled is): Otsu's mask is too large; the
    instance cut to the three-class Otsu core fits the object better; its blob's features are the same, and the
    score also reads what the cut kept."""
    import cv2

    obj = disc(32, 24, 8)
    raw = cv2.GaussianBlur(np.where(obj, 0.12, 0.02).astype(np.float32), (0, 0), 5)
    m, r = stored(raw)
    cored = label_heatmaps([m], ["circle"], ["circle"], IDS, LabelParams(), [r]).word_labels[0]
    plain = label_heatmaps([m], ["circle"], ["circle"], IDS, LabelParams(core=False), [r]).word_labels[0]

    def iou(mask):
        return (mask & obj).sum() / (mask | obj).sum()

    assert len(cored.instances) == len(plain.instances)
    blob = BLOB_FEATURES  # the blob as found, before the cut
    assert [[i.features[k] for k in blob] for i in cored.instances] == [[i.features[k] for k in blob] for i in plain.instances]
    assert all(c.features["cut_kept"] < 0.9 and p.features["cut_kept"] == pytest.approx(1)
               for c, p in zip(cored.instances, plain.instances))
    assert plain.mask.sum() > 1.3 * obj.sum() and iou(plain.mask) < 0.65 and iou(cored.mask) > 0.85
    assert cored.mask.sum() == sum(int(i.mask.sum()) for i in cored.instances)


def test_snap_leaves_a_word_the_pixels_no_other_word_holds():
    """Words whose attention has other floors: the square's map is above the circle's peak everywhere, but its
    snapped core is on the square. The circle's disc is in no other word's core, so it stays the circle's (a
    pixel is contested only between the words whose cores hold it)."""
    from diffugen.labels.daam import image_cores

    square, circle = np.zeros((H, W), bool), disc(46, 24, 8)
    square[16:32, 8:24] = True
    image = np.full((H, W, 3), (220, 200, 150), np.uint8)
    image[square], image[circle] = (10, 10, 10), (140, 30, 170)
    heat = {"circle": attention_map((circle, 0.02), floor=0.027), "square": attention_map((square, 0.05), floor=0.05)}
    assert heat["square"].min() > heat["circle"].max()
    cores = image_cores(image, heat, 0.25)
    assert (cores["circle"] & circle).sum() >= 0.9 * circle.sum() and not (cores["circle"] & square).any()
    assert (cores["square"] & square).sum() >= 0.9 * square.sum() and not (cores["square"] & circle).any()
