"""The review panel's library side (``operators/panel.py`` is the panel): its keys, the queue cursor,
the overlay pictures and the score histogram plot, kept here so that the panel stays thin and these
are testable without the App.

The review logic itself (decisions, the queue, taking the other labeler's labels) is in
:mod:`diffugen.curation.review`, as for the operators and the CLI.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import fiftyone as fo
import numpy as np

from ..curation.review import (CURATED_SOURCE, QueueCounts, QueueEntry, QueueSettings, ScoreHistograms,
                               other_labeler_field)
from ..labels.daam import LabelParams

# key → panel action. The App gives Python panels no key bindings; operators/review_keys.js (a
# plain script the App loads, no build step) listens for these while the panel is shown and
# sends the key to the panel, whose ``on_key`` looks it up here.
KEYS: dict[str, str] = {"a": "approve", "r": "reject", "u": "undo", "n": "next", "p": "previous",
                        "o": "take_other", "0": "show_labels"}
KEYS.update({str(i): "show_heatmap" for i in range(1, 10)})  # 1-9: the i-th class word's heatmap
KEY_HELP = "keys: a approve · r reject · u undo · n next · p previous · o other labeler · 0 labels · 1-9 heatmaps"

_PALETTE = [(66, 135, 245), (245, 130, 48), (60, 180, 75), (230, 25, 75), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]  # RGB, one per class (in class order)
_HIGHLIGHT = (255, 230, 0)  # RGB: the label under review


def step(entries: Sequence[QueueEntry], label_id: str | None, forward: bool = True,
         undecided_only: bool = True) -> QueueEntry | None:
    """The queue entry after (``forward=False``: before) the one of ``label_id``, wrapping around.

    Args:
        label_id: ``None`` or a label no longer in the queue: start from the beginning (the end).
        undecided_only: skip labels already decided (approved, rejected, other labeler).

    Returns:
        ``None`` when there is no such entry (an empty queue, or nothing left to decide).
    """
    if not entries:
        return None
    ids = [e.label_id for e in entries]
    start = ids.index(label_id) if label_id in ids else (-1 if forward else 0)
    n = len(entries)
    for k in range(1, n + 1):
        e = entries[(start + (k if forward else -k)) % n]
        if not undecided_only or e.decision is None:
            return e
    return None


def current_entry(entries: Sequence[QueueEntry], label_id: str | None) -> QueueEntry | None:
    """The entry of ``label_id``; else the first undecided one; else the first one (``None``: empty queue)."""
    for e in entries:
        if e.label_id == label_id:
            return e
    return step(entries, None) or (entries[0] if entries else None)


def first_of_sample(entries: Sequence[QueueEntry], sample_id: str) -> QueueEntry | None:
    """The first undecided entry of a sample, else its first entry, else ``None`` (not in the queue)."""
    mine = [e for e in entries if e.sample_id == sample_id]
    return next((e for e in mine if e.decision is None), mine[0] if mine else None)


def rethreshold_params(daam_params: dict | None, threshold: float | None) -> LabelParams:
    """A sample's own DAAM label parameters (its ``daam_params``, threshold stored as text) with a new
    ``threshold`` (``None`` or ``0``: Otsu; the panel's slider starts at 0).

    Raises:
        pydantic.ValidationError (a ``ValueError``): a threshold outside ``[0, 1)``.
    """
    values = {k: v for k, v in (daam_params or {}).items() if k in LabelParams.model_fields}
    values["threshold"] = "otsu" if not threshold else float(threshold)
    return LabelParams(**values)


def jpeg_data_url(image_rgb: np.ndarray, quality: int = 90) -> str:
    """An ``(H, W, 3)`` uint8 RGB image as a ``data:image/jpeg;base64,...`` URL (an ``<img>`` source)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def display_scale(height: int, width: int, min_side: int = 256, max_side: int = 512) -> float:
    """The factor that brings the image's longer side into ``[min_side, max_side]`` (tiny images grow)."""
    longer = max(height, width)
    if longer < min_side:
        return min_side / longer
    return min(1.0, max_side / longer)


def _class_color(cls: str | None, classes: Sequence[str]) -> tuple[int, int, int]:
    i = list(classes).index(cls) if cls in classes else len(classes)
    return _PALETTE[i % len(_PALETTE)]


def _draw_detection(canvas: np.ndarray, det: fo.Detection, color, thick: int, fill: float) -> None:
    h, w = canvas.shape[:2]
    x, y, bw, bh = det.bounding_box
    x0, y0 = round(x * w), round(y * h)
    x1, y1 = max(x0 + 1, round((x + bw) * w)), max(y0 + 1, round((y + bh) * h))
    mask = det.get_mask() if hasattr(det, "get_mask") else det.mask
    if mask is not None and mask.size and fill > 0:
        m = cv2.resize(mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST).astype(bool)
        region = canvas[y0:y1, x0:x1]
        m = m[: region.shape[0], : region.shape[1]]
        region[m] = (region[m] * (1 - fill) + np.array(color) * fill).astype(np.uint8)
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, thick)
    text = f"{det.label or ''} {det.confidence:.2f}" if det.confidence is not None else (det.label or "")
    cv2.putText(canvas, text, (x0 + 2, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)


def overlay(image_path: str, detections: Sequence[fo.Detection] = (), classes: Sequence[str] = (),
            highlight: str | None = None, heatmap_path: str | None = None, min_side: int = 256,
            max_side: int = 512) -> np.ndarray:
    """The image with its labels drawn (mask tint, box, class and score), the label ``highlight``
    (an id) outlined in yellow; with ``heatmap_path``, a word's heatmap blended over the image
    (JET colours) and only the highlighted label's outline.

    Returns:
        ``(H', W', 3)`` uint8 RGB, scaled by :func:`display_scale`.
    """
    bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"image not found or unreadable: {image_path}")
    s = display_scale(*bgr.shape[:2], min_side=min_side, max_side=max_side)
    size = (max(1, round(bgr.shape[1] * s)), max(1, round(bgr.shape[0] * s)))
    canvas = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_NEAREST if s > 1 else cv2.INTER_AREA),
                          cv2.COLOR_BGR2RGB)
    if heatmap_path is not None:
        heat = cv2.imread(heatmap_path, cv2.IMREAD_GRAYSCALE)
        if heat is None:
            raise FileNotFoundError(f"heatmap not found or unreadable: {heatmap_path}")
        heat = cv2.applyColorMap(cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
        canvas = cv2.addWeighted(canvas, 0.45, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.55, 0)
    others = [d for d in detections if d.id != highlight]
    chosen = [d for d in detections if d.id == highlight]
    if heatmap_path is None:
        for d in others:
            _draw_detection(canvas, d, _class_color(d.label, classes), 1, 0.35)
    for d in chosen:
        _draw_detection(canvas, d, _HIGHLIGHT, 2, 0.0 if heatmap_path else 0.45)
    return canvas


def histogram_plot(hist: ScoreHistograms, threshold: float | None = None) -> tuple[list[dict], dict]:
    """Plotly traces (one bar series per class, overlaid) and layout of the score histograms, with a
    dashed line at the review ``threshold``; a bar's ``x`` is its bin's lower edge."""
    edges = hist.edges
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    data = [{"type": "bar", "name": cls, "x": edges[:-1], "y": counts, "width": width, "offset": 0, "opacity": 0.6,
             "hovertemplate": f"{cls}: %{{y}} labels scored %{{x:.2f}}+<extra></extra>"}
            for cls, counts in hist.counts.items()]
    layout = {"barmode": "overlay", "height": 240, "margin": {"l": 40, "r": 10, "t": 30, "b": 40},
              "title": {"text": "label scores per class (a click on a bar: queue the labels below it)", "font": {"size": 11}},
              "xaxis": {"title": {"text": "label score"}, "range": [0, 1]}, "yaxis": {"title": {"text": "labels"}},
              "showlegend": True, "legend": {"x": 0.01, "y": 0.99, "bgcolor": "rgba(0,0,0,0)"}}
    if threshold is not None:
        layout["shapes"] = [{"type": "line", "x0": threshold, "x1": threshold, "yref": "paper", "y0": 0, "y1": 1,
                             "line": {"dash": "dash", "width": 2, "color": "#e33"}}]
    return data, layout


@dataclass
class PanelView:
    """What the panel shows: small values for ``ctx.panel.state``, pictures for ``ctx.panel.data``."""

    state: dict
    data: dict = field(default_factory=dict)


def _picture(image_path: str, detections, classes, highlight=None, heatmap_path=None) -> tuple[str | None, str]:
    """The overlay as a data URL, or ``None`` and why (a media file is gone)."""
    try:
        return jpeg_data_url(overlay(image_path, detections, classes, highlight, heatmap_path)), ""
    except FileNotFoundError as err:
        return None, str(err)


def queue_header(counts: QueueCounts, settings: QueueSettings) -> str:
    """The panel's first line: the queue's field and rule, and what is left of it."""
    rule = f"score below {settings.min_score:.2f}" + (" or unmatched" if settings.include_unmatched else "")
    other = f" · {counts.other} taken from the other labeler" if counts.other else ""
    return (f"**Review queue** of `{settings.field}` ({rule}): **{counts.left} left** of {counts.total} · "
            f"{counts.approved} approved · {counts.rejected} rejected{other}")


def panel_view(dataset: fo.Dataset, entries: Sequence[QueueEntry], label_id: str | None, settings: QueueSettings,
               heatmap: int = 0) -> PanelView:
    """The panel's content for the label ``label_id`` (else the first undecided one) of the queue ``entries``.

    Args:
        heatmap: ``0``: the image with the labels; ``i``: the sample's ``i``-th class word's heatmap.
    """
    counts = QueueCounts.of(entries)
    entry = current_entry(entries, label_id)
    state = {"header": queue_header(counts, settings), "field": settings.field,
             "label_id": entry.label_id if entry else None}
    if entry is None:
        state["header"] += ("\n\nNothing is queued: run the `review` operator (or `diffugen review`), "
                            "or pick a threshold on the histogram and rebuild the queue.")
        return PanelView(state, {"images": {}})
    sample = dataset[entry.sample_id]
    other = other_labeler_field(dataset, settings.field)
    words = [hm["word"] for hm in sample["word_heatmaps"] or []] if sample.has_field("word_heatmaps") else []
    heatmap = heatmap if 0 < heatmap <= len(words) else 0
    classes = sorted(set(dataset.distinct(f"{settings.field}.detections.label")))
    own = sample[settings.field].detections if sample[settings.field] is not None else []
    hm_path = sample["word_heatmaps"][heatmap - 1].map_path if heatmap else None
    images = {}
    images["left"], problem = _picture(sample.filepath, own, classes, entry.label_id, hm_path)
    left = problem or (settings.field + (f" · heatmap of {words[heatmap - 1]!r}" if heatmap else "")
                       + " (yellow: this label)")
    if other is None:
        right, has_right = "no other labeler's labels on this dataset (label_yolo, then compare_labels)", False
    else:
        theirs = sample[other].detections if sample[other] is not None else []
        images["right"], problem = _picture(sample.filepath, theirs, classes)
        right, has_right = problem or f"{other}: {len(theirs)} labels", not problem
    taken = sample.has_field(CURATED_SOURCE) and sample[CURATED_SOURCE] not in (None, settings.field)
    state.update({"label_text": label_text(entry, entries, sample), "words": words, "heatmap": heatmap,
                  "left_caption": left, "right_caption": right, "right_has_image": has_right,
                  "other_field": other, "taken_other": taken})
    return PanelView(state, {"images": images})


def label_text(entry: QueueEntry, entries: Sequence[QueueEntry], sample: fo.Sample) -> str:
    """Markdown: which label this is, its score, its decision, its sample and why it is queued."""
    i = [e.label_id for e in entries].index(entry.label_id) + 1
    score = "none" if entry.confidence is None else f"{entry.confidence:.2f}"
    decision = entry.decision or "not decided"
    prompt = sample["prompt"] if sample.has_field("prompt") else ""
    why = "; ".join(entry.reasons) or "none by the current rules (it was queued with other settings)"
    return (f"**Label {i} of {len(entries)}**: `{entry.label}` · score **{score}** · **{decision}**\n\n"
            f"sample `{entry.sample_id}` · {prompt}\n\n"
            f"Why it is queued: {why}")
