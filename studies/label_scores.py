"""The label score's fit: which signals tell a right DAAM label from a wrong one, on the toy world.

Usage (from the repository root, virtualenv active)::

    python -m studies.label_scores collect --split train --n 200      # training-side captions
    python -m studies.label_scores collect --split held-out --n 200   # held-out captions
    python -m studies.label_scores collect --split fresh --n 120      # held-out captions after the first 120
    python -m studies.label_scores fit                                # fit on train, report the others
    python -m studies.label_scores wrong                              # the confident wrong labels, pictured

``--model builtin:toyworld-mmdit`` (both commands) does the same for the SD3-style transformer trained on
the toy world, in ``studies/out/label_scores/toyworld-mmdit/``: its fit is what the joint-attention families
ship (:data:`~diffugen.labels.scoring.JOINT_WEIGHTS`, judged as ``shipped``).

``collect`` generates a dataset through DiffuGen's own ``generate`` (txt2img of toy-world captions,
then img2img and inpaint children of them) with the shipped ``builtin:toyworld`` model and writes a
manifest of every sample (its image, prompt and per-word heatmaps with their scale in units of
attention) to ``studies/out/label_scores/<split>/manifest.json``, so that the fit can relabel the
same heatmaps many times without generating again. ``fit`` labels both splits with
:func:`diffugen.labels.daam.label_heatmaps`, judges each label against the truth read back from the
pixels (:func:`diffugen.toyworld.evaluation.judge_labels`, per object drawn; ``--judge colour``: per
requested colour), fits the logistic score (:func:`diffugen.labels.scoring.attention_score`) on the training
split's labels and prints the held-out metrics of the
paper's score and the fitted one. The product's numbers are ``bench/label_accuracy.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import ROOT, private_database  # noqa: E402

OUT = ROOT / "studies" / "out" / "label_scores"
SHAPES = ("circle", "square", "triangle")
TRAIN_FIRST_SEED = 0  # training captions (seeds below HELD_OUT_SEED)
MODELS = ("builtin:toyworld", "builtin:toyworld-mmdit")
# The "fresh" split: held-out captions after the first FRESH_SKIP, which the held-out split, the product's runs and the
# choices made on them used (``bench/label_accuracy.py --skip 120`` generates the same ones).
FRESH_SKIP = 120
SPLITS = ("train", "held-out", "fresh")


def model_folder(model: str) -> Path:
    """Where a model's collected splits live: ``OUT`` for the UNet model (as before), a subfolder for another."""
    return OUT if model == MODELS[0] else OUT / model.removeprefix("builtin:")


def study_config(name: str, captions: list[str], out: Path, children: int | None, model: str = MODELS[0]):
    """The generate config of a split: txt2img of ``captions``, img2img and inpaint of ``children`` parents."""
    from diffugen.config import DiffuGenConfig
    from diffugen.toyworld.evaluation import child_tasks

    extra = child_tasks(children) if children else {}
    return DiffuGenConfig(
        dataset_name=name, output_root=str(out), model=model, device="cpu",
        width=64, height=64, steps=25, batch_size=8, negative_prompt="",  # guidance: the model's own (7.5; MMDiT 3)
        scheduler="ddim" if model == MODELS[0] else None,  # the MMDiT: its own flow-matching Euler
        templates=["{caption}"], attributes={"caption": captions},
        seeds={"min": 0, "max": 1_000_000, "count_per_prompt": 1},
        class_words=list(SHAPES), classes=list(SHAPES), **extra,
    )


def collect(split: str, n: int, children: int, hollow_rate: float, model: str = MODELS[0]) -> Path:
    private_database()
    import fiftyone as fo

    from diffugen.generation.runner import generate
    from diffugen.toyworld.evaluation import captions as make_captions, held_out_captions

    folder = model_folder(model) / split
    if split == "train":
        captions = make_captions(n, TRAIN_FIRST_SEED, held_out_captions(n, hollow_rate), hollow_rate)
    else:
        skip = FRESH_SKIP if split == "fresh" else 0
        captions = held_out_captions(skip + n, hollow_rate)[skip:]
    name = f"diffugen-label-scores-{split}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    generate(study_config(name, captions, folder / "media", children, model))
    ds = fo.load_dataset(name)
    rows = []
    for s in ds.iter_samples(progress=True):
        rows.append({
            "task": s["task"], "prompt": s["prompt"], "filepath": s.filepath,
            "heatmaps": [{"path": h.map_path, "word": h["word"], "label": h["label"],
                          "floor": h["floor"], "peak": h["peak"], "attention": h["attention"]}
                         for h in s["word_heatmaps"] or []],
        })
    path = folder / "manifest.json"
    path.write_text(json.dumps({"split": split, "captions": len(captions), "samples": rows}, indent=0))
    print(f"{len(rows)} samples of {len(captions)} captions → {path}")
    return path


VARIANTS = {
    # name: (label parameters, per-occurrence maps, score) — "before": what DiffuGen did until the score
    # rework (one map per word, words not resolved, the paper's score).
    "before": ({"resolve": False, "score": "size_intensity", "core": False, "snap": 0}, False),
    "occurrences": ({"resolve": False, "score": "size_intensity", "core": False, "snap": 0}, True),
    "resolved": ({"resolve": True, "score": "size_intensity", "core": False, "snap": 0}, True),
    "uncored": ({"resolve": True, "score": "attention", "core": False, "snap": 0}, True),
    "after": ({"resolve": True, "score": "attention", "snap": 0}, True),  # cut to their map's core (labels.core)
    "snapped": ({"resolve": True, "score": "attention"}, True),  # then to the image's edges (labels.snap), then grown
    # back over the object's colour (labels.grow): the defaults
}
SCORED = ("uncored", "after", "snapped")  # the variants the fitted weights score


def merged_per_word(stored):
    """The heatmaps as one map per word (the mean of its occurrences' maps in units of attention), as
    DiffuGen stored them before each occurrence had its own."""
    import numpy as np

    from diffugen.labels.relabel import StoredHeatmaps
    from diffugen.labels.scoring import raw_maps

    raws = raw_maps([m.astype(np.float32) / 255 for m in stored.maps], stored.ranges)
    out = StoredHeatmaps([], [], [], [])
    for w in dict.fromkeys(stored.words):
        ks = [k for k, v in enumerate(stored.words) if v == w]
        r = np.mean([raws[k] for k in ks], axis=0)
        lo, hi = float(r.min()), float(r.max())
        out.maps.append(np.round((r - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8))
        out.words.append(w)
        out.classes.append(stored.classes[ks[0]])
        out.ranges.append((lo, hi))
    return out


def judge_split(split: str, variant: str, weights=None, bias=None, model: str = MODELS[0], per_object: bool = False):
    """Label every sample of a collected split with ``variant`` and judge the labels (against each requested colour's
    blobs, or with ``per_object`` each object as drawn; :func:`~diffugen.toyworld.evaluation.true_objects`):
    ``(judged images, feature rows, right flags)``."""
    import cv2
    import numpy as np
    from PIL import Image

    from diffugen.labels import scoring
    from diffugen.labels.daam import LabelParams, instance_mask
    from diffugen.labels.relabel import StoredHeatmaps, label_stored
    from diffugen.toyworld.evaluation import judge_labels

    params, per_occurrence = VARIANTS[variant]
    params = LabelParams(**params)
    manifest = json.loads((model_folder(model) / split / "manifest.json").read_text())
    ids = {c: i + 1 for i, c in enumerate(SHAPES)}
    judged, rows, right = [], [], []
    for s in manifest["samples"]:
        hms = s["heatmaps"]
        stored = StoredHeatmaps([cv2.imread(h["path"], cv2.IMREAD_GRAYSCALE) for h in hms], [h["word"] for h in hms],
                                [h["label"] for h in hms], [(h["floor"], h["peak"]) for h in hms],
                                next((h["attention"] for h in hms if h.get("attention")), "cross"))
        if not per_occurrence and stored.maps:
            stored = merged_per_word(stored)
        image = np.asarray(Image.open(s["filepath"]).convert("RGB"))
        labels = label_stored(stored, ids, params, image) if stored.maps else None
        classes, scores, masks, feats = [], [], [], []
        for cls, wl in zip(labels.classes if labels else [], labels.word_labels if labels else []):
            for inst in wl.instances:
                if weights is not None and inst.features:
                    inst.score = scoring.attention_score(inst.features, weights, bias)
                classes.append(cls)
                scores.append(inst.score)
                masks.append(instance_mask(inst, image.shape[:2]))
                feats.append(inst.features)
        j = judge_labels(s["task"], s["prompt"], image, classes, scores, masks, stored.classes, per_object=per_object)
        judged.append(j)
        rows.extend(feats)
        right.extend(j.right)
    return judged, rows, right


WRONG_WEIGHTS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0)  # the weights of a wrong label the fit tries
FOLDS = 5  # the training split's images, in folds, for the right labels a weight keeps out of sample


def fit(c: float, model_name: str = MODELS[0], keep: float = 0.82, per_object: bool = True,
        variants: tuple[str, ...] | None = None) -> dict:
    """Fit the logistic score on the training split; print held-out metrics of every variant, and of the
    product's score as shipped (``shipped``: the default labels, "snapped", scored with
    :data:`~diffugen.labels.scoring.WEIGHTS`, or for the transformer :data:`~diffugen.labels.scoring.JOINT_WEIGHTS`).

    A wrong label trusted costs the reviewer more than a right one doubted, so the fit weighs each wrong label ``k``
    times a right one: the largest ``k`` of :data:`WRONG_WEIGHTS` at which the score still keeps ``keep`` of the
    training side's right labels at the review's threshold (``k = 1``, a calibrated probability, where none does),
    counted out of sample: each of :data:`FOLDS` folds of the training images scored by a fit on the others (in
    sample, a fit keeps more of its own labels than of new ones).
    ``per_object``: labels are judged against each object as drawn (:func:`judge_split`), in the fit and the report
    (``False``: against each requested colour's blobs);
    ``variants``: report only these (of :data:`VARIANTS` and ``shipped``)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    from diffugen.common import REVIEW_MIN_SCORE
    from diffugen.labels.scoring import FEATURES
    from diffugen.toyworld.evaluation import label_metrics

    # The score says whether a label as the defaults make it (found, cut to its map's core and to the image's
    # edges, grown back over its object's colour) is right: fitted on those labels.
    judged, rows, right = judge_split("train", "snapped", model=model_name, per_object=per_object)
    x = np.array([[r[k] for k in FEATURES] for r in rows])
    y = np.array(right)
    images = np.concatenate([np.full(len(im.scores), i) for i, im in enumerate(judged)])

    def logistic(k: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=5000, class_weight=None if k == 1 else {False: k, True: 1.0})

    def kept_out_of_sample(k: float) -> float:
        scores = np.zeros(len(y))
        for train, test in GroupKFold(FOLDS).split(x, y, images):
            scores[test] = logistic(k).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
        return float((scores[y] >= REVIEW_MIN_SCORE).mean())

    wrong_weight = 1.0
    for k in WRONG_WEIGHTS[1:]:
        if kept_out_of_sample(k) < keep:
            break
        wrong_weight = k
    model = logistic(wrong_weight).fit(x, y)
    weights = {k: round(float(v), 4) for k, v in zip(FEATURES, model.coef_[0])}
    bias = round(float(model.intercept_[0]), 4)
    print(f"fitted on {len(y)} training-side labels ({int(y.sum())} right), a wrong label weighing {wrong_weight}: "
          f"WEIGHTS = {weights}, BIAS = {bias}")
    report = {"weights": weights, "bias": bias, "wrong_weight": wrong_weight, "train_labels": int(len(y)),
              "judge": "per object" if per_object else "per colour"}
    for split in [s for s in SPLITS if (model_folder(model_name) / s / "manifest.json").exists()]:
        for variant in variants or (*VARIANTS, "shipped"):
            if variant == "shipped":
                judged, _, _ = judge_split(split, "snapped", model=model_name, per_object=per_object)
            else:
                judged, _, _ = judge_split(split, variant, weights if variant in SCORED else None, bias, model_name,
                                           per_object)
            m = label_metrics(judged)
            report[f"{split}/{variant}"] = m
            print(f"{split:8s} {variant:12s} " + "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    (model_folder(model_name) / ("fit.json" if per_object else "fit-per-colour.json")).write_text(json.dumps(report, indent=1))
    return report


def wrong(split: str, top: int, model: str = MODELS[0], per_object: bool = True) -> Path:
    """The wrong labels scored >= 0.5 of a collected split, surest first: print each against the object of its class
    it overlaps most (its IoU, the share of the label on the object, the share of the object it covers, the object's
    kind) and write the ``top`` of them as a picture, a row each: the image, the word's maps, the word's labels (the
    brighter, the surer) and its truth (``wrong.png`` beside the split's manifest)."""
    import cv2
    import numpy as np
    from PIL import Image

    from diffugen.common import REVIEW_MIN_SCORE

    judged, _, _ = judge_split(split, "snapped", model=model, per_object=per_object)
    samples = json.loads((model_folder(model) / split / "manifest.json").read_text())["samples"]
    found = []
    for i, im in enumerate(judged):
        for j, (cls, score, ok, mask) in enumerate(zip(im.classes, im.scores, im.right, im.masks)):
            if ok or score < REVIEW_MIN_SCORE:
                continue
            best = max(((float((mask & o.mask).sum() / max(mask.sum(), 1)), float((mask & o.mask).sum() / o.mask.sum()),
                         o.kind) for o in im.objects if o.shape == cls), key=lambda t: t[0] + t[1], default=(0, 0, "none"))
            found.append((score, i, cls, im.ious[j], *best))
    found.sort(key=lambda t: -t[0])
    print(f"{len(found)} wrong labels at >= {REVIEW_MIN_SCORE}; score task class IoU on-object covered kind | prompt")
    for score, i, cls, iou, on, cover, kind in found:
        print(f"{score:.2f} {judged[i].task:8s} {cls:8s} {iou:.2f} {on:.2f} {cover:.2f} {kind:15s} | {judged[i].prompt}")

    def tile(x):
        return cv2.resize(x, (128, 128), interpolation=cv2.INTER_NEAREST)

    rows = []
    for score, i, cls, *_ in found[:top]:
        im, s = judged[i], samples[i]
        image = np.asarray(Image.open(s["filepath"]).convert("RGB"))
        maps = [np.repeat(cv2.resize(cv2.imread(h["path"], cv2.IMREAD_GRAYSCALE), image.shape[1::-1])[..., None], 3, -1)
                for h in s["heatmaps"] if h["label"] == cls]
        labels, truth = np.zeros_like(image), np.zeros_like(image)
        for c, sc, m in zip(im.classes, im.scores, im.masks):
            labels[m & (c == cls)] = (0, int(255 * sc), 255)
        for o in im.objects:
            truth[o.mask & (o.shape == cls)] = 255
        rows.append([tile(x) for x in (image, *maps[:2], labels, truth)])
    width = max((len(r) for r in rows), default=1)
    picture = np.concatenate([np.concatenate(r + [np.zeros_like(r[0])] * (width - len(r)), 1) for r in rows]) if rows else None
    path = model_folder(model) / split / "wrong.png"
    if picture is not None:
        Image.fromarray(picture).save(path)
        print(f"the surest {len(rows)} → {path}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--split", choices=SPLITS, required=True)
    c.add_argument("--n", type=int, default=200, help="txt2img captions")
    c.add_argument("--children", type=int, default=80, help="parents of img2img and of inpaint children")
    c.add_argument("--hollow-rate", type=float, default=0.3)
    f = sub.add_parser("fit")
    f.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation of the logistic fit")
    f.add_argument("--keep", type=float, default=0.82,
                   help="the share of the training side's right labels the score must keep at 0.5 (see fit)")
    f.add_argument("--variants", nargs="+", choices=[*VARIANTS, "shipped"], help="report only these")
    w = sub.add_parser("wrong", help="the wrong labels scored >= 0.5, printed and pictured")
    w.add_argument("--split", choices=SPLITS, default="held-out")
    w.add_argument("--top", type=int, default=16, help="rows of the picture")
    for p in (c, f, w):
        p.add_argument("--model", choices=MODELS, default=MODELS[0])
    for p in (f, w):
        p.add_argument("--judge", choices=["object", "colour"], default="object",
                       help="a label is right against an object as drawn, or against a requested colour's blobs")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        collect(args.split, args.n, args.children, args.hollow_rate, args.model)
    elif args.cmd == "wrong":
        wrong(args.split, args.top, args.model, args.judge == "object")
    else:
        fit(args.c, args.model, args.keep, args.judge == "object", tuple(args.variants or ()) or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
