"""The label judge against the eye: how many of the labels that the review trusts (score >= 0.5) are right by eye.

Usage (from the repository root, a split collected by :mod:`studies.label_scores`)::

    python -m studies.label_eye_audit sheets --split fresh    # shuffled sheets to look at, and their key
    python -m studies.label_eye_audit score --split fresh     # the eye's verdicts against the judge's (and pooled)

``sheets`` draws every label at >= 0.5 that the judge per object drawn calls wrong, and as many of those it calls
right at random (``--right N``: N of them; the precision by eye rests mostly on that group, the larger), shuffles them and writes them as sheets of 20 tiles (``eye_sheet_<k>.png`` beside the split's
manifest): the image, and the image with the label's pixels tinted, under the tile's number, the label's class and the
colours the prompt asks that class in. The judge's verdicts go to ``eye_key.json`` beside them, not on the sheets.
The eye marks each tile ``right`` (the label covers one object of its class as drawn, most of it and little else: IoU
>= 0.5 by eye), ``wrong`` or ``unclear`` in ``studies/data/label_eye_audit.json`` before ``score`` reads the key.
The labels and the split are deterministic, so ``sheets`` makes the same tiles again. Each audit in that file
records its key's digest (:func:`key_digest`, printed by ``sheets``): a split collected again, or labels made
otherwise, draw other tiles, and ``score`` does not count verdicts made on other tiles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from studies.label_scores import MODELS, SPLITS, judge_split, model_folder

AUDIT = Path(__file__).resolve().parent / "data" / "label_eye_audit.json"
PER_SHEET, COLUMNS, SCALE = 20, 4, 2
VERDICTS = ("right", "wrong", "unclear")  # the eye's marks


def key_digest(key: dict) -> str:
    """What a sheets' key says of its tiles (each tile's sample, label and the judge's verdict, and the counts of
    trusted and judged-wrong labels), as 12 hex digits: verdicts count only against the tiles they were made on."""
    tiles = [(t["sample"], t["label"], t["judged_right"]) for t in key["tiles"]]
    text = json.dumps([key["trusted"], key["judged_wrong"], tiles])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _trusted(split: str, model: str):
    """The labels at >= the review threshold of a split: ``[(sample, label, judged right)]`` and the judged images."""
    from diffugen.common import REVIEW_MIN_SCORE

    judged, _, _ = judge_split(split, "snapped", model=model, per_object=True)
    return [(i, k, bool(ok)) for i, im in enumerate(judged) for k, (s, ok) in enumerate(zip(im.scores, im.right))
            if s >= REVIEW_MIN_SCORE], judged


def _tile(image: np.ndarray, mask: np.ndarray, title: str) -> np.ndarray:
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * SCALE, h * SCALE), interpolation=cv2.INTER_NEAREST)
    m = cv2.resize(mask.astype(np.uint8), (w * SCALE, h * SCALE), interpolation=cv2.INTER_NEAREST).astype(bool)
    tinted = (big * 0.45).astype(np.uint8)
    tinted[m] = (0.5 * big[m] + 0.5 * np.array([0, 255, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tinted, contours, -1, (255, 255, 0), 1)
    body = np.concatenate([big, np.full((h * SCALE, 4, 3), 255, np.uint8), tinted], 1)
    head = np.full((18, body.shape[1], 3), 255, np.uint8)
    cv2.putText(head, title, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.pad(np.concatenate([head, body]), ((0, 6), (0, 6), (0, 0)), constant_values=255)


def sheets(split: str, model: str = MODELS[0], seed: int = 0, right: int | None = None) -> list[Path]:
    from diffugen.toyworld.evaluation import requested

    trusted, judged = _trusted(split, model)
    wrong = [t for t in trusted if not t[2]]
    judged_right = [t for t in trusted if t[2]]
    rng = random.Random(seed)
    drawn = wrong + rng.sample(judged_right, min(len(judged_right), len(wrong) if right is None else right))
    rng.shuffle(drawn)
    samples = json.loads((model_folder(model) / split / "manifest.json").read_text())["samples"]
    folder = model_folder(model) / split
    tiles = []
    for n, (i, k, _) in enumerate(drawn):
        im = judged[i]
        image = np.asarray(Image.open(samples[i]["filepath"]).convert("RGB"))
        colours = "/".join(c for c, shape, _ in requested(im.prompt) if shape == im.classes[k])
        tiles.append(_tile(image, im.masks[k], f"#{n} {im.classes[k]}: {colours}"))
    paths = []
    for s in range(0, len(tiles), PER_SHEET):
        page = tiles[s : s + PER_SHEET]
        page += [np.full_like(page[0], 255)] * (-len(page) % COLUMNS)
        rows = [np.concatenate(page[r : r + COLUMNS], 1) for r in range(0, len(page), COLUMNS)]
        path = folder / f"eye_sheet_{s // PER_SHEET}.png"
        Image.fromarray(np.concatenate(rows)).save(path)
        paths.append(path)
    key = [{"tile": n, "sample": i, "label": k, "prompt": judged[i].prompt, "task": judged[i].task,
            "judged_right": ok} for n, (i, k, ok) in enumerate(drawn)]
    key = {"split": split, "seed": seed, "trusted": len(trusted), "judged_wrong": len(wrong), "tiles": key}
    (folder / "eye_key.json").write_text(json.dumps(key, indent=1))
    print(f"{len(trusted)} labels at >= 0.5, {len(wrong)} judged wrong; {len(drawn)} tiles on {len(paths)} sheets "
          f"in {folder} (key {key_digest(key)})")
    return paths


def _table(key: dict, verdicts: dict) -> dict:
    """``{(judged right, eye's verdict): tiles}`` of one audited split."""
    table = {(j, e): 0 for j in (True, False) for e in VERDICTS}
    for t in key["tiles"]:
        table[(t["judged_right"], verdicts[str(t["tile"])])] += 1
    return table


def score(split: str, model: str = MODELS[0]) -> dict:
    """The eye's verdicts (``AUDIT``) against the judge's, and the precision at 0.5 by eye: each group of the judge's
    (right, wrong) counted at the share of it the eye calls right, ``unclear`` counted as wrong; by this split's audit
    alone, and with the shares pooled over every audited split whose key is here."""
    audits = json.loads(AUDIT.read_text()) if AUDIT.exists() else {}
    keys = {s: json.loads(p.read_text()) for s in audits if (p := model_folder(model) / s / "eye_key.json").exists()}
    if split not in audits or split not in keys:
        raise SystemExit(f"split {split!r}: expected its sheets' key {model_folder(model) / split / 'eye_key.json'} "
                         f"(sheets) and its verdicts in {AUDIT}")
    stale = [s for s, k in keys.items() if audits[s].get("key") != key_digest(k)]
    if split in stale:
        raise SystemExit(f"split {split!r}: the verdicts in {AUDIT} were made on other tiles (key "
                         f"{audits[split].get('key')}, the sheets now: {key_digest(keys[split])}); make the sheets with "
                         f"the audit's seed (the key's: {keys[split].get('seed')}) and audit them again")
    if stale:
        print(f"not pooled: the audits of {', '.join(stale)}, made on other tiles than their sheets' keys now")
    tables = {s: _table(k, audits[s]["verdicts"]) for s, k in keys.items() if s not in stale}
    key = keys[split]
    trusted, wrong = key["trusted"], key["judged_wrong"]

    def by_eye(table: dict) -> float:
        share = {j: table[(j, "right")] / max(1, sum(table[(j, e)] for e in VERDICTS)) for j in (True, False)}
        return ((trusted - wrong) * share[True] + wrong * share[False]) / max(1, trusted)

    table = tables[split]
    pooled = {c: sum(t[c] for t in tables.values()) for c in table}
    for j in (True, False):
        print(f"judged {'right' if j else 'wrong'}: " + ", ".join(f"eye {e} {table[(j, e)]}" for e in VERDICTS))
    print(f"precision at 0.5: the judge {(trusted - wrong) / max(1, trusted):.3f} of {trusted}, by eye {by_eye(table):.3f} "
          f"(this split's audit), {by_eye(pooled):.3f} (the audits of {', '.join(tables)} pooled)")
    return {"table": {f"{j}/{e}": v for (j, e), v in table.items()}, "precision_by_eye": by_eye(table),
            "precision_by_eye_pooled": by_eye(pooled)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["sheets", "score"])
    ap.add_argument("--split", choices=SPLITS, default="fresh")
    ap.add_argument("--model", choices=MODELS, default=MODELS[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--right", type=int, default=None,
                    help="labels the judge calls right to draw (default: as many as it calls wrong)")
    args = ap.parse_args(argv)
    if args.cmd == "sheets":
        sheets(args.split, args.model, args.seed, args.right)
    else:
        score(args.split, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
