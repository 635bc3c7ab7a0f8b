"""FiftyOne ingestion throughput of complete DiffuGen samples (all label fields), without generating images.

Usage::

    python bench/bench_ingest.py [--n 2000] [--size 512] [--instances 3] [--batch-size 64] [--no-compare]

Builds ``n`` ``fo.Sample`` objects shaped exactly like ``Runner.build_sample`` makes them:
image path, ``heatmap``, ``word_heatmaps`` (2 words), ``daam_segmentation`` (``mask_path``),
``daam_polygons`` and ``daam_detections`` (instance masks cropped to their boxes), the
``attributes`` document and the provenance fields. Their labels come from
:func:`extract_labels` on a few synthetic ``size``² heatmaps (so polygons and masks have
realistic sizes), capped at ``--instances`` per sample; the PNG files are a handful written
once and shared by all samples. Then it times inserting them through
:class:`diffugen.store.writer.SampleWriter` into a fresh dataset made by
:func:`diffugen.store.dataset.open_dataset` (deleted afterwards). Target: >= 500 samples/s.

For reference (a ratio within the same run) it then inserts fresh copies of the same samples as
raw documents: ``Dataset._make_dict`` + ``insert_many``, i.e. what ``add_samples`` writes, without
its re-creation of each sample's backing document from the inserted dict.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import mark, private_database

private_database()

import fiftyone as fo  # noqa: E402

from bench_labels import make_heatmaps  # noqa: E402
from diffugen.labels.daam import LabelParams, extract_labels  # noqa: E402
from diffugen.store.dataset import open_dataset  # noqa: E402
from diffugen.store.files import write_png  # noqa: E402
from diffugen.store.writer import SampleWriter  # noqa: E402

TARGET = 500.0
DATASET = "diffugen-bench-ingest"
CLASSES = ["car", "bus"]
WORDS = ["car", "bus"]


def write_files(folder: Path, size: int, k: int = 4) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    files: dict[str, list[str]] = {"image": [], "heatmap": [], "mask": []}
    for i in range(k):
        files["image"].append(str(write_png(folder / "images" / f"{i}.png", rng.integers(0, 255, (size, size, 3), np.uint8))))
        files["heatmap"].append(str(write_png(folder / "heatmaps" / f"{i}.png", rng.integers(0, 255, (size, size), np.uint8))))
        files["mask"].append(str(write_png(folder / "masks" / f"{i}.png", rng.integers(0, 3, (size, size), np.uint8))))
    return files


def label_pool(size: int, k: int = 16):
    """Instances (polygon, box, mask, score, area) extracted from ``k`` synthetic heatmaps."""
    params = LabelParams()
    return [extract_labels(m, params).instances for m in make_heatmaps(k, size, seed=1)]


def make_sample(i: int, files, pool, max_instances: int, size: int) -> fo.Sample:
    """One sample with the fields and label types of ``Runner.build_sample``."""
    j = i % len(files["image"])
    word_heatmaps = [
        fo.Heatmap(map_path=files["heatmap"][(j + w) % len(files["heatmap"])], range=[0, 255], word=word, label=word)
        for w, word in enumerate(WORDS)
    ]
    polylines, detections = [], []
    n = 0
    for w, word in enumerate(WORDS):
        for inst in pool[(i + w) % len(pool)][: max(1, (max_instances + 1 - w) // 2)]:
            if n >= max_instances:
                break
            n += 1
            score = float(inst.score)
            polylines.append(fo.Polyline(label=word, points=[inst.polygon.tolist()], closed=True, filled=True,
                                         confidence=score, word=word))
            detections.append(fo.Detection(label=word, bounding_box=list(map(float, inst.box)), mask=inst.mask,
                                           confidence=score, word=word, area=float(inst.area)))
    attrs = {"color": ["red", "blue"][i % 2], "object": WORDS[i % 2], "place": "road", "time": "noon"}
    return fo.Sample(
        filepath=files["image"][j],
        key=f"bench{i:08d}",
        task="txt2img",
        prompt=f"a photo of a {attrs['color']} car and a bus on a {attrs['place']} at {attrs['time']}",
        negative_prompt="blurry, low quality",
        prompt_template="a photo of a {color} car and a bus on a {place} at {time}",
        attributes=fo.DynamicEmbeddedDocument(**attrs),
        seed=i,
        model="builtin:tiny",
        steps=30,
        guidance_scale=7.5,
        parent_id=None,
        class_words=list(WORDS),
        word_heatmaps=word_heatmaps,
        metadata=fo.ImageMetadata(width=size, height=size, num_channels=3, mime_type="image/png"),
        heatmap=fo.Heatmap(map_path=files["heatmap"][j], range=[0, 255]),
        daam_segmentation=fo.Segmentation(mask_path=files["mask"][j]),
        daam_polygons=fo.Polylines(polylines=polylines),
        daam_detections=fo.Detections(detections=detections),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples to insert")
    ap.add_argument("--size", type=int, default=512, help="image side (label geometry scale)")
    ap.add_argument("--instances", type=int, default=3, help="max instances (detections + polygons) per sample")
    ap.add_argument("--batch-size", type=int, default=64, help="SampleWriter batch size")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the reference: the same documents inserted with pymongo insert_many")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="diffugen-bench-ingest-"))
    try:
        files = write_files(tmp, a.size)
        pool = label_pool(a.size)
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)

        t0 = time.perf_counter()
        samples = [make_sample(i, files, pool, a.instances, a.size) for i in range(a.n)]
        t_build = time.perf_counter() - t0
        n_inst = sum(len(s.daam_detections.detections) for s in samples) / a.n
        n_pts = sum(len(p.points[0]) for s in samples for p in s.daam_polygons.polylines) / a.n
        mask_px = sum(d.mask.size for s in samples for d in s.daam_detections.detections) / a.n

        t0 = time.perf_counter()
        ds = open_dataset(DATASET, CLASSES, {"dataset_name": DATASET})
        t_open = time.perf_counter() - t0

        t0 = time.perf_counter()
        with SampleWriter(ds, batch_size=a.batch_size) as writer:
            for s in samples:
                writer.add(s)
        dt = time.perf_counter() - t0
        assert len(ds) == a.n, len(ds)

        rate = a.n / dt

        raw_rate = None
        if not a.no_compare:
            # Reference: the very documents add_samples would insert (Dataset._make_dict, private
            # FiftyOne API), with pymongo insert_many, no backing-document reload. Fresh samples.
            fo.delete_dataset(DATASET)
            samples = [make_sample(i, files, pool, a.instances, a.size) for i in range(a.n)]
            ds = open_dataset(DATASET, CLASSES, {"dataset_name": DATASET})
            t0 = time.perf_counter()
            for k in range(0, a.n, a.batch_size):
                now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
                docs = [ds._make_dict(smp, created_at=now, last_modified_at=now) for smp in samples[k : k + a.batch_size]]
                ds._sample_collection.insert_many(docs)
            raw_rate = a.n / (time.perf_counter() - t0)
            assert len(ds) == a.n, len(ds)
        print(f"fiftyone {fo.__version__}, {os.cpu_count()} CPU cores")
        print(f"{a.n} samples, {a.size}x{a.size}: {n_inst:.1f} detections+polygons/sample, {n_pts:.0f} polygon points/sample, "
              f"{mask_px:.0f} instance-mask px/sample, 2 word heatmaps, SampleWriter batch {a.batch_size}")
        print(f"building fo.Sample objects: {a.n / t_build:.0f} samples/s (not in the figure below); "
              f"open_dataset (new): {t_open:.2f} s")
        print(f"ingestion: {a.n} samples in {dt:.2f} s = {rate:.0f} samples/s; target >= {TARGET:.0f}/s: "
              f"{mark(rate, TARGET, higher_is_better=True)}")
        if raw_rate is not None:
            print(f"reference, same documents via insert_many (no Sample backing docs): {raw_rate:.0f} samples/s "
                  f"= {raw_rate / rate:.1f}x SampleWriter")
    finally:
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
