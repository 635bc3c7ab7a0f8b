"""Where DAAM and YOLO agree: per-label matching by mask IoU, per-sample agreement, FiftyOne evaluation.

Per sample, instances of the same class are matched one-to-one by mask IoU (Hungarian
assignment; boxes stand in for labels without masks). Each detection gets ``match_iou`` (its
best-assigned IoU, 0 when unmatched) and ``matched`` (IoU ≥ threshold); the sample gets
``agreement`` = sum of matched IoUs / size of the union of instances (1.0 when both labelers
found nothing), ``daam_unmatched`` and ``yolo_unmatched``. Then FiftyOne's
``evaluate_detections`` runs with either field as ground truth, so the App's evaluation panel and
per-label TP/FP/FN filters work, and two saved views are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection
from scipy.optimize import linear_sum_assignment

from ..common import ProgressFn
from ..errors import DiffuGenError

DISAGREEMENT_VIEW = "daam-vs-yolo-disagreements"
LOW_SCORE_VIEW = "low-score-labels"


@dataclass
class Match:
    """Matching of one sample: per-label IoUs and the sample's agreement."""

    a_iou: np.ndarray  # (n,) IoU of each A label with its assigned B label (0 if none)
    b_iou: np.ndarray  # (m,)
    threshold: float

    @property
    def matched_pairs(self) -> int:
        return int((self.a_iou >= self.threshold).sum())

    @property
    def agreement(self) -> float:
        n, m, k = len(self.a_iou), len(self.b_iou), self.matched_pairs
        if n + m == 0:
            return 1.0
        return float(self.a_iou[self.a_iou >= self.threshold].sum() / (n + m - k))


def _pixel_box(d: fo.Detection, height: int, width: int) -> tuple[int, int, int, int]:
    x, y, w, h = d.bounding_box
    x0, y0 = int(x * width), int(y * height)
    if d.mask is not None:
        return x0, y0, x0 + d.mask.shape[1], y0 + d.mask.shape[0]
    return x0, y0, int(round((x + w) * width)), int(round((y + h) * height))


def _area(d: fo.Detection, box) -> float:
    return float(d.mask.sum()) if d.mask is not None else float(max(0, box[2] - box[0]) * max(0, box[3] - box[1]))


def _window(d: fo.Detection, box, x0, y0, x1, y1) -> np.ndarray:
    # The label's mask (or filled box) over the pixel window [x0, x1) × [y0, y1).
    if d.mask is None:
        return np.ones((y1 - y0, x1 - x0), bool)
    return d.mask[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]


def pair_ious(a: Sequence[fo.Detection], b: Sequence[fo.Detection], height: int, width: int) -> np.ndarray:
    """``(n, m)`` mask IoU of same-class pairs, computed only where their boxes overlap (0 otherwise)."""
    ious = np.zeros((len(a), len(b)))
    boxes_a = [_pixel_box(d, height, width) for d in a]
    boxes_b = [_pixel_box(d, height, width) for d in b]
    areas_a = [_area(d, bx) for d, bx in zip(a, boxes_a)]
    areas_b = [_area(d, bx) for d, bx in zip(b, boxes_b)]
    for r, (da, ba) in enumerate(zip(a, boxes_a)):
        for c, (db, bb) in enumerate(zip(b, boxes_b)):
            if da.label != db.label:
                continue
            x0, y0, x1, y1 = max(ba[0], bb[0]), max(ba[1], bb[1]), min(ba[2], bb[2]), min(ba[3], bb[3])
            if x1 <= x0 or y1 <= y0:
                continue
            inter = float(np.count_nonzero(_window(da, ba, x0, y0, x1, y1) & _window(db, bb, x0, y0, x1, y1)))
            union = areas_a[r] + areas_b[c] - inter
            ious[r, c] = inter / union if union > 0 else 0.0
    return ious


def match_labels(a: Sequence[fo.Detection], b: Sequence[fo.Detection], height: int, width: int,
                 threshold: float = 0.5) -> Match:
    """One-to-one matching of two label sets of the same image, same class only, by mask IoU."""
    ious = pair_ious(a, b, height, width)
    a_iou, b_iou = np.zeros(len(a)), np.zeros(len(b))
    if ious.size:
        rows, cols = linear_sum_assignment(-ious)
        for r, c in zip(rows, cols):
            a_iou[r] = b_iou[c] = ious[r, c]
    return Match(a_iou, b_iou, threshold)


def compare_labels(collection: SampleCollection, daam_field: str = "daam_detections", yolo_field: str = "yolo_detections",
                   iou_threshold: float = 0.5, gt: str = "yolo", eval_key: str = "daam_vs_yolo",
                   agreement_threshold: float = 0.5, min_score: float = 0.5, evaluate: bool = True,
                   progress: ProgressFn | None = None, batch_size: int = 500) -> dict:
    """Compare DAAM and YOLO labels on every sample of ``collection``; returns a summary dict."""
    ds = collection._dataset
    schema = ds.get_field_schema()
    for name in (daam_field, yolo_field):
        if name not in schema:
            raise DiffuGenError(f"{ds.name!r} has no field {name!r}" + (
                "; label it first with `diffugen label DATASET --yolo WEIGHTS`" if name == yolo_field else ""))
    if not 0 < iou_threshold <= 1:
        raise DiffuGenError(f"iou threshold must be in (0, 1], got {iou_threshold}")
    if gt not in ("yolo", "daam"):
        raise DiffuGenError(f"gt must be 'yolo' or 'daam', got {gt!r}")
    total = len(collection)
    if total == 0:
        raise DiffuGenError(f"nothing to compare: the view of {ds.name!r} is empty")
    if collection.count("metadata") < total:
        collection.compute_metadata()
    agreements = []
    for start in range(0, total, batch_size):
        chunk = collection.skip(start).limit(batch_size)
        ids, widths, heights, daam, yolo = chunk.values(["id", "metadata.width", "metadata.height", daam_field, yolo_field])
        ious: dict[str, dict] = {daam_field: {}, yolo_field: {}}
        agree, un_d, un_y = {}, {}, {}
        for i, w, h, dd, yy in zip(ids, widths, heights, daam, yolo):
            a = dd.detections if dd is not None else []
            b = yy.detections if yy is not None else []
            m = match_labels(a, b, h, w, iou_threshold)
            ious[daam_field][i], ious[yolo_field][i] = m.a_iou.tolist(), m.b_iou.tolist()
            agree[i], un_d[i], un_y[i] = m.agreement, len(a) - m.matched_pairs, len(b) - m.matched_pairs
        # Only the new per-label attributes are written (not the labels and their masks again).
        for name, per_sample in ious.items():
            have = {i: v for i, v in per_sample.items() if v}
            ds.set_values(f"{name}.detections.match_iou", have, key_field="id")
            ds.set_values(f"{name}.detections.matched", {i: [x >= iou_threshold for x in v] for i, v in have.items()},
                          key_field="id")
        ds.set_values("agreement", agree, key_field="id")
        ds.set_values("daam_unmatched", un_d, key_field="id")
        ds.set_values("yolo_unmatched", un_y, key_field="id")
        agreements += list(agree.values())
        if progress is not None:
            progress(min(start + batch_size, total), total, f"matched {min(start + batch_size, total)}/{total}")
    summary = {"samples": total, "mean_agreement": float(np.mean(agreements)), "iou_threshold": iou_threshold}
    if evaluate:
        pred, truth = (daam_field, yolo_field) if gt == "yolo" else (yolo_field, daam_field)
        results = collection.evaluate_detections(pred, gt_field=truth, eval_key=eval_key, iou=iou_threshold,
                                                 use_masks=True, progress=False)
        summary.update({"eval_key": eval_key, "gt_field": truth, "pred_field": pred, "mAP": None})
        summary["report"] = {k: v for k, v in results.report().items() if k in ("micro avg", "macro avg", "weighted avg")}
    ds.save_view(DISAGREEMENT_VIEW, ds.match(F("agreement") < agreement_threshold), overwrite=True,
                 description=f"samples where DAAM and YOLO agree less than {agreement_threshold} (mean IoU)")
    ds.save_view(LOW_SCORE_VIEW, ds.filter_labels(daam_field, F("confidence") < min_score), overwrite=True,
                 description=f"DAAM labels with score below {min_score}")
    ds.info["diffugen_compare"] = {k: v for k, v in summary.items() if k != "report"}
    ds.save()
    return summary
