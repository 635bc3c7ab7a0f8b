"""Score the textual-inversion proof's shape judges against a blind audit by eye.

Usage (from the repository root)::

    python -m studies.textual_inversion_proof --shape ring --model M --steps 1000 --lr 5e-3 --n 100 \
        --tolerance 80 --eval-seed 5 --keep          # and --eval-seed 6, and 3 (controls)
    python -m studies.eye_audit SAMPLES [SAMPLES ...]   # the samples.json each of those runs kept

``studies/data/ti_ring_eye_audit.json`` holds the audits: token images shuffled with control images,
shown 50 to a sheet without prompts, each marked ``ring``, ``not ring`` or ``unclear`` before
unblinding. A tile is found again by its run (from the prompt's words), eval seed (from the image
seed: ``--eval-seed S`` draws seeds from ``S * 1_000_001``) and prompt; the proof's images are
deterministic, so a rerun of the proof reproduces them. For each judge of
:func:`studies.textual_inversion_proof.judge_image` this prints how many of the eye's rings it calls
a ring (recall) and how many of the eye's non-rings (false positives).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from studies.judges import judged_kinds
from studies.textual_inversion_proof import MIN_AREA, judge_image

AUDIT = Path(__file__).resolve().parent / "data" / "ti_ring_eye_audit.json"
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
    ap.add_argument("samples", nargs="+", help="the samples.json files written by textual_inversion_proof --keep")
    ap.add_argument("--model", default="/tmp/twB/model", help="the model of the runs (its world's kinds are judged)")
    ap.add_argument("--tolerance", type=float, default=80.0)
    args = ap.parse_args(argv)

    from diffugen.toyworld.scene import COLORS

    kinds = judged_kinds(args.model, "ring")
    samples = {}
    for listing in args.samples:
        for s in json.loads(Path(listing).read_text()):
            samples[(run_of(s["prompt"]), s["seed"] // EVAL_SEED_STRIDE, s["prompt"])] = s["filepath"]
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
