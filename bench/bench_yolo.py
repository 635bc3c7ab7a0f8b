"""YOLO-seg labeling throughput: batched vs one image at a time, on the same images.

    python bench/bench_yolo.py [--n 32] [--size 256] [--batch 16] [--imgsz 256]

Uses an untrained YOLOv8n-seg built from its yaml (no download), saved as a local .pt, through
DiffuGen's own labeler (:class:`diffugen.labels.yolo.YoloLabeler`: predict + FiftyOne conversion +
semantic mask), as generation uses it.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import private_database


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    private_database()  # the labeler makes FiftyOne labels (it needs no database, but never the user's)
    from ultralytics import YOLO

    from diffugen.labels.yolo import YoloLabeler

    tmp = Path(tempfile.mkdtemp())
    weights = tmp / "yolov8n-seg-untrained.pt"
    YOLO("yolov8n-seg.yaml").save(str(weights))
    names = list(YOLO(str(weights)).names.values())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.n)]
    labeler = YoloLabeler(weights, names[:3], None, conf=0.25, imgsz=args.imgsz, device=args.device, batch_size=args.batch)
    ids = {c: i + 1 for i, c in enumerate(names[:3])}
    masks = [tmp / f"m{i}.png" for i in range(args.n)]

    def batched():
        for s in range(0, args.n, args.batch):
            labeler.label(images[s : s + args.batch], [[]] * len(images[s : s + args.batch]), ids, masks[s : s + args.batch])

    def single():
        for im, m in zip(images, masks):
            labeler.label([im], [[]], ids, [m])

    batched(), single()  # warm-up
    times = {"batched": [], "single": []}
    for _ in range(3):  # interleaved repetitions
        for name, fn in (("batched", batched), ("single", single)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    b, s = np.median(times["batched"]), np.median(times["single"])
    print(f"YOLO-seg labeling, {args.n} images {args.size}px, imgsz {args.imgsz}, device {args.device}")
    print(f"batched (batch {args.batch}): {args.n / b:.1f} img/s; one at a time: {args.n / s:.1f} img/s")
    print(f"batched / single throughput = {s / b:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
