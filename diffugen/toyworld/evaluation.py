"""Judging DAAM labels of generated toy-world images against the truth read back from their pixels.

A prompt asks for ``<colour> [hollow] <shape>`` objects; the truth of an image is, per requested
object, the connected blobs of its colour (:func:`~.truth.recover_instances`), labelled with the shape
asked for; judged ``per_object``, each object as the model drew it instead (a colour drawn twice is two objects, the
tints it drifts to are part of one: :func:`true_objects`). A label (one instance of one class word) is **right** when its mask has IoU ≥ 0.5 with a
true instance of its class, matched one-to-one in order of descending score (as FiftyOne's
``evaluate_detections`` matches), and **wrong** otherwise. :func:`label_metrics` then says how well the
scores rank: AUROC of right vs wrong, the precision of labels scored at least the review threshold
and the share of right labels kept there, junk labels of words whose object was not drawn, and
masks that merge two objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ..common import REVIEW_MIN_SCORE
from .scene import COLORS, SHAPES, make_scene
from .train import HELD_OUT_SEED
from .truth import color_masks, recover_instances

MATCH_IOU = 0.5
MERGE_COVER = 0.5  # a mask covering this share of each of two objects merges them
MAX_SIDE = 0.45  # an object's box side fits within this share of the image side (the world draws 0.22-0.38)
MIN_SIDE = 1 / 8  # a colour's group of pieces whose box is smaller than this share of the image side is a fleck
TINT = 90.0  # the colour distance the judge per object drawn reads an object's drifted tints within


def captions(n: int, first_seed: int, exclude: Sequence[str] = (), hollow_rate: float = 0.0) -> list[str]:
    """``n`` distinct captions of the scenes of seeds ``first_seed, first_seed + 1, ...``, none in ``exclude``."""
    out: list[str] = []
    seen = set(exclude)
    seed = first_seed
    while len(out) < n:
        cap = make_scene(seed, hollow_rate=hollow_rate, stretch_rate=0.0).caption
        seed += 1
        if cap not in seen:
            seen.add(cap)
            out.append(cap)
    return out


def held_out_captions(n: int, hollow_rate: float = 0.0) -> list[str]:
    """Captions of scenes the model never trained on (seeds from :data:`~.train.HELD_OUT_SEED` on)."""
    return captions(n, HELD_OUT_SEED, hollow_rate=hollow_rate)


def requested(prompt: str) -> list[tuple[str, str, str]]:
    """``[(colour, shape, kind), ...]`` a prompt asks for (kind: e.g. ``"square"`` or ``"hollow square"``)."""
    pat = re.compile(rf"\b({'|'.join(COLORS)}) (hollow )?({'|'.join(SHAPES)})\b")
    return [(m.group(1), m.group(3), (m.group(2) or "") + m.group(3)) for m in pat.finditer(prompt)]


def child_tasks(parents: int) -> dict:
    """Config sections that give ``parents`` txt2img images an img2img child (strength 0.6) and an
    inpaint child per labeled object (the object redrawn inside its dilated DAAM mask)."""
    return {
        "img2img": {"strength": 0.6, "source": {"limit": parents}},
        "inpaint": {"replacements": {s: [s] for s in SHAPES}, "mask_dilation": 0.12, "strength": 0.8,
                    "source": {"limit": parents}},
    }


@dataclass
class TrueObject:
    shape: str  # the class asked for
    kind: str  # "square", "hollow square", ...
    colour: str
    mask: np.ndarray  # bool (H, W)


def true_objects(image: np.ndarray, prompt: str, tolerance: float = 60.0, min_area: int = 12,
                 per_instance: bool = False, tint: float | None = None) -> list[TrueObject]:
    """The requested objects the image holds, with the shape asked for; a requested colour without a blob was
    not drawn. One per requested colour, the union of its blobs (a scene's colours are distinct); with
    ``per_instance``, each object drawn in a requested colour (:func:`colour_instances`): a model that draws "a white
    triangle" twice made two triangles, and a label of either one is a label of a true instance. With ``tint`` (a
    looser colour distance), a colour's blobs also take the pixels connected to them whose nearest reference colour
    is theirs within ``tint``: the model drifts a white ring to pink-white, which the eye still reads as its ring
    (the nearest-reference rule keeps the ground out)."""
    asked = {c: (shape, kind) for c, shape, kind in requested(prompt)}
    blobs: dict[str, np.ndarray] = {}
    for r in recover_instances(image, tolerance, min_area, open_noise=True):
        if r.color in asked:
            blobs[r.color] = blobs[r.color] | r.mask if r.color in blobs else r.mask
    if tint is not None and blobs:
        loose = color_masks(image, tint)
        for c, m in blobs.items():
            near = cv2.morphologyEx(loose[c].astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) | m
            _, lab = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
            blobs[c] = np.isin(lab, np.unique(lab[m]))
    return [TrueObject(*asked[c], c, m) for c, union in blobs.items()
            for m in (colour_instances(union) if per_instance else [union])]


def colour_instances(mask: np.ndarray, max_side: float = MAX_SIDE, min_side: float = MIN_SIDE) -> list[np.ndarray]:
    """The objects of one colour's ``bool (H, W)`` pixels. Its pieces (8-connected) are joined, nearest first, as
    long as the joined box fits an object (sides within ``max_side`` of the image's short side): the pieces of a ring
    drawn in broken tints lie within one object's box, while a second object of that colour beside the first makes a
    box larger than any object. A group whose box is smaller than ``min_side`` of the short side (a fleck) then goes
    to the nearest larger one. Every pixel of ``mask`` is in exactly one object."""
    side = min(mask.shape)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    groups = [[int(x), int(y), int(x + w), int(y + h), [k]] for k, (x, y, w, h, _) in enumerate(stats[1:], 1)]

    def gap(a, b) -> int:  # between two boxes, in pixels (0 where they overlap)
        return max(0, b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])

    def joined_side(a, b) -> int:
        return max(max(a[2], b[2]) - min(a[0], b[0]), max(a[3], b[3]) - min(a[1], b[1]))

    while True:
        pairs = [(gap(a, b), i, j) for i, a in enumerate(groups) for j, b in enumerate(groups[i + 1 :], i + 1)
                 if joined_side(a, b) <= max_side * side]
        if not pairs:
            break
        _, i, j = min(pairs)
        a, b = groups[i], groups.pop(j)
        groups[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), a[4] + b[4]]
    objects = [np.isin(lab, g[4]) for g in groups]
    if len(objects) <= 1:
        return objects
    large = [k for k, g in enumerate(groups) if max(g[2] - g[0], g[3] - g[1]) >= min_side * side]
    large = large or [int(np.argmax([o.sum() for o in objects]))]
    big = [objects[k] for k in large]
    dist = np.stack([cv2.distanceTransform((~o).astype(np.uint8), cv2.DIST_L2, 3) for o in big])
    for k, o in enumerate(objects):
        if k not in large:
            big[int(dist[:, o].mean(1).argmin())] |= o
    return big


@dataclass
class JudgedImage:
    """The labels of one image judged against its truth (one entry per label, in the labels' order)."""

    task: str
    prompt: str
    objects: list[TrueObject]
    classes: list[str]  # per label
    scores: list[float]
    right: list[bool]
    ious: list[float]  # best IoU with a true object of its class
    masks: list[np.ndarray]  # bool (H, W) per label
    word_masks: dict[str, np.ndarray] = field(default_factory=dict)  # class → union of its labels
    asked: list[str] = field(default_factory=list)  # class words of the prompt that were labeled (had a heatmap)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def judge_labels(task: str, prompt: str, image: np.ndarray, classes: Sequence[str], scores: Sequence[float],
                 masks: Sequence[np.ndarray], asked: Sequence[str], tolerance: float = 60.0,
                 per_object: bool = False) -> JudgedImage:
    """Judge one image's labels (``classes[k]``, ``scores[k]``, full-image bool ``masks[k]``) against
    :func:`true_objects`: one per requested colour, or with ``per_object`` each object as drawn (its copies apart,
    its drifted tints within :data:`TINT` included)."""
    objects = true_objects(image, prompt, tolerance, per_instance=per_object, tint=TINT if per_object else None)
    right = [False] * len(classes)
    ious = [0.0] * len(classes)
    taken: set[int] = set()
    for k in sorted(range(len(classes)), key=lambda k: -scores[k]):
        best, best_iou = None, MATCH_IOU
        for t, obj in enumerate(objects):
            if obj.shape != classes[k]:
                continue
            v = _iou(masks[k], obj.mask)
            ious[k] = max(ious[k], v)
            if t not in taken and v >= best_iou:
                best, best_iou = t, v
        if best is not None:
            taken.add(best)
            right[k] = True
    word_masks: dict[str, np.ndarray] = {}
    for cls, m in zip(classes, masks):
        word_masks[cls] = word_masks[cls] | m if cls in word_masks else m.copy()
    return JudgedImage(task, prompt, objects, list(classes), list(map(float, scores)), right, ious, list(masks),
                       word_masks, list(dict.fromkeys(asked)))


def auroc(scores: Sequence[float], right: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` separating right from wrong labels (NaN without both)."""
    from sklearn.metrics import roc_auc_score  # a FiftyOne dependency

    y = np.asarray(right, bool)
    return float(roc_auc_score(y, np.asarray(scores, float))) if 0 < y.sum() < len(y) else float("nan")


def label_metrics(images: Sequence[JudgedImage], threshold: float = REVIEW_MIN_SCORE) -> dict:
    """The score's quality over judged images (see the module docstring), as a flat dict."""
    scores = [s for im in images for s in im.scores]
    right = [r for im in images for r in im.right]
    s, y = np.asarray(scores, float), np.asarray(right, bool)
    sure = s >= threshold
    # Image/word pairs whose object was not drawn: the prompt's class word labeled, no true object of it.
    junk = [sum(1 for c, sc in zip(im.classes, im.scores) if c == w and sc >= threshold)
            for im in images for w in im.asked if not any(o.shape == w for o in im.objects)]
    # Two objects of different classes: does one word's mask cover most of both?
    merged = two = 0
    for im in images:
        if len(im.objects) == 2 and im.objects[0].shape != im.objects[1].shape:
            two += 1
            merged += any(all((m & o.mask).sum() >= MERGE_COVER * o.mask.sum() for o in im.objects)
                          for m in im.word_masks.values())
    # Same-class instances: does one label cover most of two of them?
    same = joined = 0
    for im in images:
        for w in set(o.shape for o in im.objects):
            objs = [o for o in im.objects if o.shape == w]
            if len(objs) >= 2:
                same += 1
                joined += any(sum((m & o.mask).sum() >= MERGE_COVER * o.mask.sum() for o in objs) >= 2
                              for c, m in zip(im.classes, im.masks) if c == w)
    # Mask IoU per image and class: the class word's mask (union of its labels) vs its true objects.
    mask_ious = []
    for im in images:
        for w in im.asked:
            truth = [o.mask for o in im.objects if o.shape == w]
            if truth:
                pred = im.word_masks.get(w, np.zeros_like(truth[0]))
                mask_ious.append(_iou(pred, np.logical_or.reduce(truth)))
    return {
        "images": len(images), "labels": len(s), "right": int(y.sum()),
        "auroc": auroc(s, y),
        "precision_at_threshold": float(y[sure].mean()) if sure.any() else float("nan"),
        "labels_at_threshold": int(sure.sum()),
        "right_kept_at_threshold": float((y & sure).sum() / max(1, y.sum())),
        "not_drawn_pairs": len(junk), "junk_per_not_drawn_pair": float(np.mean(junk)) if junk else 0.0,
        "two_object_images": two, "merged_two_object": merged / max(1, two),
        "same_class_groups": same, "joined_same_class": joined / max(1, same),
        "mask_iou": float(np.mean(mask_ious)) if mask_ious else float("nan"),
    }


def detection_mask(box: Sequence[float], mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A FiftyOne detection's instance mask (cropped to its relative ``[x, y, w, h]`` box) at image size."""
    height, width = shape
    out = np.zeros(shape, bool)
    x, y = int(round(box[0] * width)), int(round(box[1] * height))
    crop = np.asarray(mask, bool)[: height - y, : width - x]
    out[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return out


def judge_sample(sample, field: str = "daam_detections", tolerance: float = 60.0,
                 per_object: bool = False, image: np.ndarray | None = None) -> JudgedImage:
    """:func:`judge_labels` of a generated sample's detections in ``field`` (with instance masks); ``image``: its
    ``(H, W, 3)`` pixels where the caller has read them already."""
    from PIL import Image

    image = np.asarray(Image.open(sample.filepath).convert("RGB")) if image is None else image
    dets = sample[field].detections if sample[field] is not None else []
    masks = [detection_mask(d.bounding_box, d.mask, image.shape[:2]) for d in dets]
    return judge_labels(sample["task"], sample["prompt"], image, [d.label for d in dets],
                        [d.confidence for d in dets], masks, sample["class_words"] or [], tolerance, per_object)
