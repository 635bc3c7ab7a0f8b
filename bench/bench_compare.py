"""DAAM-vs-YOLO comparison throughput on synthetic labels (no generation, real FiftyOne).

    python bench/bench_compare.py [--n 1000] [--labels 3]

Each sample (512×512) gets ~3 DAAM and ~3 YOLO detections with instance masks, the YOLO ones
jittered copies of the DAAM ones. Prints samples/s for matching alone and with FiftyOne's
``evaluate_detections`` (target: >= 200 samples/s).
"""

import argparse
import time

import numpy as np

from _common import private_database


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--labels", type=int, default=3)
    args = ap.parse_args()

    private_database()
    import fiftyone as fo

    from diffugen.labels.compare import compare_labels

    rng = np.random.default_rng(0)
    name = "bench-compare"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)

    def det(label, x, y, w, h):
        mask = np.ones((int(h * 512), int(w * 512)), bool)
        return fo.Detection(label=label, bounding_box=[x, y, w, h], mask=mask, confidence=float(rng.random()))

    samples = []
    for i in range(args.n):
        daam, yolo = [], []
        for _ in range(args.labels):
            label = rng.choice(["car", "bus"])
            x, y, w, h = rng.uniform(0, 0.6), rng.uniform(0, 0.6), rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3)
            daam.append(det(label, x, y, w, h))
            yolo.append(det(label, float(np.clip(x + rng.uniform(-0.03, 0.03), 0, 0.69)), y, w, h))
        samples.append(fo.Sample(filepath=f"/nonexistent/{i}.png", metadata=fo.ImageMetadata(width=512, height=512),
                                 daam_detections=fo.Detections(detections=daam), yolo_detections=fo.Detections(detections=yolo)))
    ds.add_samples(samples, progress=False)
    del samples  # as after a real run: no in-memory samples for FiftyOne to keep in sync

    t = time.perf_counter()
    compare_labels(ds, evaluate=False)
    match_only = time.perf_counter() - t
    t = time.perf_counter()
    compare_labels(ds, evaluate=True)
    with_eval = time.perf_counter() - t
    print(f"compare {args.n} samples x {args.labels} labels per field, 512x512 masks")
    print(f"matching + writing: {args.n / match_only:.0f} samples/s; with evaluate_detections: {args.n / with_eval:.0f} samples/s (target >= 200)")
    print(f"mean agreement {np.mean(ds.values('agreement')):.3f}")
    fo.delete_dataset(name)


if __name__ == "__main__":
    main()
