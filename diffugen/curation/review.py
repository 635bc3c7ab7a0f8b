"""Review and curation: queue doubtful labels, apply the reviewer's decisions into ``curated``.

The workflow (the FiftyOne operators ``review`` and ``apply_review`` call these functions)::

    build_review_queue(ds)            # tag low-score / unmatched labels ``needs_review``
    ... in the App, tag labels ``approved`` or ``rejected`` (label tags) ...
    apply_review(ds)                  # write the ``curated`` field from the decisions
    take_labels(ds.select(ids), "yolo_detections")   # these samples: YOLO instead of DAAM

Rules of ``curated`` (an ``fo.Detections`` field, masks kept), per source label:

- tagged ``rejected``: dropped;
- tagged ``approved``: kept, whatever its score;
- otherwise (not reviewed): kept when it is not tagged ``needs_review`` and its confidence is at
  least ``min_score``.

Each curated label is a copy (new id) with ``source`` (``"daam"``, ``"yolo"``: the source field's
prefix) and ``source_id`` (the id of the label it was copied from). Each sample's source field is
``field`` unless :func:`take_labels` chose another one for it (kept in the sample field
``curated_source``), so re-applying the review keeps the per-sample choices.

All reads and writes are bulk (``values`` / ``set_values``), never per-sample saves.
"""

from __future__ import annotations

import getpass
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field as dc_field

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from ..common import REVIEW_MIN_SCORE, ProgressFn, report
from ..errors import DatasetError, DiffuGenError
from ..store.dataset import check_label_field, now_iso

NEEDS_REVIEW = "needs_review"
APPROVED = "approved"
REJECTED = "rejected"
REVIEW_VIEW = "review queue"
CURATED = "curated"
CURATED_SOURCE = "curated_source"  # sample field: the label field a sample's curated labels come from

_LIST_FIELDS = {fo.Detections: "detections", fo.Polylines: "polylines"}
_CHUNK = 2000  # samples per bulk write


# ---- helpers -------------------------------------------------------------------------------------
def _list_path(collection: SampleCollection, field: str) -> str:
    return f"{field}.{_LIST_FIELDS[check_label_field(collection, field)]}"


def source_name(field: str) -> str:
    """What ``source`` says on a curated label: the field's prefix (``yolo_detections`` → ``yolo``)."""
    return field.split("_", 1)[0]


def _review_filter(min_score: float, include_unmatched: bool):
    low = (F("confidence") == None) | (F("confidence") < min_score)  # noqa: E711 (a MongoDB expression)
    expr = low | (F("matched") == False) if include_unmatched else low  # noqa: E712
    return expr & ~F("tags").contains([APPROVED, REJECTED])


# ---- the review queue ----------------------------------------------------------------------------
def build_review_queue(collection: SampleCollection, field: str = "daam_detections", min_score: float = REVIEW_MIN_SCORE,
                       include_unmatched: bool = True, view_name: str = REVIEW_VIEW) -> int:
    """Tag the labels of ``field`` that need a look ``needs_review`` and save the queue as a view.

    A label needs review when its confidence is below ``min_score`` (or missing) or, with
    ``include_unmatched``, when :func:`diffugen.labels.compare.compare_labels` marked it ``matched=False``;
    labels already ``approved`` or ``rejected`` are left alone. Earlier ``needs_review`` tags of the
    collection's ``field`` are cleared first, so re-running with another threshold rebuilds the queue.

    Returns:
        The number of labels in the queue. The saved view ``view_name`` of the dataset shows them.
    """
    if not 0.0 <= min_score <= 1.0:
        raise DiffuGenError(f"min_score must be in [0, 1], got {min_score}")
    check_label_field(collection, field)
    collection.untag_labels(NEEDS_REVIEW, label_fields=[field])
    queue = collection.filter_labels(field, _review_filter(min_score, include_unmatched))
    queue.tag_labels(NEEDS_REVIEW, label_fields=[field])
    count = collection.count_label_tags(label_fields=[field]).get(NEEDS_REVIEW, 0)
    ds = collection._root_dataset
    ds.save_view(view_name, collection.select_labels(tags=NEEDS_REVIEW, fields=field), overwrite=True)
    ds.info["diffugen_review_queue"] = {"field": field, "min_score": min_score,
                                        "include_unmatched": include_unmatched, "labels": count, "at": now_iso()}
    ds.save()
    return count


# ---- curation ------------------------------------------------------------------------------------
@dataclass
class ReviewSummary:
    samples: int = 0
    labels: int = 0  # labels written to the curated field
    approved: int = 0
    rejected: int = 0
    sources: dict[str, int] = dc_field(default_factory=dict)  # samples per source field

    def to_dict(self) -> dict:
        return {"samples": self.samples, "labels": self.labels, "approved": self.approved,
                "rejected": self.rejected, "sources": dict(self.sources)}


def _curate(labels: list[dict] | None, min_score: float, source: str, summary: ReviewSummary) -> dict:
    # Raw label documents in and out (what FiftyOne stores): no per-label object construction.
    out = []
    for lab in labels or ():
        tags = lab.get("tags") or ()
        if REJECTED in tags:
            summary.rejected += 1
            continue
        if APPROVED in tags:
            summary.approved += 1
        else:
            score = lab.get("confidence")
            if NEEDS_REVIEW in tags or score is None or score < min_score:
                continue
        out.append({**lab, "_id": ObjectId(), "tags": [t for t in tags if t != NEEDS_REVIEW],
                    "source": source, "source_id": str(lab["_id"])})
    return {"_cls": "Detections", "detections": out}


def _write_curated(collection: SampleCollection, source_field: str, min_score: float, out_field: str, summary: ReviewSummary,
                   progress: ProgressFn | None, done: int, total: int) -> int:
    path = _list_path(collection, source_field)
    source = source_name(source_field)
    ids, labels = collection.values(["id", path], _raw=True)
    ds = collection._root_dataset
    for start in range(0, len(ids), _CHUNK):
        values = {i: _curate(labs, min_score, source, summary)
                  for i, labs in zip(ids[start:start + _CHUNK], labels[start:start + _CHUNK])}
        summary.labels += sum(len(v["detections"]) for v in values.values())
        ds.set_values(out_field, values, key_field="id", validate=False)
        done += len(values)
        report(progress, done, total, f"curated {done}/{total}")
    return done


def _declare_curated(ds: fo.Dataset, out_field: str) -> None:
    schema = ds.get_field_schema()
    if out_field not in schema:
        ds.add_sample_field(out_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    elif not issubclass(getattr(schema[out_field], "document_type", object), fo.Detections):
        raise DatasetError(f"field {out_field!r} exists and is not a Detections field: choose another output field")
    for name in ("source", "source_id"):
        if f"{out_field}.detections.{name}" not in ds.get_field_schema(flat=True):
            ds.add_sample_field(f"{out_field}.detections.{name}", fo.StringField)
    if CURATED_SOURCE not in schema:
        ds.add_sample_field(CURATED_SOURCE, fo.StringField)


def apply_review(collection: SampleCollection, field: str = "daam_detections", min_score: float = REVIEW_MIN_SCORE, out_field: str = CURATED,
                 reviewer: str | None = None, progress: ProgressFn | None = None) -> ReviewSummary:
    """Write ``out_field`` (``fo.Detections``) of every sample of ``collection`` from the review decisions.

    A sample's source field is the one :func:`take_labels` chose for it, else ``field`` (a
    ``Detections`` field with masks). See the module docstring for which labels are kept.
    The run (reviewer, time, counts) is appended to ``dataset.info["diffugen_reviews"]``.
    """
    _check_args(collection, field, min_score)
    ds = collection._root_dataset
    ids = collection.values("id")
    chosen = collection.values(CURATED_SOURCE) if CURATED_SOURCE in ds.get_field_schema() else [None] * len(ids)
    groups: dict[str, list[str]] = defaultdict(list)
    for i, src in zip(ids, chosen):
        groups[src or field].append(i)
    for src in groups:
        check_label_field(collection, src, (fo.Detections,))
    _declare_curated(ds, out_field)
    summary = ReviewSummary()
    total, done = len(ids), 0
    report(progress, 0, total, "apply review")
    for src, src_ids in groups.items():
        view = collection.select(src_ids) if len(groups) > 1 else collection
        done = _write_curated(view, src, min_score, out_field, summary, progress, done, total)
        summary.sources[src] = len(src_ids)
    summary.samples = total
    _declare_copied_attributes(ds, out_field)
    _record(ds, "apply_review", reviewer, field=field, min_score=min_score, out_field=out_field, **summary.to_dict())
    return summary


def _check_args(collection: SampleCollection, field: str, min_score: float) -> None:
    if not 0.0 <= min_score <= 1.0:
        raise DiffuGenError(f"min_score must be in [0, 1], got {min_score}")
    check_label_field(collection, field, (fo.Detections,))
    if len(collection) == 0:
        raise DatasetError("no samples to curate: the view is empty")


def take_labels(collection: SampleCollection, source_field: str, min_score: float = REVIEW_MIN_SCORE, out_field: str = CURATED,
                reviewer: str | None = None, progress: ProgressFn | None = None) -> ReviewSummary:
    """For the samples of ``collection``: take ``out_field``'s labels from ``source_field`` instead.

    E.g. ``take_labels(ds.select(ids), "yolo_detections")`` puts the YOLO labels of those samples
    into ``curated`` (``source="yolo"`` on each label) with the same review rules, and remembers
    the choice (``curated_source``) so a later :func:`apply_review` keeps it.
    """
    _check_args(collection, source_field, min_score)
    ds = collection._root_dataset
    _declare_curated(ds, out_field)
    n = len(collection)
    collection.set_field(CURATED_SOURCE, source_field).save(CURATED_SOURCE)
    summary = ReviewSummary(samples=n, sources={source_field: n})
    _write_curated(collection, source_field, min_score, out_field, summary, progress, 0, n)
    _declare_copied_attributes(ds, out_field)
    _record(ds, "take_labels", reviewer, field=source_field, min_score=min_score, out_field=out_field,
            **summary.to_dict())
    return summary


def _declare_copied_attributes(ds: fo.Dataset, out_field: str) -> None:
    # The copies keep their source's own attributes (DAAM ``word``/``area``, YOLO ``matched``...):
    # declare them so the App can filter on them.
    ds.add_dynamic_sample_fields(fields=out_field, add_mixed=True)


def _record(ds: fo.Dataset, action: str, reviewer: str | None, **details) -> None:
    if reviewer is None:
        try:
            reviewer = getpass.getuser()
        except Exception:  # no login name (containers)
            reviewer = "unknown"
    history = list(ds.info.get("diffugen_reviews", []))
    history.append({"action": action, "reviewer": reviewer, "at": now_iso(), **details})
    ds.info["diffugen_reviews"] = history
    ds.save()
