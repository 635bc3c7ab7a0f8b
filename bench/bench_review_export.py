"""Throughput of review curation and export on a synthetic dataset (no generation).

Usage::

    python bench/bench_review_export.py [--n 10000] [--formats yolo,coco,masks] [--keep]

Builds ``n`` samples (a 64x96 PNG each, ``metadata`` set, 1-3 ``daam_detections`` with instance
masks and scores, some labels tagged ``approved``/``rejected``), in a private database, media in a
temporary folder, then times :func:`diffugen.curation.review.build_review_queue`,
:func:`diffugen.curation.review.apply_review` and :func:`diffugen.curation.export.export_dataset` (one run each,
the dataset being warm). Target: >= 500 samples/s for apply_review and for each export format.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _common import private_database

private_database()
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

import fiftyone as fo  # noqa: E402

from diffugen.curation.export import export_dataset  # noqa: E402
from diffugen.curation.review import APPROVED, REJECTED, apply_review, build_review_queue  # noqa: E402

TARGET = 500.0
W, H = 96, 64


def build(n: int, folder: Path, seed: int = 0) -> fo.Dataset:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["car", "bus"]
    ds = fo.Dataset(f"bench-review-{os.getpid()}")
    ds.mask_targets = {"daam_segmentation": {1: "car", 2: "bus"}}
    ds.save()
    samples = []
    for i in range(n):
        path = folder / f"{i:06d}.png"
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        dets = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(8, 40)), int(rng.integers(8, 30))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            mask = np.zeros((h, w), bool)
            cv2.ellipse(mask.view(np.uint8), (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1, -1)
            r = rng.random()
            tags = [APPROVED] if r < 0.05 else [REJECTED] if r < 0.1 else []
            dets.append(fo.Detection(label=classes[int(rng.integers(0, 2))], bounding_box=[x / W, y / H, w / W, h / H],
                                     mask=mask, confidence=float(rng.random()), tags=tags))
        samples.append(fo.Sample(filepath=str(path), metadata=fo.ImageMetadata(width=W, height=H, num_channels=3),
                                 daam_detections=fo.Detections(detections=dets)))
        if len(samples) == 1000:
            ds.add_samples(samples, progress=False)
            samples = []
    if samples:
        ds.add_samples(samples, progress=False)
    return ds


def rate(n: int, seconds: float) -> str:
    r = n / seconds
    return f"{r:8.0f} samples/s  ({seconds:6.2f} s)  {'PASS' if r >= TARGET else 'MISS'} (target >= {TARGET:.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--formats", default="yolo,coco,masks")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="diffugen-bench-review-"))
    t0 = time.perf_counter()
    ds = build(args.n, root / "media")
    print(f"built {args.n} samples ({ds.count('daam_detections.detections')} labels) in {time.perf_counter() - t0:.1f} s")
    ok = True
    t0 = time.perf_counter()
    queued = build_review_queue(ds, min_score=0.5)
    dt = time.perf_counter() - t0
    print(f"build_review_queue: {queued} labels queued       {rate(args.n, dt)}")
    t0 = time.perf_counter()
    summary = apply_review(ds, min_score=0.5, reviewer="bench")
    dt = time.perf_counter() - t0
    ok &= args.n / dt >= TARGET
    print(f"apply_review:       {summary.labels} curated labels     {rate(args.n, dt)}")
    for fmt in args.formats.split(","):
        t0 = time.perf_counter()
        out = export_dataset(ds, root / f"export-{fmt}", format=fmt, field="curated")
        dt = time.perf_counter() - t0
        ok &= args.n / dt >= TARGET
        print(f"export {fmt:5s}:       {out.labels} labels, {out.splits}  {rate(args.n, dt)}")
    fo.delete_dataset(ds.name)
    if args.keep:
        print(f"kept the media and exports in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
