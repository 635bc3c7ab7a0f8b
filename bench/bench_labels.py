"""Throughput of unsupervised label extraction (heatmap → mask, polygons, boxes, scores).

Usage::

    python bench/bench_labels.py [--n 500] [--size 512] [--seed 0]

Builds ``n`` seeded synthetic ``size x size`` float32 heatmaps (a few Gaussian blobs plus noise),
pins OpenCV to one thread, warms up, then times :func:`extract_labels` over all of them with the
default :class:`LabelParams`. Target: >= 200 images/s at 512x512 on one core.

Then the product's path, :func:`label_heatmaps` of each map as the runner stores it (uint8, with its
floor and peak: the attention score, and an image of it: the map's blobs in one colour on a ground of
another), with the defaults (the core cut, the snap to the image and the growth back over the object's colour),
without the growth, the core cut alone, and none of them, in alternate passes over the same maps (3 each), so each
step's cost shows as a ratio measured in one run.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from diffugen.labels.daam import LabelParams, extract_labels, label_heatmaps

TARGET = 200.0


def make_heatmaps(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` float32 ``(size, size)`` maps with 1-4 Gaussian blobs of random place/size/peak + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    maps = []
    for _ in range(n):
        m = rng.random((size, size), dtype=np.float32) * 0.1
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0.1, 0.9, 2) * size
            sigma = rng.uniform(0.03, 0.12) * size
            peak = rng.uniform(0.4, 1.0)
            m += peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        maps.append(m * 0.02)  # raw attention-like scale, not normalised
    return maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="number of heatmaps")
    ap.add_argument("--size", type=int, default=512, help="heatmap side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cv2.setNumThreads(1)
    params = LabelParams()
    maps = make_heatmaps(args.n, args.size, args.seed)
    for m in maps[: min(20, len(maps))]:  # warm-up
        extract_labels(m, params)

    n_inst = 0
    t0 = time.perf_counter()
    for m in maps:
        n_inst += len(extract_labels(m, params).instances)
    dt = time.perf_counter() - t0

    rate = len(maps) / dt
    print(
        f"label extraction {args.size}x{args.size}: {len(maps)} images in {dt:.3f} s = "
        f"{rate:.0f} images/s (1 core, cv2 threads={cv2.getNumThreads()}); "
        f"{n_inst / len(maps):.2f} instances/image; target >= {TARGET:.0f}/s: "
        f"{'PASS' if rate >= TARGET else 'FAIL'}"
    )

    stored = []
    rng = np.random.default_rng(args.seed)
    for m in maps:
        lo, hi = float(m.min()), float(m.max())
        u8 = np.round((m - lo) / (hi - lo) * 255).astype(np.uint8)
        # An image of the map for the snap: ground of one colour, the blobs in another, a little noise.
        ground, blob = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        image = np.where((u8 > 128)[..., None], blob, ground) + rng.normal(0, 8, (*u8.shape, 3))
        stored.append((u8, (lo, hi), np.clip(image, 0, 255).astype(np.uint8)))
    modes = {"core + snap + grow (the defaults)": LabelParams(), "core + snap": LabelParams(grow=0),
             "core": LabelParams(snap=0, grow=0), "neither": LabelParams(core=False, snap=0, grow=0)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(3):
        for name, p in modes.items():
            t0 = time.perf_counter()
            for u8, r, image in stored:
                label_heatmaps([u8], ["object"], ["object"], {"object": 1}, p, [r], image)
            times[name].append(time.perf_counter() - t0)
    rates = {m: len(maps) / min(t) for m, t in times.items()}
    print(f"label_heatmaps (attention score) {args.size}x{args.size}, images/s (best of 3 alternate passes): "
          + ", ".join(f"{m} {r:.0f}" for m, r in rates.items())
          + "; time over neither: " + ", ".join(f"{m} {rates['neither'] / r:.2f}x" for m, r in rates.items()
                                                  if m != "neither"))


if __name__ == "__main__":
    main()
