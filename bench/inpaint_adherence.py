"""Inpainting on the toy world: how often the replacement is drawn where the old object was.

Usage::

    python bench/inpaint_adherence.py [--n 48] [--strength S] [--mask-dilation D] [--threads 1]

Runs ``examples/quickstart.json`` (txt2img → img2img → inpaint on ``builtin:toyworld``) with
``image_count = --n`` into a fresh dataset. Each inpaint sample asks for one of the config's
replacement descriptions ("yellow circle", "white square", "purple triangle") inside the DAAM mask of
its parent's object. Each one is judged from its image by colour, like ``bench/label_accuracy.py``
does: is a blob of the requested colour there, and is the largest one the requested shape
(:func:`~diffugen.toyworld.truth.classify_shape`)? ``--strength`` and ``--mask-dilation`` override the
config's inpaint settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from _common import ROOT, colour_blobs, machine_line, private_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48, help="txt2img images (and so inpaint images)")
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--mask-dilation", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    private_database()
    import fiftyone as fo
    import torch

    from diffugen.config import parse_config
    from diffugen.generation.runner import generate
    from diffugen.toyworld.truth import classify_shape

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = json.loads((ROOT / "examples" / "quickstart.json").read_text())
    work = tempfile.mkdtemp(prefix="diffugen-bench-inpaint-")
    raw.update(dataset_name=f"diffugen-bench-inpaint-{os.getpid()}", output_root=work, image_count=args.n)
    for key, value in (("strength", args.strength), ("mask_dilation", args.mask_dilation)):
        if value is not None:
            raw["inpaint"][key] = value
    cfg = parse_config(raw)
    descriptions = [d for ds in cfg.inpaint.replacements.values() for d in ds]
    generate(cfg)
    ds = fo.load_dataset(cfg.dataset_name)
    try:
        n = present = right = 0
        for sample in ds.match({"task": "inpaint"}).iter_samples(progress=False):
            colour, shape = next(d for d in descriptions if d in sample["prompt"]).split()
            image = np.asarray(Image.open(sample.filepath).convert("RGB"))
            blobs = colour_blobs(image, colour)
            n += 1
            present += bool(blobs)
            right += bool(blobs) and classify_shape(blobs[0].mask) == shape
    finally:
        ds.delete()
        shutil.rmtree(work, ignore_errors=True)
    print(machine_line("cpu"))
    print(f"inpaint (strength {cfg.inpaint.strength}, mask dilation {cfg.inpaint.mask_dilation}): {n} images, "
          f"replacement colour present {present / max(1, n):.1%}, requested shape {right / max(1, n):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
