"""The label judge against the eye: how many of the labels that the review trusts (score >= 0.5) are right by eye.

Usage (from the repository root, a split collected by :mod:`studies.label_scores`)::

    python -m studies.label_eye_audit sheets --split fresh --seed 4 --right 62   # sheets to look at, and their key
    python -m studies.label_eye_audit record --split fresh --verdicts 'wrong: 3 7, unclear: 12' --by '...'
    python -m studies.label_eye_audit score --split fresh     # the eye's verdicts against the judge's (and pooled)

``sheets`` draws every label at >= 0.5 that the judge per object drawn calls wrong, and as many of those it calls
right at random (``--right N``: N of them; the precision by eye rests mostly on that group, the larger), shuffles them
and writes them as sheets of 20 tiles (``eye_sheet_<k>.png`` beside the split's manifest): the image, and the image
with the label's pixels tinted, under the tile's number, the label's class and the colours the prompt asks that class
in. The judge's verdicts go to ``eye_key.json`` beside them, not on the sheets. The eye marks each tile ``right`` (the
label covers one object of its class as drawn, most of it and little else: IoU >= 0.5 by eye), ``wrong`` or
``unclear``, before ``score`` reads the key.

The verdicts are kept in ``studies/data/label_eye_audit.json`` by label (:func:`label_id`: its sample, class and
pixels), not by tile: after a change that moves a few labels across the threshold (a new score), ``sheets`` draws other
tiles, and the labels the eye has seen keep their verdicts. The draw ranks each label by a hash of the seed and its
identity, so a label that stays trusted keeps its place in it. ``sheets`` also writes the tiles whose labels have
none yet on sheets of their own (``eye_pending_<k>.png``), and ``score`` asks for them. ``score`` also reads every
verdict of the split's trusted labels together, whichever draw they were seen in: more of the judged-right ones, on
which the precision by eye mostly rests. ``record`` stores the eye's verdicts of a split's tiles (``--verdicts
'wrong: 3 7, unclear: 12'``, every other tile right). The labels and the split are deterministic, so ``sheets`` makes
the same tiles again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from studies.label_scores import MODELS, SPLITS, judge_split, model_folder

AUDIT = Path(__file__).resolve().parent / "data" / "label_eye_audit.json"
PER_SHEET, COLUMNS, SCALE = 20, 4, 2
VERDICTS = ("right", "wrong", "unclear")  # the eye's marks


def label_id(sample: int, cls: str, mask: np.ndarray) -> str:
    """A label's identity across sheets: its sample (index in the split's manifest), class and pixels, as 12 hex
    digits. A verdict holds for the label it was made on, whatever tile shows it."""
    digest = hashlib.sha256(f"{sample}/{cls}/{mask.shape}".encode())
    digest.update(np.packbits(mask.astype(bool)).tobytes())
    return digest.hexdigest()[:12]


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

    ids = {(i, k): label_id(i, judged[i].classes[k], judged[i].masks[k]) for i, k, _ in trusted}

    def rank(t: tuple[int, int, bool]) -> str:  # a label's place in the seed's draw: the same whatever else moves
        return hashlib.sha256(f"{seed}/{ids[t[:2]]}".encode()).hexdigest()

    count = min(len(judged_right), len(wrong) if right is None else right)
    drawn = sorted(wrong + sorted(judged_right, key=rank)[:count], key=lambda t: rank(t)[::-1])
    samples = json.loads((model_folder(model) / split / "manifest.json").read_text())["samples"]
    folder = model_folder(model) / split
    seen = _verdicts(split, model)
    tiles, key = [], []
    for n, (i, k, ok) in enumerate(drawn):
        im = judged[i]
        image = np.asarray(Image.open(samples[i]["filepath"]).convert("RGB"))
        colours = "/".join(c for c, shape, _ in requested(im.prompt) if shape == im.classes[k])
        tiles.append(_tile(image, im.masks[k], f"#{n} {im.classes[k]}: {colours}"))
        key.append({"tile": n, "sample": i, "label": k, "id": ids[(i, k)],
                    "prompt": im.prompt, "task": im.task, "judged_right": ok})
    for old in [*folder.glob("eye_sheet_*.png"), *folder.glob("eye_pending_*.png")]:
        old.unlink()
    paths = _pages(tiles, folder, "eye_sheet")
    pending = [n for n, t in enumerate(key) if t["id"] not in seen]
    if seen and pending:
        _pages([tiles[n] for n in pending], folder, "eye_pending")
    key = {"split": split, "seed": seed, "trusted": len(trusted), "judged_wrong": len(wrong), "tiles": key}
    (folder / "eye_key.json").write_text(json.dumps(key, indent=1))
    print(f"{len(trusted)} labels at >= 0.5, {len(wrong)} judged wrong; {len(drawn)} tiles on {len(paths)} sheets "
          f"in {folder}" + (f"; {len(pending)} without a verdict yet (eye_pending_*.png: tiles "
                            f"{' '.join(map(str, pending))})" if seen and pending else ""))
    return paths


def _pages(tiles: list[np.ndarray], folder: Path, name: str) -> list[Path]:
    paths = []
    for s in range(0, len(tiles), PER_SHEET):
        page = tiles[s : s + PER_SHEET]
        page += [np.full_like(page[0], 255)] * (-len(page) % COLUMNS)
        rows = [np.concatenate(page[r : r + COLUMNS], 1) for r in range(0, len(page), COLUMNS)]
        path = folder / f"{name}_{s // PER_SHEET}.png"
        Image.fromarray(np.concatenate(rows)).save(path)
        paths.append(path)
    return paths


def _load(model: str) -> tuple[dict, dict]:
    """The audit file, and its audits of ``model``'s splits (split → entry): the UNet model's at its top, another
    model's under its folder's name."""
    whole = json.loads(AUDIT.read_text()) if AUDIT.exists() else {}
    if model == MODELS[0]:
        return whole, whole
    return whole, whole.setdefault(model_folder(model).name, {})


def _verdicts(split: str, model: str = MODELS[0]) -> dict[str, str]:
    """The eye's verdicts of a split's labels so far, by :func:`label_id`."""
    return dict(_load(model)[1].get(split, {}).get("labels", {}))


def record(split: str, marks: str, by: str, model: str = MODELS[0]) -> int:
    """Store the eye's verdicts of the tiles of a split's sheets (its ``eye_key.json``) whose labels have none yet
    (all of them in a first audit; else those of ``eye_pending_*.png``): ``marks`` names the tiles that are not right
    (``"wrong: 3 7, unclear: 12"``), every other one of them is right. A named tile whose label has a verdict gets
    the new one. Returns the number of labels recorded."""
    key = json.loads((model_folder(model) / split / "eye_key.json").read_text())
    named = {}
    for part in filter(None, (p.strip() for p in marks.split(","))):
        verdict, _, tiles = part.partition(":")
        if verdict.strip() not in VERDICTS:
            raise SystemExit(f"--verdicts {marks!r}: expected 'wrong: 3 7, unclear: 12' (verdicts {VERDICTS})")
        named.update({int(t): verdict.strip() for t in tiles.split()})
    whole, audits = _load(model)
    entry = audits.setdefault(split, {})
    entry["by"] = by or entry.get("by", "")
    labels = entry.setdefault("labels", {})
    targets = [t for t in key["tiles"] if t["id"] not in labels or t["tile"] in named]
    for t in targets:
        labels[t["id"]] = named.get(t["tile"], "right")
    AUDIT.write_text(json.dumps(whole, indent=1))
    return len(targets)


def _table(key: dict, verdicts: dict[str, str]) -> dict:
    """``{(judged right, eye's verdict): tiles}`` of one split's sheets, by the verdicts of their labels."""
    table = {(j, e): 0 for j in (True, False) for e in VERDICTS}
    for t in key["tiles"]:
        table[(t["judged_right"], verdicts[t["id"]])] += 1
    return table


def score(split: str, model: str = MODELS[0]) -> dict:
    """The eye's verdicts (``AUDIT``) against the judge's, and the precision at 0.5 by eye: each group of the judge's
    (right, wrong) counted at the share of it the eye calls right, ``unclear`` counted as wrong; by this split's audit
    alone, and with the shares pooled over every audited split whose sheets' labels all have verdicts."""
    audits = {s: e for s, e in _load(model)[1].items() if s in SPLITS}
    keys = {s: json.loads(p.read_text()) for s in audits if (p := model_folder(model) / s / "eye_key.json").exists()}
    if split not in audits or split not in keys:
        raise SystemExit(f"split {split!r}: expected its sheets' key {model_folder(model) / split / 'eye_key.json'} "
                         f"(sheets) and its verdicts in {AUDIT}")
    pending = {s: [t["tile"] for t in k["tiles"] if t["id"] not in audits[s].get("labels", {})] for s, k in keys.items()}
    if pending[split]:
        raise SystemExit(f"split {split!r}: {len(pending[split])} tiles of its sheets show labels without a verdict "
                         f"(tiles {' '.join(map(str, pending[split]))}, on eye_pending_*.png): look at them, then record")
    if incomplete := [s for s in keys if pending[s]]:
        print(f"not pooled: {', '.join(incomplete)}, whose sheets show labels without a verdict")
    tables = {s: _table(k, audits[s]["labels"]) for s, k in keys.items() if not pending[s]}
    key = keys[split]
    trusted, wrong = key["trusted"], key["judged_wrong"]

    def by_eye(table: dict) -> float:
        share = {j: table[(j, "right")] / max(1, sum(table[(j, e)] for e in VERDICTS)) for j in (True, False)}
        return ((trusted - wrong) * share[True] + wrong * share[False]) / max(1, trusted)

    table = tables[split]
    pooled = {c: sum(t[c] for t in tables.values()) for c in table}
    every = _every_verdict(split, model, audits[split]["labels"])
    for j in (True, False):
        print(f"judged {'right' if j else 'wrong'}: " + ", ".join(f"eye {e} {table[(j, e)]}" for e in VERDICTS))
    print(f"precision at 0.5: the judge {(trusted - wrong) / max(1, trusted):.3f} of {trusted}, by eye {by_eye(table):.3f} "
          f"(this split's sheets), {by_eye(pooled):.3f} (the sheets of {', '.join(tables)} pooled), {by_eye(every):.3f} "
          f"(every verdict of this split's trusted labels: judged right {every[(True, 'right')]} of "
          f"{sum(every[(True, e)] for e in VERDICTS)} right by eye)")
    return {"table": {f"{j}/{e}": v for (j, e), v in table.items()}, "precision_by_eye": by_eye(table),
            "precision_by_eye_pooled": by_eye(pooled), "precision_by_eye_every_verdict": by_eye(every)}


def _every_verdict(split: str, model: str, verdicts: dict[str, str]) -> dict:
    """``{(judged right, eye's verdict): labels}`` over every trusted label of the split that has a verdict, whichever
    sheets it was seen on: the draws of several seeds, or of an earlier score, read together."""
    trusted, judged = _trusted(split, model)
    table = {(j, e): 0 for j in (True, False) for e in VERDICTS}
    for i, k, ok in trusted:
        verdict = verdicts.get(label_id(i, judged[i].classes[k], judged[i].masks[k]))
        if verdict is not None:
            table[(ok, verdict)] += 1
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["sheets", "score", "record"])
    ap.add_argument("--split", choices=SPLITS, default="fresh")
    ap.add_argument("--model", choices=MODELS, default=MODELS[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--right", type=int, default=None,
                    help="labels the judge calls right to draw (default: as many as it calls wrong)")
    ap.add_argument("--verdicts", default="", help="record: the tiles not right, 'wrong: 3 7, unclear: 12'")
    ap.add_argument("--by", default="", help="record: who looked, when, at what (kept with the verdicts)")
    args = ap.parse_args(argv)
    if args.cmd == "sheets":
        sheets(args.split, args.model, args.seed, args.right)
    elif args.cmd == "record":
        print(f"{record(args.split, args.verdicts, args.by, args.model)} verdicts of {args.split} recorded in {AUDIT}")
    else:
        score(args.split, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
