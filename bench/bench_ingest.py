"""FiftyOne ingestion throughput of complete DiffuGen samples (all label fields), without generating images.

Usage::

    python bench/bench_ingest.py [--n 2000] [--size 512] [--instances 3] [--batch-size 64] [--reps 3] [--no-compare]

Builds ``n`` ``fo.Sample`` objects shaped exactly like ``Runner.build_sample`` makes them:
image path, ``heatmap``, ``word_heatmaps`` (2 words), ``daam_segmentation`` (``mask_path``),
``daam_polygons`` and ``daam_detections`` (instance masks cropped to their boxes), the
``attributes`` document and the provenance fields. Their labels come from
:func:`extract_labels` on a few synthetic ``size``² heatmaps (so polygons and masks have
realistic sizes), capped at ``--instances`` per sample; the PNG files are a handful written
once and shared by all samples. Then it times inserting them through
:class:`diffugen.store.writer.SampleWriter` into a fresh dataset made by
:func:`diffugen.store.dataset.open_dataset` (deleted afterwards). Target: >= 500 samples/s.

For reference (a ratio within the same run) each repetition also inserts fresh copies of the same
samples with the previous writer: the same ``SampleWriter`` (unique key index, unordered
``insert_many``) with FiftyOne's own ``Dataset._make_dict`` documents instead of
:func:`diffugen.store.documents.sample_document`. The two alternate, the order swapped every
repetition; sample building is not timed.
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

from _common import mark, median, private_database

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


class MakeDictWriter(SampleWriter):
    """The previous writer: documents from FiftyOne's ``Dataset._make_dict`` (mongoengine's ``to_mongo``)."""

    def _document(self, sample: fo.Sample, now: datetime.datetime) -> dict:
        return self.ds._make_dict(sample, created_at=now, last_modified_at=now)


def ingest(writer_cls: type[SampleWriter], samples: list[fo.Sample], batch_size: int) -> tuple[float, float]:
    """Samples per wall second and per CPU second of this process (not mongod's; less disturbed by other
    load on a shared machine) inserting ``samples`` with ``writer_cls`` into a new dataset (then deleted)."""
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    ds = open_dataset(DATASET, CLASSES, {"dataset_name": DATASET})
    c0, t0 = time.process_time(), time.perf_counter()
    with writer_cls(ds, batch_size=batch_size) as writer:
        for s in samples:
            writer.add(s)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert len(ds) == len(samples), len(ds)
    fo.delete_dataset(DATASET)
    return len(samples) / dt, len(samples) / dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples to insert")
    ap.add_argument("--size", type=int, default=512, help="image side (label geometry scale)")
    ap.add_argument("--instances", type=int, default=3, help="max instances (detections + polygons) per sample")
    ap.add_argument("--batch-size", type=int, default=64, help="SampleWriter batch size")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (each times both writers)")
    ap.add_argument("--no-compare", action="store_true", help="skip the previous writer (_make_dict documents)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="diffugen-bench-ingest-"))
    try:
        files = write_files(tmp, a.size)
        pool = label_pool(a.size)

        t0 = time.perf_counter()
        samples = [make_sample(i, files, pool, a.instances, a.size) for i in range(a.n)]
        t_build = time.perf_counter() - t0
        n_inst = sum(len(s.daam_detections.detections) for s in samples) / a.n
        n_pts = sum(len(p.points[0]) for s in samples for p in s.daam_polygons.polylines) / a.n
        mask_px = sum(d.mask.size for s in samples for d in s.daam_detections.detections) / a.n

        t0 = time.perf_counter()
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
        open_dataset(DATASET, CLASSES, {"dataset_name": DATASET})
        t_open = time.perf_counter() - t0

        writers = [("SampleWriter", SampleWriter)] + ([] if a.no_compare else [("previous (_make_dict)", MakeDictWriter)])
        rates: dict[str, list[float]] = {name: [] for name, _ in writers}
        cpu_rates: dict[str, list[float]] = {name: [] for name, _ in writers}
        for rep in range(a.reps):
            for name, cls in writers if rep % 2 == 0 else writers[::-1]:
                fresh = [make_sample(i, files, pool, a.instances, a.size) for i in range(a.n)]
                wall, cpu = ingest(cls, fresh, a.batch_size)
                rates[name].append(wall)
                cpu_rates[name].append(cpu)

        print(f"fiftyone {fo.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end")
        print(f"{a.n} samples, {a.size}x{a.size}: {n_inst:.1f} detections+polygons/sample, {n_pts:.0f} polygon points/sample, "
              f"{mask_px:.0f} instance-mask px/sample, 2 word heatmaps, SampleWriter batch {a.batch_size}")
        print(f"building fo.Sample objects: {a.n / t_build:.0f} samples/s (not in the figures below); "
              f"open_dataset (new): {t_open:.2f} s")
        for name, xs in rates.items():
            print(f"{name}: " + ", ".join(f"{x:.0f}" for x in xs) + f" samples/s (median {median(xs):.0f}); "
                  f"per CPU second of this process: " + ", ".join(f"{x:.0f}" for x in cpu_rates[name]))
        rate = median(rates["SampleWriter"])
        print(f"ingestion: {rate:.0f} samples/s (median of {a.reps}); target >= {TARGET:.0f}/s: "
              f"{mark(rate, TARGET, higher_is_better=True)}")
        if not a.no_compare:
            ratios = [x / y for x, y in zip(rates["SampleWriter"], rates["previous (_make_dict)"])]
            cpu_ratios = [x / y for x, y in zip(cpu_rates["SampleWriter"], cpu_rates["previous (_make_dict)"])]
            print("SampleWriter / previous, same rep: " + ", ".join(f"{r:.2f}" for r in ratios)
                  + "; CPU: " + ", ".join(f"{r:.2f}" for r in cpu_ratios))
    finally:
        if fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
