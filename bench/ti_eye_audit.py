"""Score the textual-inversion proof's shape judges against a blind audit by eye.

Usage::

    python bench/textual_inversion_proof.py --shape ring --model M --steps 1000 --lr 5e-3 --n 100 \
        --tolerance 80 --eval-seed 5 --keep          # and --eval-seed 6, and 3 (controls)
    python bench/ti_eye_audit.py DATASET [DATASET ...]   # the datasets those runs kept

``bench/data/ti_ring_eye_audit.json`` holds the audits: token images shuffled with control images,
shown 50 to a sheet without prompts, each marked ``ring``, ``not ring`` or ``unclear`` before
unblinding. A tile is found again by its run (from the prompt's words), eval seed (from the image
seed: ``--eval-seed S`` draws seeds from ``S * 1_000_001``) and prompt; the proof's images are
deterministic, so a rerun of the proof reproduces them. For each judge of
``textual_inversion_proof.judge_image`` this prints how many of the eye's rings it calls a ring (recall)
and how many of the eye's non-rings (false positives).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import _common  # noqa: F401  (repo root on sys.path)

os.environ.setdefault("FIFTYONE_DATABASE_DIR", "/tmp/fodb-bench")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from _common import ROOT, judged_kinds  # noqa: E402
from textual_inversion_proof import MIN_AREA, judge_image  # noqa: E402

AUDIT = ROOT / "bench" / "data" / "ti_ring_eye_audit.json"
EVAL_SEED_STRIDE = 1_000_001  # textual_inversion_proof: --eval-seed S draws image seeds from S * this


def run_of(prompt: str) -> str:
    """The proof's run a prompt belongs to, from its words."""
    if "<ring>" in prompt:
        return "token <ring>"
    if "hollow circle" in prompt:
        return "described 'hollow circle'"
    return "plain word 'ring'" if " ring " in prompt else "init word 'circle'"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", help="FiftyOne datasets kept by textual_inversion_proof.py --keep")
    ap.add_argument("--model", default="/tmp/twB/model", help="the model of the runs (its world's kinds are judged)")
    ap.add_argument("--tolerance", type=float, default=80.0)
    args = ap.parse_args(argv)

    import fiftyone as fo

    from diffugen.toyworld.scene import COLORS

    kinds = judged_kinds(args.model, "ring")
    samples = {}
    for name in args.datasets:
        for s in fo.load_dataset(name).iter_samples(progress=False):
            samples[(run_of(s["prompt"]), s["seed"] // EVAL_SEED_STRIDE, s["prompt"])] = s.filepath
    for audit in json.loads(AUDIT.read_text())["audits"]:
        found = [(t, samples.get((t["run"], t["eval_seed"], t["prompt"]))) for t in audit["tiles"]]
        missing = sum(fp is None for _, fp in found)
        eye = Counter(t["eye"] for t, fp in found if fp)
        called = Counter()
        for t, fp in found:
            if fp is None:
                continue
            colour = next(c for c in COLORS if f"a {c} " in t["prompt"])
            _, by_colour, by_contrast = judge_image(np.asarray(Image.open(fp).convert("RGB")), colour, kinds,
                                                    args.tolerance, MIN_AREA)
            for judge, kind in (("colour", by_colour), ("contrast", by_contrast)):
                called[(judge, t["eye"])] += kind == "ring"
        print(f"audit {audit['shuffle_seed']}: {len(found) - missing} of {len(found)} tiles found "
              f"(eye: {eye['ring']} ring, {eye['unclear']} unclear, {eye['not ring']} not ring)")
        for judge in ("colour", "contrast"):
            print(f"  {judge:8s} judge calls ring: {called[(judge, 'ring')]}/{eye['ring']} of the eye's rings, "
                  f"{called[(judge, 'unclear')]}/{eye['unclear']} unclear, {called[(judge, 'not ring')]}/{eye['not ring']} non-rings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
