"""Review/curation rules and exports that load back (YOLO trains with ultralytics, COCO keeps polygons)."""

import argparse
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

from diffugen.cli.curation import add_parsers
from diffugen.curation.export import export_dataset, parse_split
from diffugen.curation.review import apply_review, build_review_queue, take_labels
from diffugen.errors import DiffuGenError


def test_review_queue_decisions_and_curated_labels(ds):
    labels = {d.id: d for s in ds for d in s.daam_detections.detections}
    thr = float(np.median([d.confidence for d in labels.values()]))  # half the labels are doubtful
    low = {i for i, d in labels.items() if d.confidence < thr}
    assert 0 < len(low) < len(labels)
    assert build_review_queue(ds, min_score=thr) == len(low)
    assert build_review_queue(ds, min_score=thr) == len(low)  # rebuilding does not double-tag
    tagged = {d.id for s in ds.load_saved_view("review queue") for d in s.daam_detections.detections}
    assert tagged == low
    approved, rejected = sorted(low)[0], sorted(set(labels) - low)[0]
    ds.select_labels(ids=[approved]).tag_labels("approved")
    ds.select_labels(ids=[rejected]).tag_labels("rejected")
    # labels found unmatched by compare_labels join the queue (unless already decided)
    unmatched = sorted(set(labels) - low - {rejected})[0]
    ds.set_label_values("daam_detections.detections.matched", {unmatched: False})
    assert build_review_queue(ds, min_score=thr) == len(low) - 1 + 1
    summary = apply_review(ds, min_score=thr, reviewer="rev")
    curated = {d.source_id: d for s in ds for d in s.curated.detections}
    assert set(curated) == (set(labels) - low - {rejected, unmatched}) | {approved}
    assert summary.labels == len(curated) and summary.approved == 1 and summary.rejected == 1
    for sid, d in curated.items():  # copies: new ids, same geometry, the source recorded, no queue tag
        assert d.id != sid and d.source == "daam" and "needs_review" not in d.tags
        assert d.bounding_box == labels[sid].bounding_box and np.array_equal(d.mask, labels[sid].mask)
    assert ds.get_field_schema(flat=True)["curated.detections.source"] is not None
    record = ds.info["diffugen_reviews"][-1]
    assert record["reviewer"] == "rev" and record["labels"] == len(curated) and record["at"]
    # another source for one sample; re-applying keeps that choice
    ds.clone_sample_field("daam_detections", "yolo_detections")
    one = ds.limit(1)
    take_labels(one, "yolo_detections", min_score=0.0)
    apply_review(ds, min_score=thr)
    assert one.distinct("curated.detections.source") == ["yolo"]
    assert set(ds.skip(1).distinct("curated.detections.source")) == {"daam"}
    assert [r["action"] for r in ds.info["diffugen_reviews"]] == ["apply_review", "take_labels", "apply_review"]


def test_review_bad_arguments(ds):
    with pytest.raises(DiffuGenError, match="'nope' not found.*daam_detections"):
        build_review_queue(ds, field="nope")
    with pytest.raises(DiffuGenError, match="not a Detections field"):
        apply_review(ds, field="daam_polygons")
    with pytest.raises(DiffuGenError, match=r"min_score must be in \[0, 1\]"):
        apply_review(ds, min_score=3)
    with pytest.raises(DiffuGenError, match="view is empty"):
        take_labels(ds.match(F("seed") == -1), "daam_detections")
    assert "curated" not in ds.get_field_schema()


def _load_yolo(out, split):
    return fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.YOLOv5Dataset, split=split,
                               label_type="polylines", label_field="gt")


@pytest.mark.slow
def test_yolo_export_loads_back_and_trains(ds, tmp_path):
    apply_review(ds, min_score=0.0)
    out = tmp_path / "yolo"
    summary = export_dataset(ds, out, format="yolo", split="train=0.75,val=0.25", seed=1)
    assert summary.splits == {"train": 6, "val": 2} and summary.labels == ds.count("curated.detections")
    assert ds.count_sample_tags() == {"train": 6, "val": 2}
    loaded = [_load_yolo(out, s) for s in ("train", "val")]
    try:
        assert [len(d) for d in loaded] == [6, 2]
        assert sum(d.count("gt.polylines") for d in loaded) == summary.labels
        for split, d in zip(("train", "val"), loaded):
            assert d.count_values("gt.polylines.label") == ds.match_tags(split).count_values("curated.detections.label")
    finally:
        for d in loaded:
            d.delete()
    from ultralytics import YOLO

    model = YOLO("yolov8n-seg.yaml")
    model.train(data=str(summary.data_yaml), epochs=1, imgsz=64, plots=False, device="cpu", workers=0,
                project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()


def test_coco_export_keeps_polygons_and_masks_export_has_class_ids(ds, tmp_path):
    out = tmp_path / "coco"
    summary = export_dataset(ds, out, format="coco", field="daam_detections", split={"train": 1})
    assert summary.splits == {"train": 8}
    back = fo.Dataset.from_dir(dataset_dir=str(out / "train"), dataset_type=fo.types.COCODetectionDataset,
                               label_types=["segmentations"], label_field="gt", use_polylines=True)
    try:
        assert back.count("gt.polylines") == ds.count("daam_detections.detections")
        poly = back.first().gt.polylines[0]
        assert len(poly.points[0]) >= 3 and poly.label in ("car", "bus")
    finally:
        back.delete()
    masks = export_dataset(ds, tmp_path / "masks", format="masks", field="daam_detections", split={"train": 1})
    pngs = sorted((tmp_path / "masks" / "train" / "labels").glob("*.png"))
    assert masks.splits == {"train": 8} and len(pngs) == 8
    import cv2

    values = set(np.unique(np.concatenate([cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ravel() for p in pngs])))
    assert values <= {0, 1, 2} and values - {0}


def test_export_refusals_write_nothing(ds, tmp_path):
    out = tmp_path / "out"
    export_dataset(ds, out, field="daam_detections")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(DiffuGenError, match="already exists and is not empty.*overwrite"):
        export_dataset(ds, out, field="daam_detections")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    (out / "stale.txt").write_text("old")
    export_dataset(ds, out, field="daam_detections", overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "dataset.yaml").is_file()
    root = tmp_path / "root"
    with pytest.raises(DiffuGenError, match="outside the allowed export root"):
        export_dataset(ds, tmp_path / "elsewhere", field="daam_detections", allowed_root=root)
    with pytest.raises(DiffuGenError, match="outside the allowed export root"):
        export_dataset(ds, "../escape", field="daam_detections", allowed_root=root)
    media_dir = next(p for p in Path(ds.first().filepath).parents if p.name == "images")  # never deleted
    with pytest.raises(DiffuGenError, match="holds the dataset's media"):
        export_dataset(ds, media_dir.parent, field="daam_detections", overwrite=True)
    assert media_dir.is_dir()
    with pytest.raises(DiffuGenError, match="format must be one of"):
        export_dataset(ds, tmp_path / "x", format="voc")
    with pytest.raises(DiffuGenError, match="'curated' not found"):
        export_dataset(ds, tmp_path / "x")
    with pytest.raises(DiffuGenError, match="cannot be exported as yolo"):
        export_dataset(ds, tmp_path / "x", field="daam_segmentation")
    with pytest.raises(DiffuGenError, match="empty"):
        export_dataset(ds.match(F("seed") == -1), tmp_path / "x", field="daam_detections")
    for bad in ("train=0.8,val", "train=-1", "train=0.5,train=0.5", "a b=1"):
        with pytest.raises(DiffuGenError, match="split"):
            parse_split(bad)
    assert not (tmp_path / "x").exists() and not root.exists() and not (tmp_path / "elsewhere").exists()


def test_export_command_line(ds, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="diffugen")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", ds.name, "--format", "coco", "--out", str(tmp_path / "c"),
                              "--field", "daam_polygons", "--split", "train=0.5,val=0.5", "--seed", "3"])
    assert args.func(args) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "c" / "val" / "labels.json").is_file()
    assert ds.count_sample_tags() == {"train": 4, "val": 4}


def test_export_without_a_field_takes_curated_once_a_review_was_applied(ds, tmp_path, capsys):
    from diffugen.cli import main as cli

    assert cli(["export", ds.name, "--format", "coco", "--out", str(tmp_path / "a")]) == 0
    assert "exporting daam_detections: no review applied yet" in capsys.readouterr().out
    apply_review(ds, min_score=0.0)
    assert cli(["export", ds.name, "--format", "coco", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "exporting curated: the review was applied" in out and "curated labels" in out
