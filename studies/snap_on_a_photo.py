"""The core cut, the snap and the growth on a real photograph: scikit-image's coins, with attention-like maps made from them.

Usage (from the repository root, virtualenv active)::

    python -m studies.snap_on_a_photo

The toy world is flat colours, so what the snap to the image (``labels.snap``) does there may not hold on a
photograph. This takes one: ``skimage.data.coins()``, 24 embossed coins on a textured ground. Each coin's
truth comes from scikit-image's own tutorial segmentation: Sobel elevation, markers below 30 and above 150,
watershed, holes filled. Its map is made the way attention maps are: the coin's mask averaged onto a grid
16 (or 8) times coarser than the image, plus a twentieth of every coin's, then upsampled bicubically. Each
map is labeled five ways, by :func:`~diffugen.labels.daam.label_heatmaps` with the photo as the image:
Otsu's blob as found, the core cut, the snap, both, and both followed by the growth back over the coin's
colour (``labels.grow``; the defaults). The script prints the mean IoU of each with the coin, and on how many
coins the snap and the growth helped or hurt.

These maps are centred blurs of their objects. Real attention maps are not known to be, so this is a check
of the cuts on real pixels, not a measurement of real labels; a real model's maps settle it.
"""

from __future__ import annotations

import cv2
import numpy as np


def coins_truth() -> tuple[np.ndarray, np.ndarray]:
    """The coins photo ``(H, W)`` uint8 and its coins' labels ``(H, W)`` int (0: ground), as scikit-image's
    tutorial segments them."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, morphology, segmentation

    image = data.coins()
    markers = np.zeros_like(image)
    markers[image < 30], markers[image > 150] = 1, 2
    coins = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(image), markers) == 2)
    return image, measure.label(morphology.remove_small_objects(coins, max_size=50))


def coarse_map(mask: np.ndarray, grid: int) -> np.ndarray:
    """``mask`` as an attention-like map: averaged onto a grid ``grid`` times coarser, upsampled bicubically."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (w // grid, h // grid), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, None)


def main() -> int:
    from diffugen.labels.daam import LabelParams, instance_mask, label_heatmaps

    image, labels = coins_truth()
    rgb = np.repeat(image[..., None], 3, -1)
    variants = {"Otsu blob": LabelParams(core=False, snap=0, grow=0), "core cut": LabelParams(snap=0, grow=0),
                "snap": LabelParams(core=False, grow=0), "core cut + snap": LabelParams(grow=0),
                "core cut + snap + growth (the defaults)": LabelParams()}
    for grid in (16, 8):
        everything = coarse_map(labels > 0, grid)
        ious = {name: [] for name in variants}
        for k in range(1, labels.max() + 1):
            truth = labels == k
            heat = coarse_map(truth, grid) + 0.05 * everything
            lo, hi = float(heat.min()), float(heat.max())
            u8 = np.round((heat - lo) / (hi - lo) * 255).astype(np.uint8)
            for name, params in variants.items():
                out = label_heatmaps([u8], ["coin"], ["coin"], {"coin": 1}, params, [(lo, hi)], rgb)
                mask = instance_mask(out.word_labels[0].instances[0], truth.shape)
                ious[name].append(float((mask & truth).sum() / (mask | truth).sum()))
        print(f"maps on a grid 1/{grid} of the image, {labels.max()} coins: mean IoU "
              + ", ".join(f"{name} {np.mean(v):.3f}" for name, v in ious.items()))
        for step, base, after in (("the snap", "Otsu blob", "snap"), ("the snap", "core cut", "core cut + snap"),
                                  ("the growth", "core cut + snap", "core cut + snap + growth (the defaults)")):
            a, b = np.array(ious[base]), np.array(ious[after])
            print(f"  {step} after the {base}: better on {int((b > a).sum())} coins, worse on {int((b < a).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
