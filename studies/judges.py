"""The textual-inversion study's shape judges: which toy-world object a generated image holds, when its
colours drift off the palette (a ring that shades into orange, a hole tinted by the body's colour).

Built on blind audit 1 and checked on audit 2 (``data/ti_ring_eye_audit.json``); see REPORT.md.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from diffugen.toyworld.scene import ALL_LABELS, MIN_BACKGROUND_DISTANCE
from diffugen.toyworld.truth import _base_kind, classify_shape


def stands_out(image: np.ndarray, distance: float = MIN_BACKGROUND_DISTANCE) -> np.ndarray:
    """``(H, W)`` bool: the pixels farther than ``distance`` (sRGB) from the background, taken to be the
    median colour of the image border; for generated images, whose colours drift off the references."""
    px = np.asarray(image, np.float32)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    return np.linalg.norm(px - np.median(border, axis=0), axis=-1) > distance


def object_by_contrast(image: np.ndarray, seed: np.ndarray, distance: float = MIN_BACKGROUND_DISTANCE,
                       body_tolerance: float = 80.0) -> np.ndarray | None:
    """The object that ``seed`` (a bool mask, e.g. a colour blob of :func:`recover_instances`) belongs to, by
    contrast rather than by palette: for generated objects whose colour drifts off the palette.

    The object is the region of pixels that stand out from the background (:func:`stands_out`) that
    overlaps ``seed`` most, with its holes filled; its **body** is the largest
    part of it within ``body_tolerance`` of the colour of its middle band (distance from the edge 15–45%
    of the deepest: the body of a ring, not its hole; the inside of a solid shape) that stands out from the
    background. A hole whose pixels are tinted, not background, is thus still a hole, and a body that
    shades from yellow into orange stays one blob. ``None`` when nothing overlapping ``seed`` stands out
    from the background.
    """
    px = np.asarray(image, np.float32)
    far = stands_out(px, distance)
    n, labels, _, _ = cv2.connectedComponentsWithStats(far.astype(np.uint8), connectivity=8)
    overlap = np.bincount(labels[seed], minlength=n)
    overlap[0] = 0
    if overlap.max() == 0:
        return None
    filled = ndimage.binary_fill_holes(labels == int(overlap.argmax()))
    depth = cv2.distanceTransform(np.pad(filled.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    band = (depth >= 0.15 * depth.max()) & (depth <= 0.45 * depth.max())
    if band.sum() < 5:
        return filled
    body = far & filled & (np.linalg.norm(px - np.median(px[band], axis=0), axis=-1) <= body_tolerance)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(body.astype(np.uint8), connectivity=8)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if n > 1 else filled


def classify_with_holes(mask: np.ndarray, shapes: tuple[str, ...], round_holes: bool = False,
                        min_hole: float = 0.05) -> str:
    """:func:`classify_shape`, but a blob whose outline is a solid kind and that encloses holes of at least
    ``min_hole`` of its filled area is that kind's hollow one (a circle: a ``"ring"``), if in ``shapes``.

    The template match alone wants a hole near the world's size (:data:`HOLE`); generated rings often
    have smaller ones. The outline is the filled blob classified among the solid kinds of ``shapes``.
    """
    kind = classify_shape(mask, shapes, round_holes)
    filled = ndimage.binary_fill_holes(mask)
    if kind.startswith("hollow ") or kind == "ring" or not filled.any():
        return kind
    if (filled.sum() - mask.sum()) / filled.sum() < min_hole:
        return kind
    solid = tuple(k for k in shapes if not k.startswith("hollow ") and k != "ring")
    outline = classify_shape(filled, solid, round_holes)
    hollow = "ring" if _base_kind(outline) == "circle" else f"hollow {_base_kind(outline)}"
    return hollow if hollow in shapes else kind


def judged_kinds(model: str, target: str | None = None) -> tuple[tuple[str, ...], bool]:
    """The kinds a blob is judged among, and whether holes are round: those of the model's world
    (:func:`diffugen.toyworld.load_world`: the shapes a fine-tune added, and their hollow kinds), and
    ``target`` (the shape a proof asks for: a ``"house"`` the world lacks)."""
    from diffugen.toyworld import load_world

    world = load_world(None if model == "builtin:toyworld" else model)
    more = list(world.get("shapes", ())) + [f"hollow {s}" for s in world.get("hollow_shapes", ())]
    more += [target] if target else []
    return ALL_LABELS + tuple(k for k in dict.fromkeys(more) if k not in ALL_LABELS), bool(world.get("round_holes"))


def foreground(image: np.ndarray, distance: float = MIN_BACKGROUND_DISTANCE) -> np.ndarray:
    """The largest blob of pixels that stand out from the background (:func:`stands_out`), for
    :mod:`studies.ceiling`.

    Not by palette colour as the other judges start: conditioning without a colour word draws
    objects in several palette colours at once, which colour segmentation splits into pieces.
    """
    far = cv2.morphologyEx(stands_out(image, distance).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(far, connectivity=8)
    if n < 2:
        return np.zeros(far.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
