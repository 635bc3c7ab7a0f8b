"""Review and curation: queue doubtful labels, apply the reviewer's decisions into ``curated``.

The workflow (the FiftyOne operators ``review`` and ``apply_review`` call these functions)::

    build_review_queue(ds)            # tag low-score / unmatched labels ``needs_review``
    ... in the App, tag labels ``approved`` or ``rejected`` (label tags) ...
    apply_review(ds)                  # write the ``curated`` field from the decisions
    take_labels(ds.select(ids), "yolo_detections")   # these samples: YOLO instead of DAAM

One label at a time (the App's review panel, ``operators/panel.py``, calls these): ``review_queue``
lists the queued labels with the reasons they are doubtful (``label_reasons``) and their decisions,
``queue_counts`` says what is left, ``decide_label`` approves or rejects one label,
``take_other_labels`` takes the other labeler's labels for some samples, ``relabel_for_review``
re-thresholds samples and queues their new labels, ``score_histograms`` bins the scores per class.

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
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING

import fiftyone as fo
import numpy as np
from bson import ObjectId
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from ..common import REVIEW_MIN_SCORE, ProgressFn, report
from ..errors import DatasetError, DiffuGenError
from ..store.dataset import check_label_field, now_iso

if TYPE_CHECKING:
    from ..labels.daam import LabelParams

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
    count = _tag_queue(collection, field, min_score, include_unmatched)
    ds = collection._root_dataset
    ds.save_view(view_name, collection.select_labels(tags=NEEDS_REVIEW, fields=field), overwrite=True)
    ds.info["diffugen_review_queue"] = {"field": field, "min_score": min_score,
                                        "include_unmatched": include_unmatched, "labels": count, "at": now_iso()}
    ds.save()
    return count


def _tag_queue(collection: SampleCollection, field: str, min_score: float, include_unmatched: bool) -> int:
    collection.untag_labels(NEEDS_REVIEW, label_fields=[field])
    queue = collection.filter_labels(field, _review_filter(min_score, include_unmatched))
    queue.tag_labels(NEEDS_REVIEW, label_fields=[field])
    return collection.count_label_tags(label_fields=[field]).get(NEEDS_REVIEW, 0)


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


# ---- one label at a time (the review panel) ------------------------------------------------------
SMALL_AREA = 0.01  # a label covering less than this fraction of the image is called small
# A label whose colour differs from its surroundings' by less than this (CIE76 ΔE) is called flat: 5% of right
# toy-world labels are below 12, half of the wrong ones below 11.
FLAT_COLOUR_STEP = 10.0
# A label whose word's map stands less than this above another class word's there (each scaled to its own peak) is
# called contested: 5% of right toy-world labels are below 0.1, a fifth of the wrong ones.
RIVAL_MARGIN = 0.1
OTHER_LABELER = "other labeler"  # a queue entry's decision when its sample takes the other labeler's labels
_DECISIONS = (APPROVED, REJECTED)


@dataclass(frozen=True)
class QueueSettings:
    """How the review queue of a dataset was built (the last :func:`build_review_queue`)."""

    field: str = "daam_detections"
    min_score: float = REVIEW_MIN_SCORE
    include_unmatched: bool = True


def queue_settings(collection: SampleCollection) -> QueueSettings:
    """The settings of the last :func:`build_review_queue` on ``collection``'s dataset (defaults if none ran)."""
    info = collection._root_dataset.info.get("diffugen_review_queue") or {}
    default = QueueSettings()
    return QueueSettings(field=info.get("field", default.field), min_score=info.get("min_score", default.min_score),
                         include_unmatched=info.get("include_unmatched", default.include_unmatched))


@dataclass
class QueueEntry:
    """One label of the review queue, with why it is there and what the reviewer decided."""

    sample_id: str
    label_id: str
    label: str | None  # the class
    confidence: float | None  # the label score
    decision: str | None  # APPROVED, REJECTED, OTHER_LABELER (take_labels chose another field) or None
    reasons: list[str]  # why it is doubtful, in words (:func:`label_reasons`)


@dataclass(frozen=True)
class QueueCounts:
    """Labels in the queue: all of them, decided each way, and ``left`` (not decided yet)."""

    total: int = 0
    approved: int = 0
    rejected: int = 0
    other: int = 0  # in samples that take the other labeler's labels instead

    @property
    def left(self) -> int:
        return self.total - self.approved - self.rejected - self.other

    @classmethod
    def of(cls, entries: list[QueueEntry]) -> QueueCounts:
        return cls(len(entries), sum(e.decision == APPROVED for e in entries),
                   sum(e.decision == REJECTED for e in entries), sum(e.decision == OTHER_LABELER for e in entries))


def label_reasons(label: dict, min_score: float, small_area: float = SMALL_AREA) -> list[str]:
    """Why a label is doubtful, in words, from its attributes (a label document or ``Label.to_dict()``).

    Reasons: no score, a score below ``min_score`` (the review threshold), ``matched == False``
    (:func:`diffugen.labels.compare.compare_labels` found no label of the other labeler over its
    IoU threshold; ``match_iou`` is the best IoU it had), the attention score's features ``share``,
    ``blob_share``, ``cut_kept`` and ``core_share`` (of a repeated word's occurrence: ``own_blob_share``,
    ``own_core_share``) below one half (:mod:`diffugen.labels.scoring`), a colour step to its
    surroundings (``log_colour_step``) below ΔE :data:`FLAT_COLOUR_STEP`, a margin over the other class words' maps
    (``margin``) below :data:`RIVAL_MARGIN`, and an area (the DAAM ``area``, else the box)
    below ``small_area`` of the image. An empty list: nothing is wrong with it by these rules.
    """
    reasons = []
    score = label.get("confidence")
    if score is None:
        reasons.append("no label score")
    elif score < min_score:
        reasons.append(f"score {score:.2f} is below the review threshold {min_score:.2f}")
    if label.get("matched") is False:
        iou = label.get("match_iou")
        best = f", best IoU {iou:.2f}" if isinstance(iou, (int, float)) else ""
        reasons.append(f"the other labeler has no matching label (compare_labels{best})")
    # A word said more than once: its occurrence's own part is what its instance is measured against.
    share, blob_share = label.get("share"), label.get("own_blob_share", label.get("blob_share"))
    if isinstance(share, (int, float)) and share < 0.5:
        reasons.append(f"other class words draw most of the attention here (this word's share {share:.0%})")
    if isinstance(blob_share, (int, float)) and blob_share < 0.5:
        reasons.append(f"the word's attention is spread over several blobs (this one holds {blob_share:.0%})")
    cut_kept, core_share = label.get("cut_kept"), label.get("own_core_share", label.get("core_share"))
    if isinstance(cut_kept, (int, float)) and cut_kept < 0.5:
        reasons.append(f"the image's edges cut most of its blob away (it kept {cut_kept:.0%})")
    if isinstance(core_share, (int, float)) and core_share < 0.5:
        reasons.append(f"it holds a small part of its word's object pixels ({core_share:.0%})")
    margin = label.get("margin")
    if isinstance(margin, (int, float)) and margin < RIVAL_MARGIN:
        reasons.append(f"another class word's map is about as high here (margin {margin:.2f} of its peak)")
    step = label.get("log_colour_step")
    if isinstance(step, (int, float)) and math.expm1(step) < FLAT_COLOUR_STEP:
        reasons.append(f"it hardly stands out from what surrounds it (colour step ΔE {math.expm1(step):.0f})")
    area, what = label.get("area"), "its mask"
    if area is None and label.get("bounding_box"):
        box = label["bounding_box"]
        area, what = box[2] * box[3], "its box"
    if area is not None and area < small_area:
        reasons.append(f"small: {what} covers {area:.1%} of the image")
    return reasons


# What the queue listing reads of each label (not its mask).
_ENTRY_KEYS = ("_id", "label", "confidence", "tags", "matched", "match_iou", "area", "bounding_box", "share",
               "blob_share", "cut_kept", "core_share", "log_colour_step", "own_blob_share", "own_core_share", "margin")


def review_queue(collection: SampleCollection, field: str | None = None, min_score: float | None = None) -> list[QueueEntry]:
    """The labels of ``field`` tagged ``needs_review`` in ``collection``, in sample order then label order.

    A label's decision is its ``approved``/``rejected`` tag, else :data:`OTHER_LABELER` when
    :func:`take_labels` chose another field for its sample (its labels are not curated from ``field``).

    Args:
        field: default: the field of the last :func:`build_review_queue` (:func:`queue_settings`).
        min_score: the review threshold the reasons refer to; default: the queue's.
    """
    settings = queue_settings(collection)
    field = field or settings.field
    min_score = settings.min_score if min_score is None else min_score
    path = _list_path(collection, field)
    queued = collection.filter_labels(field, F("tags").contains(NEEDS_REVIEW))
    keys = {k: f"$$this.{k}" for k in _ENTRY_KEYS}
    project = {"$map": {"input": {"$ifNull": [f"${path}", []]}, "as": "this", "in": keys}}
    if CURATED_SOURCE in collection.get_field_schema():
        ids, labels, chosen = queued.values(["id", project, CURATED_SOURCE])
    else:
        (ids, labels), chosen = queued.values(["id", project]), itertools.repeat(None)
    entries = []
    for sample_id, labs, source in zip(ids, labels, chosen):
        for lab in labs or ():
            tags = lab.get("tags") or ()
            decision = next((d for d in _DECISIONS if d in tags), None)
            if decision is None and source not in (None, field):
                decision = OTHER_LABELER
            entries.append(QueueEntry(sample_id, str(lab["_id"]), lab.get("label"), lab.get("confidence"), decision,
                                      label_reasons(lab, min_score)))
    return entries


def queue_counts(collection: SampleCollection, field: str | None = None) -> QueueCounts:
    """How many labels the review queue has, how many were approved or rejected, how many are left."""
    return QueueCounts.of(review_queue(collection, field))


def decide_label(collection: SampleCollection, label_id: str, decision: str | None, field: str | None = None) -> None:
    """Tag one label of ``field`` ``approved`` or ``rejected`` (replacing an earlier decision), or, with
    ``decision=None``, take its decision back. :func:`apply_review` reads these tags.

    Raises:
        DiffuGenError: an unknown decision, or no label ``label_id`` in ``field``.
    """
    if decision not in (*_DECISIONS, None):
        raise DiffuGenError(f"decision must be {APPROVED!r}, {REJECTED!r} or None, got {decision!r}")
    field = field or queue_settings(collection).field
    path = _list_path(collection, field)
    view = collection._root_dataset.select_labels(ids=[label_id], fields=field)
    if view.count(path) != 1:
        raise DiffuGenError(f"no label {label_id!r} in field {field!r}")
    view.untag_labels(list(_DECISIONS), label_fields=[field])
    if decision is not None:
        view.tag_labels(decision, label_fields=[field])


def other_labeler_field(collection: SampleCollection, field: str) -> str | None:
    """The other labeler's counterpart of ``field`` (``daam_detections`` ↔ ``yolo_detections``), or
    ``None`` when the dataset has no such ``Detections`` field (no YOLO labels yet)."""
    prefix, _, rest = field.partition("_")
    other = {"daam": "yolo", "yolo": "daam"}.get(prefix)
    if other is None:
        return None
    name = f"{other}_{rest}"
    schema = collection.get_field_schema()
    doc_type = getattr(schema.get(name), "document_type", None)
    return name if doc_type is not None and issubclass(doc_type, fo.Detections) else None


def take_other_labels(collection: SampleCollection, field: str | None = None, reviewer: str | None = None) -> ReviewSummary:
    """For the samples of ``collection`` (e.g. one: ``ds.select(sample_id)``): curate the other labeler's
    labels instead of ``field``'s (:func:`take_labels` with :func:`other_labeler_field`), with the
    queue's review threshold.

    Raises:
        DiffuGenError: the dataset has no other labeler's field.
    """
    settings = queue_settings(collection)
    field = field or settings.field
    other = other_labeler_field(collection, field)
    if other is None:
        raise DiffuGenError(f"no other labeler's field for {field!r}: label the dataset with YOLO first "
                            f"(`diffugen label DATASET --yolo WEIGHTS`)")
    return take_labels(collection, other, min_score=settings.min_score, reviewer=reviewer)


def requeue_labels(collection: SampleCollection) -> int:
    """Queue the labels of ``collection`` again by the dataset's queue settings (after a relabel gave
    its samples new labels); the rest of the queue and its saved view are left as they are.

    Returns:
        The number of labels of ``collection`` now in the queue.
    """
    s = queue_settings(collection)
    n = _tag_queue(collection, s.field, s.min_score, s.include_unmatched)
    ds = collection._root_dataset
    if "diffugen_review_queue" in ds.info:
        ds.info["diffugen_review_queue"]["labels"] = ds.count_label_tags(label_fields=[s.field]).get(NEEDS_REVIEW, 0)
        ds.save()
    return n


def relabel_for_review(collection: SampleCollection, params: LabelParams) -> int:
    """Re-threshold the DAAM labels of ``collection`` (:func:`diffugen.labels.relabel.relabel` with
    ``params``) and queue its new labels by the queue settings.

    The new labels have new ids: the decisions taken on the old ones are gone with them.

    Returns:
        The number of the collection's labels in the queue afterwards.
    """
    from ..labels.relabel import relabel

    relabel(collection, params)
    return requeue_labels(collection)


@dataclass
class ScoreHistograms:
    """Label scores per class, binned on ``[0, 1]``: ``counts[cls][i]`` labels in ``[edges[i], edges[i+1])``
    (the last bin includes 1); ``unscored[cls]``: labels without a score."""

    edges: list[float]
    counts: dict[str, list[int]]
    unscored: dict[str, int]


def score_histograms(collection: SampleCollection, field: str | None = None, bins: int = 20) -> ScoreHistograms:
    """The label scores (``confidence``) of ``field`` per class, as histograms to pick a review threshold by."""
    if bins < 1:
        raise DiffuGenError(f"bins must be at least 1, got {bins}")
    field = field or queue_settings(collection).field
    path = _list_path(collection, field)
    classes, scores = collection.values([f"{path}.label", f"{path}.confidence"], unwind=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    per_class: dict[str, list[float]] = {}
    unscored: dict[str, int] = defaultdict(int)
    for cls, score in zip(classes, scores):
        scored = per_class.setdefault(cls or "(no class)", [])
        if score is None:
            unscored[cls or "(no class)"] += 1
        else:
            scored.append(score)
    counts = {c: np.histogram(np.clip(v, 0.0, 1.0), bins=edges)[0].astype(int).tolist() for c, v in sorted(per_class.items())}
    return ScoreHistograms([round(float(e), 6) for e in edges], counts, dict(unscored))
