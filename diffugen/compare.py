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
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

import fiftyone as fo
from fiftyone import ViewField as F

from .errors import DiffuGenError

DISAGREEMENT_VIEW = "daam-vs-yolo-disagreements"
LOW_SCORE_VIEW = "low-score-labels"


def full_masks(detections: Sequence[fo.Detection], height: int, width: int) -> np.ndarray:
    """``(n, height, width)`` bool: each detection's mask pasted at its box (the box itself if no mask)."""
    out = np.zeros((len(detections), height, width), bool)
    for k, d in enumerate(detections):
        x, y, w, h = d.bounding_box
        x0, y0 = int(x * width), int(y * height)
        if d.mask is not None:
            sub = d.mask[: height - y0, : width - x0]
            out[k, y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
        else:
            out[k, y0 : int(round((y + h) * height)), x0 : int(round((x + w) * width))] = True
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask IoU between ``(n, H, W)`` and ``(m, H, W)`` bool stacks → ``(n, m)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


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


def match_labels(a: Sequence[fo.Detection], b: Sequence[fo.Detection], height: int, width: int,
                 threshold: float = 0.5) -> Match:
    """One-to-one matching of two label sets of the same image, same class only, by mask IoU."""
    ious = iou_matrix(full_masks(a, height, width), full_masks(b, height, width))
    same = np.array([[da.label == db.label for db in b] for da in a], bool).reshape(len(a), len(b))
    ious = np.where(same, ious, 0.0)
    a_iou, b_iou = np.zeros(len(a)), np.zeros(len(b))
    if ious.size:
        rows, cols = linear_sum_assignment(-ious)
        for r, c in zip(rows, cols):
            a_iou[r] = b_iou[c] = ious[r, c]
    return Match(a_iou, b_iou, threshold)


def compare_labels(collection, daam_field: str = "daam_detections", yolo_field: str = "yolo_detections",
                   iou_threshold: float = 0.5, gt: str = "yolo", eval_key: str = "daam_vs_yolo",
                   agreement_threshold: float = 0.5, min_score: float = 0.5, evaluate: bool = True,
                   progress: Callable[[int, int, str], None] | None = None, batch_size: int = 500) -> dict:
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
        out_daam, out_yolo, agree, un_d, un_y = {}, {}, {}, {}, {}
        for i, w, h, dd, yy in zip(ids, widths, heights, daam, yolo):
            a = dd.detections if dd is not None else []
            b = yy.detections if yy is not None else []
            m = match_labels(a, b, h, w, iou_threshold)
            for label, iou in zip(a, m.a_iou):
                label["match_iou"], label["matched"] = float(iou), bool(iou >= iou_threshold)
            for label, iou in zip(b, m.b_iou):
                label["match_iou"], label["matched"] = float(iou), bool(iou >= iou_threshold)
            out_daam[i], out_yolo[i] = dd, yy
            agree[i], un_d[i], un_y[i] = m.agreement, len(a) - m.matched_pairs, len(b) - m.matched_pairs
        ds.set_values(daam_field, out_daam, key_field="id")
        ds.set_values(yolo_field, out_yolo, key_field="id")
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
