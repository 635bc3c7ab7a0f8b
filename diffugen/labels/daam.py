"""DAAM labels: cross-attention heatmap → semantic mask, instance polygons, boxes, scores → FiftyOne.

This implements the unsupervised labeling of DiffuGen (sections 3.5.1 and 3.5.2). For one word of
the prompt, its cross-attention heatmap of shape ``(H, W)`` is turned into labels as follows:

1. **Normalise** the map to ``[0, 1]`` by min-max (:func:`normalize_heatmap`; a constant map
   becomes all zeros).
2. **Threshold** it: a pixel is foreground when its normalised value is strictly greater than
   the threshold. The threshold is either fixed (a float in ``(0, 1)``) or found with Otsu's
   method on the map quantised to ``uint8`` (``round(255 * x)``); Otsu's ``uint8`` threshold
   ``t`` is reported back as ``t / 255``.
3. **Erode, then dilate** the binary mask (a morphological opening when both kernels are equal;
   by default the dilation kernel is larger, which also closes small gaps and slightly grows the
   blobs back after the erosion). Kernels are elliptical (isotropic for blob-shaped objects); the
   side of each is ``max(1, round(frac * min(H, W)))``, bumped up to the next odd number so that
   the kernel is centred (no half-pixel shift). ``frac = 0`` disables the operation. Pixels
   outside the image never erode the mask (OpenCV's default border), so blobs touching the image
   edge are kept.
4. **External contours** (``cv2.RETR_EXTERNAL``, ``cv2.CHAIN_APPROX_SIMPLE``): one instance per
   connected blob; holes are filled in the polygon but stay background in the masks.
   Instances whose pixel area is below ``min_area * H * W`` are dropped, from both the instance
   list and the semantic mask.
5. Per instance: the **polygon** (the contour, simplified with ``cv2.approxPolyDP`` at
   ``epsilon = polygon_epsilon * perimeter`` when ``polygon_epsilon > 0``), the **box**
   (``cv2.boundingRect`` of the contour), the **mask** cropped to that box, the **area** and the
   **label score**.

A prompt's labels (:func:`label_heatmaps`) then resolve its words against each other, score each instance
from the attention it was made of, cut each to the core of its word's map and to the image's edges, and grow it
back over the rest of its object's colour (``labels.core``, ``labels.snap``, ``labels.grow``).

Label score
    :func:`label_heatmaps` scores a prompt's labels by how sure they are, from the maps in units of
    attention and against each other (:mod:`diffugen.labels.scoring`, ``score="attention"``, the
    default). :func:`extract_labels`, one map on its own, gives the paper's score
    (``score="size_intensity"``), which "takes into account both the size of the object ... and its
    intensity level within the cross attention heatmap"::

        score = intensity * size
        intensity = mean of the normalised heatmap over the instance's pixels   (in [0, 1])
        size = min(1, area / full_score_area)                                   (in [0, 1])

    where ``area`` is the instance's pixel count divided by ``H * W`` (``size = 1`` when
    ``full_score_area == 0``). Instances are returned by descending score.

Coordinates
    Polygons and boxes are normalised: ``x`` is divided by the image width ``W`` and ``y`` by the
    height ``H``. Polygon vertices are the contour's pixel indices divided by ``(W, H)``, so
    ``cv2.fillPoly`` of ``round(polygon * (W, H))`` redraws the blob; boxes follow FiftyOne's
    ``[x, y, w, h]`` convention (top-left corner and size, pixel edges), so a box covers pixels
    ``x*W <= col < (x+w)*W`` and its instance mask has shape ``(h*H, w*W)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import cv2
import fiftyone as fo
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..store.files import write_png

DAAM_FIELDS = ("daam_segmentation", "daam_polygons", "daam_detections")  # the labels (daam_params: how)
# Score features kept on each detection, so the review can say why a score is low.
REVIEW_FEATURES = ("share", "blob_share", "cut_kept", "core_share", "log_colour_step", "own_blob_share",
                   "own_core_share", "margin")

__all__ = [
    "DAAM_FIELDS",
    "DaamLabels",
    "Instance",
    "LabelParams",
    "WordLabels",
    "extract_labels",
    "guided_filter",
    "image_cores",
    "kernel_side",
    "label_heatmaps",
    "normalize_heatmap",
    "semantic_mask",
    "mask_name",
    "missing_words",
    "params_record",
    "to_fiftyone",
]

_Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class LabelParams(BaseModel):
    """Parameters of heatmap → labels; lives in the user's JSON config under ``"labels"``.

    Args:
        threshold: ``"otsu"`` for Otsu's automatic threshold, or a fixed threshold in ``(0, 1)``
            applied to the min-max normalised heatmap (foreground is ``value > threshold``).
        erode: Side of the (elliptical) erosion kernel as a fraction of ``min(H, W)``, in
            ``[0, 1)``; ``0`` disables the erosion. See :func:`kernel_side`.
        dilate: Side of the dilation kernel, same convention; applied after the erosion.
        min_area: Instances whose pixel area is below ``min_area * H * W`` are dropped.
        polygon_epsilon: ``cv2.approxPolyDP`` tolerance as a fraction of the contour's perimeter;
            ``0`` keeps the raw ``CHAIN_APPROX_SIMPLE`` contour.
        full_score_area: Area fraction of the image at which the size term of the paper's label score
            saturates to 1.
        score: ``"attention"``: how sure the label is, from the attention it was made of
            (:mod:`diffugen.labels.scoring`; heatmaps stored without their scale fall back to the
            next); ``"size_intensity"``: the paper's score (module docstring).
        resolve: A pixel belongs to at most one word's instance (:func:`label_heatmaps`).
        core: Each instance is cut to the core of its word's map (:func:`core_threshold`) once found
            and scored on the thresholded mask: the blurred maps make Otsu masks larger than their
            objects (on the toy world a wrong label covered its object whole at 0.43 precision).
        snap: Radius of the guided filter that snaps each instance to the image's edges
            (:func:`image_cores`), as a fraction of ``min(H, W)``; ``0`` disables it. It only removes
            pixels, and only where the image is known (generate, relabel). A window wider than the object
            (a quarter of the image) fits the map as a function of the object's colour against its
            surroundings, so an object of one colour gets one value across it; a narrow one only blurs the
            map inside the object, keeping its attention's off-centre peak as the core.
        grow: After the cuts, each instance grows over the pixels connected to it whose colour is within this CIE76
            ΔE of its median colour and which no other word's (or occurrence's) mask holds (:func:`grow_to_colour`);
            ``0`` disables it. The core cut keeps the peak of a word's map, which attention often puts off the
            object's centre or on part of a ring; the object's colour gives the rest back (on the toy world's
            training prompts the mean mask IoU 0.60 → 0.68; on a photo's attention-like maps 0.68 → 0.96).
        grow_limit: The growth is undone where it would make an instance more than this many times its area:
            its colour then runs on into the background or an unlabeled neighbour.
        max_area: Instances that still cover more than ``max_area * H * W`` after the cuts are dropped:
            the map of a word whose object was not drawn spreads over the background, which the cuts
            keep whole where it is one region. ``1`` keeps every instance (prompts of objects that fill
            the frame).
    """

    model_config = ConfigDict(extra="forbid")

    threshold: Literal["otsu"] | Annotated[float, Field(gt=0.0, lt=1.0)] = "otsu"
    erode: _Fraction = 0.01
    dilate: _Fraction = 0.02
    min_area: _Fraction = 0.001
    polygon_epsilon: _Fraction = 0.002
    full_score_area: _Fraction = 0.01
    score: Literal["attention", "size_intensity"] = "attention"
    resolve: bool = True
    core: bool = True
    snap: _Fraction = 0.25
    max_area: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    grow: Annotated[float, Field(ge=0.0)] = 20.0
    grow_limit: Annotated[float, Field(ge=1.0)] = 1.75

    @property
    def reads_image(self) -> bool:
        """Whether the labels are cut or grown to the image (``snap``, ``grow``), so a relabel reads it."""
        return self.snap > 0 or self.grow > 0


@dataclass
class Instance:
    """One labeled object instance (one external contour of a word's mask).

    Attributes:
        polygon: ``(N, 2)`` float64 array of ``(x, y)`` vertices normalised to ``[0, 1]`` by the
            image width and height, ``N >= 3``; closed implicitly (first point not repeated).
        box: ``(x, y, w, h)`` normalised box (top-left corner and size, FiftyOne convention),
            from ``cv2.boundingRect`` of the contour.
        mask: ``bool`` array of shape ``(h_px, w_px)``: the instance's pixels cropped to its
            pixel box (what ``fiftyone.Detection.mask`` expects).
        score: Label score in ``[0, 1]`` (see the module docstring).
        area: Instance pixel count divided by ``H * W``.
        features: What the attention score was computed from (:mod:`diffugen.labels.scoring`; empty
            for the paper's score).
    """

    polygon: np.ndarray
    box: tuple[float, float, float, float]
    mask: np.ndarray
    score: float
    area: float
    features: dict[str, float] = field(default_factory=dict)


@dataclass
class WordLabels:
    """Labels extracted from one word's heatmap.

    Attributes:
        mask: ``bool`` array of shape ``(H, W)``: the word's semantic mask after thresholding,
            morphology and ``min_area`` filtering (the union of the instances' masks).
        instances: The instances, by descending score.
        threshold: The threshold actually used, on the ``[0, 1]`` normalised scale.
    """

    mask: np.ndarray
    instances: list[Instance] = field(default_factory=list)
    threshold: float = 0.0


def normalize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalise a heatmap to ``[0, 1]``.

    Args:
        heatmap: ``(H, W)`` array of any real dtype (not necessarily normalised).

    Returns:
        ``(H, W)`` float32 array in ``[0, 1]`` (a new array). A constant map gives all zeros.
        Non-finite values (NaN, ±inf), if any, are ignored for the min/max and mapped to 0.

    Raises:
        ValueError: If ``heatmap`` is not two-dimensional.
    """
    a = np.asarray(heatmap)
    if a.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {a.shape}")
    if a.size == 0:
        return np.zeros(a.shape, np.float32)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    finite = None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = np.isfinite(a)
        if not finite.any():
            return np.zeros(a.shape, np.float32)
        lo, hi = a[finite].min(), a[finite].max()
    if not hi > lo:
        return np.zeros(a.shape, np.float32)
    # Work in float32 when the input is float32 and the range does not overflow; exact enough,
    # and (x - lo) <= (hi - lo) stays true after rounding, so the result is within [0, 1].
    work = np.float32 if a.dtype == np.float32 else np.float64
    lo, hi = work(lo), work(hi)
    span = hi - lo
    if not np.isfinite(span):
        work = np.float64
        lo, hi = np.float64(lo), np.float64(hi)
        span = hi - lo
    out = np.subtract(a, lo, dtype=work)
    np.divide(out, span, out=out)
    if finite is not None:
        out[~finite] = 0.0
    return out if out.dtype == np.float32 else out.astype(np.float32)


def kernel_side(frac: float, height: int, width: int) -> int:
    """Morphology kernel side in pixels for a fraction of the image size.

    Args:
        frac: Kernel side as a fraction of ``min(height, width)``; ``0`` means no operation.
        height: Image height ``H``.
        width: Image width ``W``.

    Returns:
        ``0`` when ``frac == 0``, else ``max(1, round(frac * min(H, W)))`` bumped up to the next
        odd integer (a centred kernel). A side of 1 is a no-op.
    """
    if frac <= 0:
        return 0
    side = max(1, int(round(frac * min(height, width))))
    return side if side % 2 else side + 1


def _morph(mask: np.ndarray, side: int, op: int) -> np.ndarray:
    if side <= 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    return cv2.morphologyEx(mask, op, kernel)


def word_mask(norm: np.ndarray, params: LabelParams) -> tuple[np.ndarray, float]:
    """Steps 2–3 on a normalised map: the thresholded, eroded and dilated ``uint8 {0, 1}`` mask ``(H, W)``
    and the threshold used (on the ``[0, 1]`` scale)."""
    height, width = norm.shape
    if params.threshold == "otsu":
        u8 = cv2.convertScaleAbs(norm, alpha=255.0)  # saturating round(255 * x)
        t, binary = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        thr = float(t) / 255.0
    else:
        thr = float(params.threshold)
        _, binary = cv2.threshold(norm, thr, 1.0, cv2.THRESH_BINARY)
        binary = binary.astype(np.uint8)
    binary = _morph(binary, kernel_side(params.erode, height, width), cv2.MORPH_ERODE)
    binary = _morph(binary, kernel_side(params.dilate, height, width), cv2.MORPH_DILATE)
    return binary, thr


def core_threshold(norm: np.ndarray) -> float | None:
    """The upper threshold of a three-class Otsu (:func:`skimage.filters.threshold_multiotsu`) of a
    normalised map, on the ``[0, 1]`` scale: a word's map holds the background, a halo that the
    attention's low resolution and the upsampling blur around each object, and the object; the core is
    the last class. ``None`` for a map of fewer than three levels."""
    from skimage.filters import threshold_multiotsu

    u8 = cv2.convertScaleAbs(norm, alpha=255.0)
    lo, hi = int(u8.min()), int(u8.max())
    counts = np.bincount(u8.ravel(), minlength=256)[lo : hi + 1]  # skimage's own histogram of an integer image
    if np.count_nonzero(counts) < 3:
        return None
    return float(threshold_multiotsu(classes=3, hist=(counts, np.arange(lo, hi + 1)))[-1]) / 255.0


def guided_filter(guide: np.ndarray, srcs: Sequence[np.ndarray], radius: int, eps: float = 1e-3,
                  scale: int = 1) -> list[np.ndarray]:
    """He, Sun and Tang's guided filter (ECCV 2010) of each of ``srcs`` with a colour ``guide``: in every
    ``(2r + 1)²`` window the output is the linear function of the guide's colour closest to the source, so a
    blurred map takes the edges of the image. With ``scale > 1``, the fast guided filter (He and Sun 2015): the
    window fits are made on a grid ``scale`` times coarser and upsampled. The guide's statistics are computed
    once for all sources. (OpenCV's ``ximgproc.guidedFilter`` is in opencv-contrib, which cannot be installed
    beside the opencv-python that ultralytics pins.)

    Args:
        guide: ``(H, W, 3)`` float32 in ``[0, 1]``.
        srcs: ``(H, W)`` float32 maps.
        radius: window radius ``r`` in pixels of the image.
        eps: regularisation of the per-window fit, in squared guide units.
        scale: subsampling of the fits.

    Returns:
        One ``(H, W)`` float32 map per source.
    """
    height, width = guide.shape[:2]
    small = (max(1, width // scale), max(1, height // scale))
    r = max(1, int(round(radius / scale)))

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)

    def down(x: np.ndarray) -> np.ndarray:
        return x if scale == 1 else cv2.resize(x, small, interpolation=cv2.INTER_AREA)

    g = down(guide)
    mean_i = box(g)  # (h, w, 3)
    outer = (g[..., :, None] * g[..., None, :]).reshape(*g.shape[:2], 9)
    var_i = box(outer).reshape(*g.shape[:2], 3, 3) - mean_i[..., :, None] * mean_i[..., None, :]
    inv = np.linalg.inv(var_i + np.float32(eps) * np.eye(3, dtype=np.float32))
    out = []
    for src in srcs:
        p = down(np.asarray(src, np.float32))
        mean_p = box(p)
        cov_ip = box(g * p[..., None]) - mean_i * mean_p[..., None]
        a = np.einsum("...ij,...j->...i", inv, cov_ip)
        b = mean_p - (a * mean_i).sum(-1)
        a, b = box(a), box(b)
        if scale > 1:
            a = cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)
            b = cv2.resize(b, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append((a * guide).sum(-1) + b)
    return out


def image_cores(image: np.ndarray, word_heat: dict[str, np.ndarray], radius: float,
                resolve: bool = True) -> dict[str, np.ndarray]:
    """Per word, the ``bool (H, W)`` pixels of the image that its map, snapped to the image's edges, holds as
    its object: the guided filter (:func:`guided_filter`, radius ``radius * min(H, W)``) of the map with the
    image as guide, then its core (:func:`core_threshold`); with ``resolve``, a pixel in the cores of several words
    goes to the one whose filtered map is the highest there. Only those are compared: a word whose attention has a
    higher floor everywhere must not take an object that no other word's core holds. ``word_heat``: each word's
    map, all in one unit (compared when resolved).

    The attention maps are aggregated on a grid 8–16 times coarser than the image, so their edges fall
    between the object's and the halo's; the filter moves them onto the edges of the object's colours.
    """
    height, width = image.shape[:2]
    guide = image.astype(np.float32) / 255.0
    side = min(height, width)
    # The fits on a grid of ~64 px on its short side: the maps hold no finer detail than the attention's grid.
    fits = guided_filter(guide, list(word_heat.values()), max(1, int(round(radius * side))), scale=max(1, side // 64))
    filtered = dict(zip(word_heat, fits))
    cores = {}
    for w, f in filtered.items():
        norm = normalize_heatmap(f)
        t = core_threshold(norm)
        cores[w] = norm > (t if t is not None else 0.5)
    if resolve and len(filtered) > 1:
        owner = np.where(np.stack(list(cores.values())), np.stack(list(filtered.values())), -np.inf).argmax(0)
        cores = {w: c & (owner == i) for i, (w, c) in enumerate(cores.items())}
    return cores


def cut_to_core(inst: Instance, core: np.ndarray, norm: np.ndarray, params: LabelParams) -> Instance:
    """``inst`` cut to its largest piece inside the ``bool (H, W)`` ``core`` (an instance stays one connected
    region, one polygon), keeping its score and features; unchanged when no piece of at least ``min_area``
    is left."""
    inside = (instance_mask(inst, core.shape) & core).astype(np.uint8)
    return _largest_piece(inst, inside, norm, params)


def _largest_piece(inst: Instance, binary: np.ndarray, norm: np.ndarray, params: LabelParams) -> Instance:
    """The largest instance of the ``uint8 (H, W)`` mask ``binary`` with ``inst``'s score and features (an instance
    stays one connected region); ``inst`` when no piece of at least ``min_area`` is there."""
    _, pieces = mask_instances(binary, norm, params)
    if not pieces:
        return inst
    return replace(max(pieces, key=lambda p: p.area), score=inst.score, features=inst.features)


def grow_to_colour(inst: Instance, image: np.ndarray, allowed: np.ndarray, norm: np.ndarray,
                   params: LabelParams) -> Instance:
    """``inst`` grown over the pixels of ``allowed`` connected to it whose colour is within ``params.grow`` of its
    median colour (CIE76 ΔE in CIELAB; ``image``: ``(H, W, 3)`` uint8 RGB), keeping its score and features; unchanged
    when that would make it more than ``params.grow_limit`` times its area: its colour is then its surroundings', not
    an object's. Read on the instance's box widened by its own size on each side: a growth reaching further than that
    passes the limit in all but thin shapes, and the cost stays the box's, not the image's."""
    height, width = image.shape[:2]
    x, y, w, h = (round(v * s) for v, s in zip(inst.box, (width, height, width, height)))
    y0, y1, x0, x1 = max(0, y - h), min(height, y + 2 * h + 1), max(0, x - w), min(width, x + 2 * w + 1)
    seed = np.zeros((y1 - y0, x1 - x0), bool)
    mh, mw = inst.mask.shape
    seed[y - y0 : y - y0 + mh, x - x0 : x - x0 + mw] = inst.mask
    lab = cv2.cvtColor(image[y0:y1, x0:x1].astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    diff = lab - np.median(lab[seed], axis=0)
    near = ((np.einsum("ijk,ijk->ij", diff, diff) < params.grow**2) & allowed[y0:y1, x0:x1]) | seed
    _, comp = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
    ids = np.unique(comp[seed])
    grown_crop = np.isin(comp, ids[ids > 0])
    if np.count_nonzero(grown_crop) > params.grow_limit * np.count_nonzero(seed):
        return inst
    grown = np.zeros((height, width), np.uint8)
    grown[y0:y1, x0:x1] = grown_crop
    return _largest_piece(inst, grown, norm, params)


def mask_instances(binary: np.ndarray, norm: np.ndarray, params: LabelParams) -> tuple[np.ndarray, list[Instance]]:
    """Steps 4–5: the instances of a ``uint8 {0, 1}`` mask ``(H, W)`` (scored by size and intensity of
    ``norm``, by descending score) and their union (a ``bool`` mask without the dropped small blobs)."""
    height, width = binary.shape
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    total = float(height * width)
    min_px = params.min_area * total
    scale = np.array([width, height], np.float64)
    out_mask = np.zeros((height, width), bool)
    instances: list[Instance] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if w * h < min_px:  # the pixel area can't exceed the box area
            continue
        fill = np.zeros((h, w), np.uint8)
        cv2.drawContours(fill, [contour], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        crop = cv2.bitwise_and(fill, binary[y : y + h, x : x + w])
        n_px = cv2.countNonZero(crop)
        if n_px == 0 or n_px < min_px:
            continue
        intensity = cv2.mean(norm[y : y + h, x : x + w], mask=crop)[0]
        area = n_px / total
        size = 1.0 if params.full_score_area <= 0 else min(1.0, area / params.full_score_area)
        score = min(1.0, max(0.0, float(intensity) * size))

        pts = contour
        if params.polygon_epsilon > 0:
            approx = cv2.approxPolyDP(contour, params.polygon_epsilon * cv2.arcLength(contour, True), True)
            if len(approx) >= 3:
                pts = approx
        pts = pts.reshape(-1, 2)
        if len(pts) < 3:  # a 1-pixel-wide blob: fall back to its pixel box
            pts = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]])
        polygon = pts.astype(np.float64) / scale

        mask_crop = crop.astype(bool)
        out_mask[y : y + h, x : x + w] |= mask_crop
        instances.append(
            Instance(polygon=polygon, box=(x / width, y / height, w / width, h / height), mask=mask_crop,
                     score=score, area=area)
        )
    instances.sort(key=lambda inst: inst.score, reverse=True)
    return out_mask, instances


def extract_labels(heatmap: np.ndarray, params: LabelParams | None = None) -> WordLabels:
    """Extract the semantic mask and the instances of one word from its heatmap, scored by size and
    intensity (the paper's score; :func:`label_heatmaps` scores a prompt's words against each other).

    Args:
        heatmap: ``(H, W)`` real-valued cross-attention heatmap (not necessarily normalised).
        params: Labeling parameters; defaults to ``LabelParams()``.

    Returns:
        :class:`WordLabels` with a ``bool (H, W)`` mask and the instances by descending score.
        A map without any blob (empty, flat, or all below the threshold) gives an all-False mask
        and no instances; this never raises for 2-D input.

    Raises:
        ValueError: If ``heatmap`` is not two-dimensional.
    """
    p = params if params is not None else LabelParams()
    norm = normalize_heatmap(heatmap)
    if norm.size == 0:
        thr = p.threshold if isinstance(p.threshold, float) else 0.0
        return WordLabels(mask=np.zeros(norm.shape, bool), instances=[], threshold=thr)
    binary, thr = word_mask(norm, p)
    mask, instances = mask_instances(binary, norm, p)
    return WordLabels(mask=mask, instances=instances, threshold=thr)


def semantic_mask(
    word_labels: Sequence[WordLabels],
    class_ids: Sequence[int],
    shape: tuple[int, int],
    heatmaps: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Combine several words' masks into one class-index mask.

    Overlaps: without ``heatmaps``, later entries win. With ``heatmaps`` (one ``(H, W)`` map per
    word, in the same order), an overlapping pixel goes to the word with the larger *normalised*
    heat (:func:`normalize_heatmap`) at that pixel; ties go to the later entry.

    Args:
        word_labels: One :class:`WordLabels` per word, each with a ``bool (H, W)`` mask.
        class_ids: Class index of each word, in ``[1, 255]`` (0 is background).
        shape: ``(H, W)`` of the output.
        heatmaps: Optional raw heatmaps, ``(H, W)`` each, to resolve overlaps.

    Returns:
        ``uint8`` array of shape ``(H, W)`` with the class index per pixel, 0 for background.

    Raises:
        ValueError: On mismatched lengths or shapes, or a class id outside ``[1, 255]``.
    """
    shape = (int(shape[0]), int(shape[1]))
    if len(word_labels) != len(class_ids):
        raise ValueError(f"{len(word_labels)} word labels but {len(class_ids)} class ids")
    if heatmaps is not None and len(heatmaps) != len(word_labels):
        raise ValueError(f"{len(word_labels)} word labels but {len(heatmaps)} heatmaps")
    out = np.zeros(shape, np.uint8)
    best = np.full(shape, -1.0, np.float32) if heatmaps is not None else None
    for i, (wl, cid) in enumerate(zip(word_labels, class_ids)):
        cid = int(cid)
        if not 1 <= cid <= 255:
            raise ValueError(f"class id must be in [1, 255], got {cid}")
        mask = np.asarray(wl.mask, bool)
        if mask.shape != shape:
            raise ValueError(f"word {i}: mask shape {mask.shape} != {shape}")
        if best is None:
            out[mask] = cid
            continue
        heat = normalize_heatmap(heatmaps[i])  # type: ignore[index]
        if heat.shape != shape:
            raise ValueError(f"word {i}: heatmap shape {heat.shape} != {shape}")
        sel = mask & (heat >= best)
        out[sel] = cid
        best[sel] = heat[sel]
    return out


# ---- as FiftyOne labels --------------------------------------------------------------------------
@dataclass
class DaamLabels:
    """Unsupervised labels of one image, before they become FiftyOne labels."""

    words: list[str]
    classes: list[str]
    word_labels: list[WordLabels]
    mask: np.ndarray  # uint8 (H, W), class id per pixel (index in the dataset's classes + 1)


def label_heatmaps(word_maps: Sequence[np.ndarray], words: Sequence[str], classes: Sequence[str],
                   class_ids: dict[str, int], params: LabelParams,
                   ranges: Sequence[tuple[float, float]] | None = None, image: np.ndarray | None = None,
                   attention: str = "cross") -> DaamLabels:
    """The labels of one image from its class words' heatmaps (the one labeling path: generate and relabel).

    1. Each word's mask (:func:`word_mask`: threshold, erosion, dilation) of the mean of its occurrences'
       maps.
    2. With ``params.resolve``, the words are resolved against each other: a pixel in several masks stays
       only in the mask of the word with the most attention there (compared in units of attention when
       ``ranges`` are known, else normalised), so two words' instances never cover the same object.
    3. A word said more than once ("a red circle and a yellow circle") splits its mask between its
       occurrences, each pixel to the occurrence whose map has the most attention there: each
       occurrence's token attends to its own object, so each gets its own instances.
    4. The instances of each occurrence's mask (:func:`mask_instances`).
    5. Scores: with ``params.score == "attention"`` and ``ranges``, :mod:`.scoring`'s score (made at step 10);
       otherwise the paper's size × intensity.
    6. With ``params.core``, each instance is cut to the core of its word's map (:func:`cut_to_core`).
    7. With ``params.snap`` and the ``image``, each instance is cut to its largest piece inside its word's
       map snapped to the image's edges (:func:`image_cores`). Like step 6 it only removes pixels.
    8. With ``params.grow`` and the ``image``, each instance grows back over the rest of its object's colour
       (:func:`grow_to_colour`), short of the other maps' masks (step 3) and of every other instance.
    9. Instances larger than ``params.max_area`` of the image are dropped: a word's map spread over the
       background, not an object.
    10. The attention score of each instance: the features of its blob as found (step 4), of what steps
       6–8 left of it, and of how that stands out of the image (:func:`~.scoring.cut_features`); for a word
       said more than once, also against its occurrence's part of the image (step 3); and how far its word's map,
       each map scaled to its own peak, stands above the other words' there (:func:`~.scoring.rival_margin`).

    Args:
        word_maps: uint8 ``(H, W)`` per map (one per occurrence of a class word), min-max normalised.
        words, classes: the word and dataset class of each map.
        ranges: each map's ``(floor, peak)`` in units of attention (the stored heatmaps' ``floor`` and
            ``peak``); ``None`` for heatmaps stored without them.
        image: ``(H, W, 3)`` uint8 RGB, the image the maps are of (``None``: steps 7 and 8 are skipped).
        attention: what made the maps, ``"cross"`` (a UNet) or ``"joint"`` (SD3, FLUX): which fitted weights score
            them (:func:`~.scoring.attention_score`).
    """
    from . import scoring

    if not word_maps:
        return DaamLabels(list(words), list(classes), [], np.zeros((1, 1), np.uint8))
    norms = [m.astype(np.float32) / 255.0 for m in word_maps]
    raws = scoring.raw_maps(norms, ranges) if ranges is not None else None
    heat = raws if raws is not None else norms  # what maps are compared on
    groups = {w: [k for k, v in enumerate(words) if v == w] for w in dict.fromkeys(words)}
    # 1. One mask per word, from the mean of its occurrences' maps (daam's word heatmap).
    word_heat = {w: heat[ks[0]] if len(ks) == 1 else np.mean([heat[k] for k in ks], axis=0) for w, ks in groups.items()}
    word_norm = {w: norms[ks[0]] if len(ks) == 1 else normalize_heatmap(word_heat[w]) for w, ks in groups.items()}
    word_masks = {w: word_mask(word_norm[w], params) for w in groups}
    before = {w: m.astype(bool) for w, (m, _) in word_masks.items()}
    # 2. Words resolved against each other.
    resolved = dict(before)
    if params.resolve and len(groups) > 1:
        owner = np.where(np.stack(list(before.values())), np.stack(list(word_heat.values())), -np.inf).argmax(0)
        resolved = {w: m & (owner == i) for i, (w, m) in enumerate(before.items())}
    # 3. A word's occurrences split its mask: "a red circle and a yellow circle" makes two instances.
    masks: list[np.ndarray] = [np.zeros(0)] * len(word_maps)
    parts: list[np.ndarray | None] = [None] * len(word_maps)  # bool (H, W): a repeated word's occurrence's pixels
    for w, ks in groups.items():
        occurrence = np.stack([heat[k] for k in ks]).argmax(0) if len(ks) > 1 else np.zeros(resolved[w].shape, int)
        for i, k in enumerate(ks):
            part = occurrence == i
            parts[k] = part if len(ks) > 1 else None
            masks[k] = (resolved[w] & part).astype(np.uint8)
    word_labels = []
    for k, (m, n) in enumerate(zip(masks, norms)):
        union, instances = mask_instances(m, n, params)
        word_labels.append(WordLabels(mask=union, instances=instances, threshold=word_masks[words[k]][1]))
    by_attention = params.score == "attention" and raws is not None
    if by_attention:  # what each blob as found says of itself; scored after the cuts (10.)
        total = np.sum(raws, axis=0)
        for k, (wl, raw, (lo, _)) in enumerate(zip(word_labels, raws, ranges)):
            for inst in wl.instances:
                inst.features = scoring.instance_features(raw, total, before[words[k]], instance_mask(inst, raw.shape), lo,
                                                          parts[k])
    # 6. Each instance cut to the core of its word's map (found on the coarser mask above).
    cores: list[dict[str, np.ndarray]] = []
    if params.core:
        cores.append({w: word_norm[w] > t for w in groups if (t := core_threshold(word_norm[w])) is not None})
    # 7. ... and to its word's map snapped to the image's edges.
    if params.snap > 0 and image is not None:
        cores.append(image_cores(image, word_heat, params.snap, params.resolve))
    for core in cores:
        for k, wl in enumerate(word_labels):
            if words[k] in core:
                wl.instances = [cut_to_core(inst, core[words[k]], norms[k], params) for inst in wl.instances]
    # 8. Each instance grown back over the rest of its object's colour, short of the other maps' masks and of
    #    every other instance (a ring cut in two stays two labels, not two copies of one).
    if params.grow > 0 and image is not None:
        claimed = np.sum(masks, axis=0)
        taken = np.zeros(claimed.shape, bool)
        for wl in word_labels:
            for inst in wl.instances:
                taken |= instance_mask(inst, taken.shape)
        for k, wl in enumerate(word_labels):
            free = claimed - masks[k] == 0  # outside the other maps' masks
            grown = []
            for inst in wl.instances:
                grown.append(grow_to_colour(inst, image, free & ~taken, norms[k], params))
                taken |= instance_mask(grown[-1], taken.shape)
            wl.instances = grown
    # 9. The background is not an object.
    for wl in word_labels:
        wl.instances = [inst for inst in wl.instances if inst.area <= params.max_area]
        wl.mask = np.zeros_like(wl.mask)
        for inst in wl.instances:
            wl.mask |= instance_mask(inst, wl.mask.shape)
    # 10. The attention score, from the blob as found and what the cuts left of it.
    if by_attention:
        last = dict(resolved)  # each word's pixels as the cuts end: its last core, else its resolved mask
        for core in cores:
            last.update(core)
        lab = scoring.image_lab(image) if image is not None else None
        for k, wl in enumerate(word_labels):
            rivals = [word_norm[v] for v in groups if v != words[k]]
            for inst in wl.instances:
                m = instance_mask(inst, wl.mask.shape)
                inst.features = {**inst.features,
                                 **scoring.cut_features(inst.features, inst.area, m, last[words[k]], lab, parts[k]),
                                 "margin": scoring.rival_margin(word_norm[words[k]], rivals, m)}
                inst.score = scoring.attention_score(inst.features, attention=attention)
            wl.instances.sort(key=lambda inst: inst.score, reverse=True)
    mask = semantic_mask(word_labels, [class_ids[c] for c in classes], word_maps[0].shape, heatmaps=list(word_maps))
    return DaamLabels(list(words), list(classes), word_labels, mask)


def instance_mask(inst: Instance, shape: tuple[int, int]) -> np.ndarray:
    """An instance's pixels as a ``bool`` mask of the image's ``shape`` ``(H, W)``."""
    height, width = shape
    out = np.zeros(shape, bool)
    x, y = int(round(inst.box[0] * width)), int(round(inst.box[1] * height))
    h, w = inst.mask.shape
    out[y : y + h, x : x + w] = inst.mask
    return out


def to_fiftyone(labels: DaamLabels, mask_path: Path, params: LabelParams | None = None) -> dict[str, fo.Label]:
    """FiftyOne labels of :class:`DaamLabels`; writes the semantic mask to ``mask_path``.

    With ``params``, also ``daam_params``: the parameters these labels were made with, kept on each
    sample (a relabel of some samples, or a run that starts during a relabel, never leaves the
    dataset claiming parameters that some of its labels were not made with).
    """
    polylines, detections = [], []
    for word, cls, wl in zip(labels.words, labels.classes, labels.word_labels):
        for inst in wl.instances:
            score = float(inst.score)
            polylines.append(
                fo.Polyline(label=cls, points=[inst.polygon.tolist()], closed=True, filled=True, confidence=score, word=word)
            )
            why = {k: round(inst.features[k], 4) for k in REVIEW_FEATURES if k in inst.features}
            detections.append(
                fo.Detection(label=cls, bounding_box=list(map(float, inst.box)), mask=inst.mask, confidence=score,
                             word=word, area=float(inst.area), **why)
            )
    write_png(mask_path, labels.mask)
    fields: dict[str, fo.Label] = {
        "daam_segmentation": fo.Segmentation(mask_path=str(mask_path)),
        "daam_polygons": fo.Polylines(polylines=polylines),
        "daam_detections": fo.Detections(detections=detections),
    }
    if params is not None:
        fields["daam_params"] = params_record(params)
    return fields


def missing_words(labels: DaamLabels, words: Sequence[str], doubtful: float) -> list[str]:
    """The class words of a prompt with no DAAM label scored at least ``doubtful``, in prompt order:
    what a reviewer filters on ("the prompt asked for a triangle, none was labeled"). ``words``
    are all the prompt's class words, those without a heatmap (cut from a long prompt) included."""
    sure = {w for w, wl in zip(labels.words, labels.word_labels) if any(i.score >= doubtful for i in wl.instances)}
    return [w for w in words if w not in sure]


def params_record(params: LabelParams) -> fo.DynamicEmbeddedDocument:
    """The sample field ``daam_params`` (``threshold`` as text, ``"otsu"`` or ``"0.5"``: one type per field)."""
    values = params.model_dump(mode="json")
    values["threshold"] = str(values["threshold"])
    return fo.DynamicEmbeddedDocument(**values)


def mask_name(stem: str, mask: np.ndarray) -> str:
    """A content-addressed mask file name, ``<stem>.<digest>.png``: a relabeled mask never overwrites
    a file that another sample (a clone's) may still point at."""
    digest = hashlib.sha1(np.ascontiguousarray(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:12]
    return f"{stem}.{digest}.png"
