"""The label score: how sure a DAAM label is, from the attention it was made of.

The paper's score (mean normalised heat × a size term) cannot tell a word that was drawn from one that
was not: every map is min-max rescaled to a peak of 1. The score here reads the maps in **units of
attention** (the softmax probability that the image's positions give the word's tokens, averaged over
steps, layers and heads; :meth:`~diffugen.generation.attention.HeatmapCollector.word_heatmaps` with
``normalize=False``), which the runner keeps as each stored map's ``floor`` and ``peak``.

For an instance (one blob of one word's mask, after the words were resolved against each other) with
pixels ``B``, a word map ``R`` (in units of attention), the sum ``S`` of the prompt's class-word maps, and
the word's mask ``M`` before resolution, the features are:

* ``share``: ``mean_B R / S``: the word's share of the class words' attention there (1 for one word);
* ``log_contrast``: ``log(mean_B R / mean_{not M} R)``: inside vs outside the word's mask;
* ``blob_share``: the blob's part of the attention above the map's floor inside ``M``: a word whose
  mass breaks into many blobs is unsure of each;
* ``kept``: the share of the blob's pixels in ``M`` that resolution left to this word;
* ``log_area``: ``log`` of the blob's area as a fraction of the image (recorded, not scored; below);
* ``cut_kept``: the share of the blob that the cuts to its map's core and to the image's edges left, and the growth
  back over its object's colour gave back (``labels.core``, ``labels.snap``, ``labels.grow``; at most 1): a blob that
  the image says is mostly not an object keeps little;
* ``core_share``: the instance's share of its word's pixels as the cuts end: a word whose object is this
  instance holds most of them here, a word whose pixels spread over several blobs holds a part of them.
* ``log_colour_step``: ``log(1 + ΔE)``, the CIE76 difference between the mean CIELAB colour of the instance's
  inner band and that of the band just outside it (each 1/32 of the image's short side wide, on a grid of about
  64 px on that side): an object differs
  from what surrounds it, while a piece of the background that a word's map settled on, or a cut through one
  object's colour, does not. The image itself is read here (the maps cannot see it); where it is not known, the
  training labels' median stands in (:data:`NO_IMAGE_COLOUR_STEP`);
* ``own_blob_share``, ``own_core_share``: ``blob_share`` and ``core_share`` read within the part of the image that
  the word's occurrence holds, for a word the prompt says more than once ("a red triangle and a yellow
  triangle"; each pixel goes to the occurrence whose map is the highest there, and each occurrence has an object
  of its own, so its instance holds about half of the whole word's attention); for a word said once, the same as
  those two;
* ``repeated``: 1 for an instance of a word said more than once, else 0;
* ``margin``: the mean over the instance of its word's map, min-max normalised, less the highest such mean of
  another class word's map of the prompt (:func:`rival_margin`). Each map is scaled to its own peak, so the word
  whose object this is attends here near its peak and the others do not (a margin near 1). When the model attends to
  one object with two words alike, the margin is near 0; on another word's object, it is negative. ``share`` compares
  the words in units of attention, where a word with a higher floor everywhere looks surer of every object. Objects
  that overlap in the image (a rider on a horse) share the attention of both words there, so their labels get lower
  margins and go to the review more often; the toy world's objects never overlap, so its fit has not seen them.

Every attention feature is a ratio or a share, so the score does not depend on the attention's overall scale,
which differs between families (an MMDiT's softmax runs over image and text keys together, so its text
columns are ~100× smaller than a UNet's cross-attention): the scale matters only where words are
compared with each other (``share``, and the resolution). The absolute peak was tried and dropped: on
the toy world's held-out prompts it changed the AUROC by 0.001 and left more junk labels of objects
not drawn (0.29 per pair instead of 0.21). The blob's size is not scored either: fitted, its weight came
out positive (on the toy world the many small wrong fragments make larger blobs more often right), which
doubts every small object and made a map spread over the background the surest label; without it the
held-out figures were the same. Labels larger than half the image are dropped instead
(``labels.max_area``).

The score is a logistic function of them, ``1 / (1 + exp(-(b + w · f)))``, with ``w`` and ``b`` fitted
(``studies/label_scores.py fit``) on the toy world's training-side prompts, where each label is right or wrong against
the truth in the pixels (IoU ≥ 0.5 with an object of its class as drawn: a colour drawn twice is two objects);
held-out prompts measure it (``bench/label_accuracy.py``). A wrong label that a reviewer trusts costs more than a
right one that is reviewed, so the fit weighs each wrong label ``k`` times a right one, the largest ``k`` that still
keeps 82% of the training side's right labels at the review's threshold 0.5, counted out of sample (five folds of the
training images, each scored by a fit on the others): ``k = 3`` for :data:`WEIGHTS` (``1.75`` for
:data:`JOINT_WEIGHTS`). The score is then the probability that the label is right at odds tilted ``k`` to 1 against
it: a label at 0.5 is ``k`` times as likely right as wrong (the calibrated probability is ``k s / (1 - s + k s)``,
0.75 there), so the labels a reviewer trusts by default are the surer ones. The contrast, the instance's share of its
word's pixels as the cuts end, what resolution and the cuts kept of it, and the margin over the other words' maps
carry the score; a word said twice is read against each occurrence's own part (a second object of one word is not a
fragment). It is fitted on the labels as the defaults make them (the blob as found, then cut to its map's core and
to the image's edges, and grown back over its object's colour): it says whether the label a reviewer sees is right.
Without the cuts (``labels.core: false``,
``labels.snap: 0``) ``cut_kept`` is 1 and ``core_share`` is the blob's share of its word's mask, which the fit has not
seen as often.
It was fitted on a UNet (SD 1.x) model, for the maps of cross-attention (SD 1.x/2.x, SDXL). The joint-attention
families (SD3, FLUX.1, FLUX.2) take the same formula with weights of their own (:data:`JOINT_WEIGHTS`), fitted on
the toy world's SD3-style transformer: the UNet's weights rank its labels about as well but are too sure of them
(BENCHMARKS.md); there ``share`` counts the other way. The samples keep which kind made their maps, so relabeling
scores them alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FEATURES = ("share", "log_contrast", "blob_share", "kept", "cut_kept", "core_share", "log_colour_step",
            "own_blob_share", "own_core_share", "repeated", "margin")  # scored
BLOB_FEATURES = ("share", "log_contrast", "blob_share", "own_blob_share", "kept", "log_area", "repeated")  # as found
# Fitted by ``python -m studies.label_scores fit`` (training-side toy-world prompts); see the docstring.
WEIGHTS = {"share": -1.1726, "log_contrast": 2.8161, "blob_share": 0.936, "kept": 2.4099, "cut_kept": 2.3499,
           "core_share": 2.6948, "log_colour_step": 1.4764, "own_blob_share": 0.3529, "own_core_share": 0.7534,
           "repeated": 0.6942, "margin": 2.4284}
BIAS = -13.4597
# Fitted by ``python -m studies.label_scores fit --model builtin:toyworld-mmdit`` (the SD3-style transformer's labels):
# for maps of joint attention (SD3, FLUX.1, FLUX.2), whose features rank alike but are read otherwise (module docstring).
JOINT_WEIGHTS = {"share": 1.8571, "log_contrast": 1.9715, "blob_share": -0.6133, "kept": 1.2869, "cut_kept": 1.7881,
                 "core_share": 0.6794, "log_colour_step": 1.0902, "own_blob_share": -0.6082, "own_core_share": 1.8312,
                 "repeated": -0.1568, "margin": 0.6741}
JOINT_BIAS = -9.9206
ATTENTION_KINDS = ("cross", "joint")  # what made a map: a UNet's cross-attention, or a transformer's joint attention
NO_IMAGE_COLOUR_STEP = 2.92  # the training labels' median log_colour_step (ΔE 17.5), where the image is not known
_EPS = 1e-9


def instance_features(raw: np.ndarray, total: np.ndarray, word_mask: np.ndarray, blob: np.ndarray,
                      floor: float, part: np.ndarray | None = None) -> dict[str, float]:
    """The features of one blob as found (module docstring): :data:`BLOB_FEATURES`.

    Args:
        raw: ``(H, W)`` the word's map (of this occurrence of it) in units of attention.
        total: ``(H, W)`` the sum of the prompt's class-word maps (``raw`` included).
        word_mask: ``bool (H, W)`` the word's mask before resolution against the other words.
        blob: ``bool (H, W)`` the instance's pixels (after resolution).
        floor: the map's minimum.
        part: ``bool (H, W)`` for a word said more than once, the pixels of this occurrence's split of it;
            ``None`` for a word said once.
    """
    inside = raw[blob]
    outside = raw[~word_mask]
    above = raw - floor
    held = above[blob].sum()
    blob_share = float(held / (above[word_mask].sum() + _EPS))
    return {
        "share": float((inside / (total[blob] + _EPS)).mean()),
        "log_contrast": float(np.log((inside.mean() + _EPS) / ((outside.mean() if outside.size else floor) + _EPS))),
        "blob_share": blob_share,
        "own_blob_share": blob_share if part is None else float(held / (above[word_mask & part].sum() + _EPS)),
        "kept": float(blob.sum() / max(1, _components_under(word_mask, blob).sum())),
        "log_area": float(np.log(blob.mean() + _EPS)),
        "repeated": float(part is not None),
    }


def cut_features(features: dict[str, float], area: float, mask: np.ndarray, word_core: np.ndarray,
                 lab: np.ndarray | None = None, part: np.ndarray | None = None) -> dict[str, float]:
    """The features of what the cuts to the map's core and to the image (``labels.core``, ``labels.snap``) left of a
    blob, and of how it stands out of the image (module docstring): ``cut_kept``, ``core_share``,
    ``own_core_share`` and ``log_colour_step``.

    Args:
        features: the blob's :func:`instance_features` (its ``log_area`` before the cuts).
        area: the instance's area after them, as a fraction of the image.
        mask: ``bool (H, W)`` the instance's pixels after them.
        word_core: ``bool (H, W)`` its word's pixels as the cuts end (the last core; the resolved mask without cuts).
        lab: ``(H, W, 3)`` the image in CIELAB (:func:`image_lab`); ``None``: not known.
        part: as for :func:`instance_features`.
    """
    def share(core: np.ndarray) -> float:
        n = int(np.count_nonzero(core))
        return float(np.count_nonzero(mask & core) / n) if n else 0.0

    core_share = share(word_core)
    return {
        "cut_kept": float(min(1.0, area / max(np.exp(features["log_area"]), _EPS))),
        "core_share": core_share,
        "own_core_share": core_share if part is None else share(word_core & part),
        "log_colour_step": NO_IMAGE_COLOUR_STEP if lab is None else colour_step(lab, mask),
    }


def rival_margin(own: np.ndarray, rivals: Sequence[np.ndarray], mask: np.ndarray) -> float:
    """``margin`` (module docstring): the mean of ``own`` over ``mask`` less the highest mean of one of ``rivals``
    there (without rivals, a prompt of one class word: the mean of ``own``).

    Args:
        own: ``(H, W)`` the instance's word's map, min-max normalised (a word said twice: its occurrences' mean).
        rivals: ``(H, W)`` the other class words' maps, normalised alike.
        mask: ``bool (H, W)`` the instance's pixels; an empty one gives 0.
    """
    if not mask.any():
        return 0.0
    return float(own[mask].mean()) - max((float(r[mask].mean()) for r in rivals), default=0.0)


def image_lab(image: np.ndarray) -> np.ndarray:
    """The image in CIELAB (float32, L in [0, 100]) on a grid of about 64 px on its short side (an integer
    subsampling, by area), what :func:`colour_step` reads: the step is measured at the toy world's resolution, which
    the score was fitted at, whatever the image's size, and the conversion costs the same at any size."""
    height, width = image.shape[:2]
    s = max(1, min(height, width) // 64)
    small = image if s == 1 else cv2.resize(image, (width // s, height // s), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def colour_step(lab: np.ndarray, mask: np.ndarray) -> float:
    """``log(1 + ΔE)`` between the mean CIELAB colour of ``mask``'s inner band and that of the band just outside it,
    each ``max(1, round(min(h, w) / 32))`` cells of ``lab``'s grid wide (2 on the 64-px grid), on the mask's box and
    its margin.

    Args:
        lab: ``(h, w, 3)`` float32 CIELAB (:func:`image_lab`).
        mask: ``bool (H, W)`` at the image's size (brought to ``lab``'s grid by area; a cell more than half in the
            mask is in it, and a mask smaller than one cell keeps the cells it touches); an empty one, or one
            without pixels outside it, gives 0.
    """
    height, width = lab.shape[:2]
    if mask.shape != (height, width):
        cover = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        mask = cover >= 0.5 if (cover >= 0.5).any() else cover > 0
    k = max(1, round(min(height, width) / 32))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    y0, y1 = max(0, ys.min() - 2 * k), min(height, ys.max() + 2 * k + 1)
    x0, x1 = max(0, xs.min() - 2 * k), min(width, xs.max() + 2 * k + 1)
    m = mask[y0:y1, x0:x1].astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    inner = m.astype(bool) & ~(cv2.erode(m, kernel, borderType=cv2.BORDER_REPLICATE) > 0)
    outer = (cv2.dilate(m, kernel) > 0) & ~m.astype(bool)
    if not outer.any():
        return 0.0
    crop = lab[y0:y1, x0:x1]
    return float(np.log1p(np.linalg.norm(crop[inner].mean(0) - crop[outer].mean(0))))


def _components_under(mask: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that ``blob`` touches (what the blob was before resolution)."""
    _, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    ids = np.unique(lab[blob & mask])
    return np.isin(lab, ids[ids > 0])


def attention_score(features: dict[str, float], weights: dict[str, float] | None = None,
                    bias: float | None = None, attention: str = "cross") -> float:
    """The logistic score of one instance's features, in ``(0, 1)``: with ``weights`` and ``bias``, else those fitted
    for maps of the ``attention`` kind (:data:`ATTENTION_KINDS`: :data:`WEIGHTS` or :data:`JOINT_WEIGHTS`)."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTION_KINDS}")
    joint = attention == "joint"
    w = (JOINT_WEIGHTS if joint else WEIGHTS) if weights is None else weights
    b = (JOINT_BIAS if joint else BIAS) if bias is None else bias
    z = b + sum(w[k] * features[k] for k in FEATURES)
    return float(1.0 / (1.0 + np.exp(-z)))


def raw_maps(norm_maps: Sequence[np.ndarray], ranges: Sequence[tuple[float, float]]) -> list[np.ndarray]:
    """Normalised maps ``(H, W)`` in ``[0, 1]`` back in units of attention: ``floor + x * (peak - floor)``."""
    return [np.float32(lo) + m * np.float32(hi - lo) for m, (lo, hi) in zip(norm_maps, ranges)]
