"""The ceiling of textual inversion on the toy model: can *any* conditioning make its UNet draw a shape?

Usage (from the repository root)::

    python -m studies.ceiling [--shape ring|star|hollow-square] [--steps 600] [--lr 1e-2] [--n 32] [--model M]

Textual inversion learns one input embedding of the text encoder; whatever it reaches, the UNet
must draw from the encoder's output. This script drops that constraint: it optimises the whole
conditioning (the encoder hidden states the UNet cross-attends to, ``tokens × d``: 32 × 128 for the
toy model; started from those of ``--init``, "a circle") with the textual-inversion loss on the same example scenes as
:mod:`studies.textual_inversion_proof`, then generates ``--n`` images from it (25 DDIM steps, guidance
7.5) and judges the largest blob that stands out from the background in each
(:func:`studies.judges.foreground`, :func:`~diffugen.toyworld.truth.classify_shape` over every kind).
If even this rarely draws the shape, no token embedding will: the UNet lacks it.

Prints the judged kinds and writes a grid of the images to ``studies/out/ceiling_<shape>.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image

from bench._common import ROOT, machine_line
from studies.judges import foreground, judged_kinds
from studies.textual_inversion_proof import EXAMPLE_SEED


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="ring", choices=["oval", "ring", "star", "house", "diamond", "hollow-square", "hollow-triangle"])
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--n", type=int, default=32, help="images generated from the learned conditioning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="builtin:toyworld", help="the model (a toy-world diffusers folder)")
    ap.add_argument("--init", default="a circle", help="the text whose conditioning the fit starts from")
    args = ap.parse_args(argv)

    from diffugen.generation.sd import embed, tokenize
    from diffugen.generation.models import load_pipeline
    from diffugen.textual_inversion.training import prediction_target
    from diffugen.toyworld.scene import COLORS, make_scene
    from diffugen.toyworld.truth import classify_shape

    torch.manual_seed(args.seed)
    kind = args.shape.replace("-", " ")
    hollow, shape = kind.startswith("hollow "), kind.removeprefix("hollow ")
    pipe = load_pipeline(args.model, "cpu", "float32")
    pipe.set_progress_bar_config(disable=True)
    colours = list(COLORS)
    kinds, round_holes = judged_kinds(args.model, kind)  # those of the model's world
    scenes = [make_scene(EXAMPLE_SEED + i, objects=[(colours[i % len(colours)], shape, hollow)], round_holes=round_holes).image
              for i in range(args.examples)]
    pixels = torch.tensor(np.stack(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor

    def encode(text: str) -> torch.Tensor:
        with torch.no_grad():
            return embed(pipe, [tokenize(pipe, text)])

    cond = torch.nn.Parameter(encode(args.init).clone())
    opt = torch.optim.AdamW([cond], lr=args.lr, weight_decay=0.0)
    sched, b = pipe.scheduler, len(scenes)
    for step in range(args.steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,))
        pred = pipe.unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=cond.expand(b, -1, -1)).sample
        loss = torch.nn.functional.mse_loss(pred, prediction_target(sched, latents, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)

    with torch.no_grad():
        out = pipe(prompt_embeds=cond.detach().expand(args.n, -1, -1), negative_prompt_embeds=encode("").expand(args.n, -1, -1),
                   num_inference_steps=25, guidance_scale=7.5, height=64, width=64, output_type="np",
                   generator=[torch.Generator().manual_seed(100 + i) for i in range(args.n)]).images
    images = (out * 255).round().astype(np.uint8)
    judged = Counter()
    for im in images:
        mask = foreground(im)
        judged[classify_shape(mask, kinds, round_holes) if mask.sum() >= 12 else "no object"] += 1
    print(machine_line("cpu"))
    print(f"free conditioning fitted to {args.examples} {kind} scenes ({args.steps} steps, lr {args.lr}): "
          f"{judged[kind]}/{args.n} images judged {kind}; all: {dict(judged)}")
    cols = 8
    rows = -(-args.n // cols)
    grid = np.zeros((rows * 64, cols * 64, 3), np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * 64:(i // cols + 1) * 64, (i % cols) * 64:(i % cols + 1) * 64] = im
    path = ROOT / "studies" / "out" / f"ceiling_{args.shape}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
