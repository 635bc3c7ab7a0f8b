"""The sample documents SampleWriter inserts are FiftyOne's own, byte for byte, and read back the same."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import bson
import numpy as np
import pytest
from bson import ObjectId

import fiftyone as fo
import diffugen.store.writer as writer_module
from diffugen.store.documents import sample_document
from diffugen.store.writer import SampleWriter

NOW = dt.datetime(2026, 12, 1, 23, 0, 0, 123000)


def _bson(doc: dict) -> bytes:
    """The bytes pymongo sends: equal only with the same keys, order, value types and values."""
    return bson.encode(doc)


def _synthetic(i: int) -> fo.Sample:
    """A sample with every kind of value DiffuGen and FiftyOne users put in one, some awkward; the same
    sample, label ids included, for the same ``i``."""
    rng = np.random.default_rng(i)
    count = itertools.count()

    def oid() -> ObjectId:
        return ObjectId(f"{i:08x}{next(count):016x}")

    mask = rng.random((7, 5)) > 0.5
    return fo.Sample(
        filepath=f"/tmp/diffugen-test-store/{i}.png",
        key=f"k{i:04d}",
        seed=np.int64(i),  # numpy scalars become Python numbers
        steps=3,
        guidance_scale=np.float32(7.5),
        flag=bool(i % 2),
        parent_id=None,  # None values are dropped
        created_on=dt.date(2026, 1, 2),  # a date is stored as a UTC datetime
        made_at=dt.datetime(2026, 1, 2, 3, 4, 5),
        class_words=["car", "bus"],
        scores=(0.5, 1),
        nested={"a": [1, {"b": np.float64(2.5)}], "when": dt.date(2025, 5, 6)},
        embedding=rng.random(4).astype(np.float32),  # an array is stored as compressed .npy bytes
        attributes=fo.DynamicEmbeddedDocument(
            color="red", count=np.int32(3), when=dt.date(2024, 2, 3), tags=["x", ("y", 2)], none=None,
            inner=fo.DynamicEmbeddedDocument(depth=2, other=oid()),
        ),
        metadata=fo.ImageMetadata(width=96, height=64, num_channels=3, mime_type="image/png"),
        heatmap=fo.Heatmap(id=oid(), map=rng.random((6, 4)).astype(np.float32), range=[0, 1]),
        word_heatmaps=[fo.Heatmap(id=oid(), map_path=f"/tmp/h{i}-{w}.png", range=[0, 255], word=w, label=w) for w in ("car", "bus")],
        daam_segmentation=fo.Segmentation(id=oid(), mask=rng.integers(0, 3, (6, 4), dtype=np.uint8)),
        segmentation_file=fo.Segmentation(id=oid(), mask_path=f"/tmp/m{i}.png"),
        daam_polygons=fo.Polylines(polylines=[
            fo.Polyline(id=oid(), label="car", points=[[(0.1, 0.2), (0.3, 0.4), (0.5, 0.1)]], closed=True, filled=True,
                        confidence=np.float64(0.75), word="car", tags=["review"]),
            fo.Polyline(id=oid(), label="bus", points=[[[0.0, 0.0], [1, 1]], [(0.2, np.float64(0.3))]], closed=False,
                        confidence=1),  # an int in a float field is stored as a double
        ]),
        daam_detections=fo.Detections(detections=[
            fo.Detection(id=oid(), label="car", bounding_box=[0.1, 0.2, np.float32(0.3), 1], mask=mask, confidence=0.9,
                         word="car", area=np.float64(0.12), index=np.int64(2), source_id=oid(),  # stored as "_source_id", last
                         extra=fo.Classification(id=oid(), label="inner")),
            fo.Detection(id=oid(), label="bus", bounding_box=[0, 0, 0.5, 0.5], mask_path=f"/tmp/d{i}.png", confidence=None),
        ]),
        empty=fo.Detections(),
        yolo_class=fo.Classification(id=oid(), label="car", confidence=0.5, logits=np.array([0.1, 0.9])),
        keypoints=fo.Keypoints(keypoints=[fo.Keypoint(id=oid(), label="k", points=[(0.1, 0.2), (0.3, 0.4)], confidence=[0.5, 0.6])]),
        where=fo.GeoLocation(id=oid(), point=[-73.9, 40.7]),  # a field type sample_document leaves to FiftyOne
    )


@pytest.fixture
def empty_dataset():
    ds = fo.Dataset(f"test-store-{uuid.uuid4().hex[:8]}")
    yield ds
    ds.delete()


def test_documents_are_fiftyones_own_byte_for_byte(empty_dataset):
    for i in range(4):
        sample = _synthetic(i)
        if i % 2:  # either one first: neither changes the sample
            fast = sample_document(empty_dataset, sample, NOW)
            ref = empty_dataset._make_dict(sample, created_at=NOW, last_modified_at=NOW)
        else:
            ref = empty_dataset._make_dict(sample, created_at=NOW, last_modified_at=NOW)
            fast = sample_document(empty_dataset, sample, NOW)
        assert list(fast) == list(ref)
        assert _bson(fast) == _bson(ref)
        detection = fast["daam_detections"]["detections"][0]
        assert list(detection)[-1] == "_source_id" and "source_id" not in detection  # an ObjectId attribute
        assert "parent_id" not in fast
        assert fast["created_on"] == dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
        assert fast["daam_polygons"]["polylines"][0]["points"] == [[[0.1, 0.2], [0.3, 0.4], [0.5, 0.1]]]
        assert fast["_dataset_id"] == empty_dataset._doc.id and fast["created_at"] == NOW


def test_a_sample_already_in_a_dataset_gets_make_dict(empty_dataset):
    sample = _synthetic(0)
    empty_dataset.add_sample(sample)
    assert _bson(sample_document(empty_dataset, sample, NOW)) == _bson(
        empty_dataset._make_dict(sample, created_at=NOW, last_modified_at=NOW))


def _fresh_copies(ds: fo.Dataset) -> list[fo.Sample]:
    """New samples (not in a dataset) with the same values, label ids included (each its own ``_rand``)."""
    return [fo.Sample.from_dict(s.to_dict()) for s in ds]


def _read_back(ds: fo.Dataset) -> list[dict]:
    out = []
    for s in ds.sort_by("key"):
        d = s.to_dict()
        for k in ("created_at", "last_modified_at"):
            d.pop(k)
        out.append(d)
    return out


def _ingest_both_ways(samples_a: list[fo.Sample], samples_b: list[fo.Sample], schema_from: fo.Dataset, monkeypatch):
    """``samples_a`` through SampleWriter (its document path, counted), ``samples_b`` through
    ``add_samples``, into two empty datasets with ``schema_from``'s schema; both read back."""
    via_add = schema_from.clone(f"test-store-b-{uuid.uuid4().hex[:8]}")
    via_writer = schema_from.clone(f"test-store-a-{uuid.uuid4().hex[:8]}")
    try:
        via_add.clear()
        via_writer.clear()
        via_add.add_samples(samples_b)
        calls = []

        def counting(ds, sample, now):
            calls.append(sample)
            return sample_document(ds, sample, now)

        monkeypatch.setattr(writer_module, "sample_document", counting)
        with SampleWriter(via_writer, batch_size=3) as writer:
            for s in samples_a:
                writer.add(s)
        assert len(calls) == len(samples_a) == writer.written  # the document path, not add_samples
        return _read_back(via_writer), _read_back(via_add)
    finally:
        via_add.delete()
        via_writer.delete()


def test_generated_samples_read_back_as_add_samples_writes_them(base, monkeypatch):
    """The samples of a real builtin:tiny generation (DAAM heatmaps, polygons, masks, detections)."""
    assert len(base) and base.exists("daam_detections").count() and base.exists("daam_polygons").count()
    copies = _fresh_copies(base)
    fast = [sample_document(base, s, NOW) for s in copies]
    ref = [base._make_dict(s, created_at=NOW, last_modified_at=NOW) for s in copies]
    assert [_bson(d) for d in fast] == [_bson(d) for d in ref]

    got, expected = _ingest_both_ways(_fresh_copies(base), _fresh_copies(base), base, monkeypatch)
    assert len(got) == len(base) and got == expected


def test_synthetic_samples_read_back_as_add_samples_writes_them(empty_dataset, monkeypatch):
    empty_dataset.add_samples([_synthetic(i) for i in range(5)])  # the schema for both datasets
    empty_dataset.add_sample_field("parent_id", fo.StringField)  # always None here, so not declared by add_samples
    got, expected = _ingest_both_ways([_synthetic(i) for i in range(5)], [_synthetic(i) for i in range(5)],
                                      empty_dataset, monkeypatch)
    assert len(got) == 5 and got == expected
    assert got[0]["daam_detections"]["detections"][0]["area"] == 0.12
