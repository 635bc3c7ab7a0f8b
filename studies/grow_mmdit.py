"""Is the toy transformer's prompt adherence short of capacity? The shipped `builtin:toyworld-mmdit` grown deeper.

Usage (from the repository root, virtualenv active)::

    python -m studies.grow_mmdit --extra 4 --out /tmp/mmdit-grown          # the shipped model, 4 blocks deeper
    python -m diffugen.toyworld.train --arch mmdit --init-from /tmp/mmdit-grown --steps 1500 --lr 2e-4 \\
        --batch 32 --threads 2 --pool 8192 --state /tmp/mmdit-grown-state --out /tmp/mmdit-grown-trained
    python bench/label_accuracy.py --model /tmp/mmdit-grown-trained --n 120 --children 0 --yolo-train 0

The new joint blocks go in before the last one (whose text stream ends the model) and start as the identity:
their adaptive norms' modulation (shift, scale and gate of attention and MLP, image and text streams) is zero, as
DiT's adaLN-Zero starts a block, so the grown model makes the shipped model's images until training moves them
(checked here before the folder is written). Each new block's other weights are a copy of the block before it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def grow(extra: int, out: Path) -> Path:
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from diffugen.toyworld import MMDIT_DIR, load_toyworld_mmdit_pipeline, load_world
    from diffugen.toyworld.mmdit import save_pipeline

    pipe = load_toyworld_mmdit_pipeline(MMDIT_DIR, dtype=torch.float32)
    old = pipe.transformer
    n = old.config.num_layers
    new = SD3Transformer2DModel.from_config({**old.config, "num_layers": n + extra})
    state = old.state_dict()
    grown = {}
    for key, value in state.items():
        if key.startswith("transformer_blocks."):
            i, rest = key.split(".", 2)[1:]
            i = int(i)
            if i == n - 1:  # the last block stays last
                grown[f"transformer_blocks.{n - 1 + extra}.{rest}"] = value
                continue
            grown[key] = value
            if i == n - 2:  # the new blocks: copies of the block before them, with zero modulation
                for j in range(n - 1, n - 1 + extra):
                    zero = rest.startswith(("norm1.linear.", "norm1_context.linear."))
                    grown[f"transformer_blocks.{j}.{rest}"] = torch.zeros_like(value) if zero else value.clone()
        else:
            grown[key] = value
    new.load_state_dict(grown, strict=True)
    new.eval()
    # The grown model is the shipped one until it is trained: the same images.
    check = StableDiffusion3Pipeline(**{**pipe.components, "transformer": new})
    kwargs = dict(prompt="a red circle and a yellow square on grass", num_inference_steps=4, height=64, width=64,
                  output_type="np")
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    b = check(**kwargs, generator=torch.Generator().manual_seed(0)).images
    diff = float(abs(a - b).max())
    print(f"{n} → {n + extra} blocks; max |grown − shipped| over an image: {diff:.2e}")
    if diff > 1e-5:
        raise SystemExit("the grown model does not start as the shipped one")
    save_pipeline({"transformer": new, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2},
                  pipe.vae, pipe.tokenizer, out, load_world(MMDIT_DIR))
    print(f"wrote {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", type=int, default=4, help="joint blocks to add")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    grow(args.extra, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
