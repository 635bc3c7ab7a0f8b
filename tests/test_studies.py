"""The textual-inversion study's shape judges (``studies/judges.py``): they must see what the eye sees."""

from __future__ import annotations

import numpy as np
import pytest

from diffugen.toyworld.scene import ALL_LABELS, SHAPES, make_scene
from diffugen.toyworld.truth import classify_shape, recover_instances
from studies.judges import classify_with_holes, object_by_contrast


def test_contrast_judge_sees_a_ring_through_colour_drift_a_tinted_hole_and_a_small_hole():
    """What generated rings do to the colour judge: the body shades from yellow into orange, the hole is
    small and tinted. The colour blob is then an arc; the object by contrast is still a ring. A solid circle
    that drifts the same way stays a circle, and exact renders of every kind are judged as drawn."""
    from diffugen.toyworld.scene import EXTRA_SHAPES, HOLLOW_SHAPES

    kinds = ALL_LABELS + EXTRA_SHAPES + tuple(f"hollow {s}" for s in EXTRA_SHAPES)
    for seed in range(6):
        sc = make_scene(seed, objects=[("yellow", "circle")], min_size=24, max_size=24, background="water", time="day")
        disc = sc.objects[0].mask
        ys, xs = np.nonzero(disc)
        cy, cx = ys.mean(), xs.mean()
        yy, xx = np.mgrid[: disc.shape[0], : disc.shape[1]]
        hole = (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.3 * 12) ** 2  # 0.3 of the radius: the world's is 0.5
        for holed in (True, False):
            image = sc.image.copy()
            shade = np.clip((xx - xs.min()) / np.ptp(xs), 0, 1)  # yellow on the left shading into orange
            image[disc, 1] = (220 - 100 * shade[disc]).astype(np.uint8)  # the right edge: 100 from yellow
            if holed:
                image[hole] = (60, 80, 50)  # tinted, not the water behind it
            (blob, *_) = [r for r in recover_instances(image, 80.0, 12, open_noise=True) if r.color == "yellow"]
            body = object_by_contrast(image, blob.mask)
            assert classify_shape(blob.mask, kinds, True) != "ring"  # the colour judge sees an arc
            assert classify_with_holes(body, kinds, True) == ("ring" if holed else "circle")
    world = dict(shapes=SHAPES + EXTRA_SHAPES, hollow_shapes=HOLLOW_SHAPES + EXTRA_SHAPES, round_holes=True, hollow_rate=0.5)
    for seed in range(60):
        sc = make_scene(seed, **world)
        for o in sc.objects:
            assert classify_with_holes(object_by_contrast(sc.image, o.mask), kinds, True) == o.kind, (seed, o.kind)


def test_snap_on_a_photo_study_takes_the_coins_edges(capsys):
    """The study's truth is the 24 coins of scikit-image's tutorial; the snap alone takes their edges from the
    photo (it must beat Otsu's blob of the same maps on every coin but at most one), and the growth gives back what
    the core cut took (better on every coin but at most one)."""
    from studies.snap_on_a_photo import coins_truth, main

    image, labels = coins_truth()
    assert image.shape == labels.shape and labels.max() == 24
    assert main() == 0
    out = capsys.readouterr().out
    for step in ("the snap after the Otsu blob", "the growth after the core cut + snap"):
        lines = [line for line in out.splitlines() if step in line]
        assert len(lines) == 2 and all(int(line.split("worse on ")[1].split()[0]) <= 1 for line in lines), out


def test_label_eye_audit_scores_the_eyes_verdicts_against_the_judges(tmp_path, monkeypatch):
    """Each group of the judge's (right, wrong) counts at the share of it the eye calls right, unclear as wrong; the
    verdicts belong to labels, not tiles: sheets that show a label without one are not scored until it is recorded."""
    import json

    from studies import label_eye_audit as audit

    def tile(n: int, judged_right: bool) -> dict:
        mask = np.zeros((8, 8), bool)
        mask[n, :] = True
        return {"tile": n, "sample": n // 2, "label": n % 2, "id": audit.label_id(n // 2, "square", mask),
                "judged_right": judged_right}

    key = {"trusted": 100, "judged_wrong": 10,
           "tiles": [tile(0, True), tile(1, True), tile(2, False), tile(3, False), tile(4, False), tile(5, False)]}
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "eye_key.json").write_text(json.dumps(key))
    monkeypatch.setattr(audit, "AUDIT", tmp_path / "audit.json")
    monkeypatch.setattr(audit, "model_folder", lambda model: tmp_path)

    def row(n: int) -> np.ndarray:
        mask = np.zeros((8, 8), bool)
        mask[n, :] = True
        return mask

    class Judged:  # what _trusted gives: the split's labels at >= 0.5 (one more than the sheets show, unseen)
        def __init__(self, i):
            self.classes, self.masks = ["square", "square"], [row(2 * i), row(2 * i + 1)]

    judged = [Judged(i) for i in range(4)]
    trusted = [(t["sample"], t["label"], t["judged_right"]) for t in key["tiles"]] + [(3, 1, True)]
    monkeypatch.setattr(audit, "_trusted", lambda split, model: (trusted, judged))
    assert audit.record("fresh", "wrong: 1 4, unclear: 3", "a test") == 6
    labels = json.loads((tmp_path / "audit.json").read_text())["fresh"]["labels"]
    assert [labels[t["id"]] for t in key["tiles"]] == ["right", "wrong", "right", "unclear", "wrong", "right"]
    result = audit.score("fresh")
    assert result["table"]["True/right"] == 1 and result["table"]["False/unclear"] == 1
    assert result["precision_by_eye"] == (90 * 0.5 + 10 * 0.5) / 100
    assert result["precision_by_eye_pooled"] == result["precision_by_eye"]  # one audited split: pooled is its own
    assert result["precision_by_eye_every_verdict"] == result["precision_by_eye"]  # every verdict: the sheets' here
    # other sheets (a new score): a label the eye has seen keeps its verdict, a new one must be looked at
    key["tiles"][5] = tile(6, False) | {"tile": 5}
    (tmp_path / "fresh" / "eye_key.json").write_text(json.dumps(key))
    with pytest.raises(SystemExit, match="without a verdict"):
        audit.score("fresh")
    assert audit.record("fresh", "wrong: 5", "") == 1  # only the new tile is recorded
    trusted.append((3, 0, False))  # the new tile's label; the old tile 5's is still trusted, and its verdict counts
    result = audit.score("fresh")
    assert result["table"]["False/wrong"] == 2  # tile 4, and the new tile 5
    assert result["precision_by_eye_every_verdict"] == (90 * 0.5 + 10 * 2 / 5) / 100
    with pytest.raises(SystemExit, match="expected 'wrong: 3 7"):
        audit.record("fresh", "maybe: 2", "")
    tile = audit._tile(np.zeros((64, 64, 3), np.uint8), np.eye(64, dtype=bool), "#0 square: white")
    assert tile.shape == (18 + 64 * audit.SCALE + 6, 2 * 64 * audit.SCALE + 4 + 6, 3)
