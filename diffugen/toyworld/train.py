"""Train the toy-world Stable Diffusion model from scratch on the CPU, in diffusers format.

Two phases, one command::

    python -m diffugen.toyworld.train --out diffugen/toyworld/model --steps 4200 [--resume] [--threads 1]

1. **VAE** (``--vae-steps``): an ``AutoencoderKL`` with 3 blocks (4× downsampling: 64×64 images →
   4×16×16 latents), reconstruction loss (L1 + MSE) plus a tiny KL term. Its latent scale
   (``scaling_factor`` = 1 / std of the latents) is measured afterwards and written to its config.
2. **UNet + text encoder** (``--steps``), jointly: DDPM noise-prediction (ε) loss on the frozen VAE's
   latents of freshly drawn scenes, captions dropped to "" 10% of the time (for classifier-free
   guidance), AdamW with warm-up and cosine decay, an EMA of the weights (what is saved).

Data are procedural (:mod:`diffugen.toyworld.scene`): batch ``k`` holds the scenes of seeds
``k * batch .. (k + 1) * batch - 1`` (training seeds stay below :data:`HELD_OUT_SEED`), and the
noise of step ``k`` comes from a generator seeded with ``(seed, k)``, so a run is reproducible and
a resumed run continues exactly. A checkpoint (models, EMA, optimizer, step) is written to
``--state`` every ``--ckpt-minutes``; ``--resume`` continues from it. The final model is written with
``save_pretrained(safe_serialization=True)`` in float16 (14.7 MB) and loads with
``StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32)``. The tokenizer is kept in the
state folder too, so a resumed run keeps its token ids even if the vocabulary code changes.

Design: UNet 5.9 M parameters (blocks 64/128/128, one ResNet each, cross-attention at 16×16 and
8×8 latents, none at 4×4 except the mid block), text encoder 0.7 M (3 layers, width 128, 32-token
context), VAE 0.7 M (16/32/64); about 1 s per step at batch 32 on one CPU thread (``--measure``
times the designs). ``--threads 1`` is the fast choice on a CPU shared with other work.

**Fine-tuning** (``--init-from FOLDER``): the UNet and text encoder of a trained model continue on
the current world, the VAE is kept, words the tokenizer lacks become added tokens; the state,
checkpoints and ``--resume`` work as for a run from scratch; with ``--arch mmdit`` a folder of that model's
transformer and text encoders continues on its frozen VAE (a folder of the other architecture is refused).
The shipped model is a 4,200-step base
model fine-tuned with hollow shapes for 3,800 steps (``--pool 8192 --lr 3e-4``); the exact commands
are in BENCHMARKS.md. ``--hollow-rate`` and ``--stretch-rate`` change how often the world draws
hollow and stretched shapes; ``--extra-shapes`` adds diamonds and houses and ``--round-holes`` gives
every hollow shape a round hole. A model trained on a world other than the default records it in
``world.json`` in its folder (:func:`diffugen.toyworld.load_world`).

**The MMDiT** (``--arch mmdit``, ``builtin:toyworld-mmdit``): the same loop, pool, captions and checkpoints
train an SD3-style transformer and its two CLIP encoders on a 16-channel VAE trained first (phase 1 as
above); :mod:`diffugen.toyworld.mmdit` has the design and the exact command is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffuGenError
from ..generation.builtin import write_tiny_tokenizer
from . import save_world
from .scene import EXTRA_SHAPES, HOLLOW_SHAPES, SHAPES, VOCABULARY, make_caption, make_scene

HELD_OUT_SEED = 1_000_000_000  # evaluation scenes/prompts use seeds from here on
MAX_TOKENS = 32  # the context length: captions are < 25 tokens
IMAGE_SIZE = 64

# Candidate designs, timed with --measure ("base" is the shipped one).
DESIGNS = {
    "small": dict(block_out_channels=(32, 64, 128), text_hidden=96),
    "base": dict(block_out_channels=(64, 128, 128), text_hidden=128),
}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---- components ----------------------------------------------------------------------------------
def build_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_tokenizer(Path(tmp), VOCABULARY)
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer, hidden: int = 128):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=16, layers_per_block=1,
        block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=IMAGE_SIZE,
    )


def build_unet(block_out_channels=(64, 128, 128), cross_attention_dim: int = 128):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=block_out_channels, norm_num_groups=16,
        # Cross-attention at 16×16 and 8×8 latents (where DAAM reads its maps), plain ResNets at 4×4.
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4,
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


# ---- data ----------------------------------------------------------------------------------------
# ``world``: the ``make_scene`` arguments of the world trained on (``world_settings``: from
# --hollow-rate, --stretch-rate, --extra-shapes, --round-holes); empty: the scene module's defaults.
def scene_batch(first_seed: int, n: int, world: dict | None = None) -> tuple[torch.Tensor, list[str]]:
    """``(n, 3, 64, 64)`` images in ``[-1, 1]`` and their captions for seeds ``first_seed ..``."""
    ims, caps = [], []
    for s in range(first_seed, first_seed + n):
        sc = make_scene(s, IMAGE_SIZE, **(world or {}))
        ims.append(sc.image)
        caps.append(sc.caption)
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, caps


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


# ---- phases --------------------------------------------------------------------------------------
def train_vae(vae, steps: int, batch: int, seed: int, state_path: Path, ckpt_minutes: float, start: dict | None,
              world: dict | None = None, device: str = "cpu"):
    vae.to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    step = 0
    if start and start.get("phase") == "vae":
        vae.load_state_dict(start["vae"])
        opt.load_state_dict(start["opt"])
        step = start["step"]
        log(f"vae: resumed at step {step}")
    vae.train()
    t0 = last_ckpt = time.time()
    losses = []
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3, 100)
        x, _ = scene_batch(seed * 7_919 + 500_000_000 + step * batch, batch, world)
        x = x.to(device)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 25 == 0 or step == steps:
            el = time.time() - t0
            log(f"vae step {step}/{steps} loss {np.mean(losses[-25:]):.4f} kl {kl.item():.2f} {el / 60:.1f} min")
        if time.time() - last_ckpt > ckpt_minutes * 60 or step == steps:
            torch.save({"phase": "vae", "vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, state_path)
            last_ckpt = time.time()
    vae.eval()
    return vae


@torch.no_grad()
def latent_scale(vae, seed: int, n: int = 256, world: dict | None = None, centred: bool = False) -> tuple[float, float]:
    """The mean of the VAE's latents of ``n`` scenes and 1 / their std (about the mean when ``centred``, else about 0)."""
    x, _ = scene_batch(seed * 7_919 + 900_000_000, n, world)
    z = torch.cat([vae.encode(x[i : i + 64].to(vae.device)).latent_dist.mean.cpu() for i in range(0, n, 64)])
    mean = float(z.mean())
    return mean, float(1.0 / (z - mean).std()) if centred else float(1.0 / z.std())


def caption_variant(seed: int, rng: random.Random, world: dict | None = None) -> str:
    """A fresh caption (another template draw) of the scene of ``seed``."""
    sc = make_scene(seed, IMAGE_SIZE, **(world or {}))
    return make_caption(rng, sc.objects, sc.attributes["background"], sc.attributes["time"])


@torch.no_grad()
def latent_pool(vae, seed: int, n: int, path: Path, world: dict | None = None):
    """Encode ``n`` training scenes once: posterior mean and std, kept in ``path`` for resuming."""
    if path.exists():
        d = torch.load(path, weights_only=True, map_location="cpu")
        # (a pool of another world, or of a VAE with other latent channels, is made again)
        if len(d["seeds"]) == n and d.get("world", {}) == (world or {}) and d["mean"].shape[1] == vae.config.latent_channels:
            log(f"latent pool: {n} scenes from {path}")
            return d["mean"], d["std"], d["seeds"]
    t0 = time.time()
    seeds = torch.arange(n, dtype=torch.long) + seed * 7_919
    means, stds = [], []
    for i in range(0, n, 64):
        x, _ = scene_batch(int(seeds[i]), min(64, n - i), world)
        post = vae.encode(x.to(vae.device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
        if (i // 64) % 32 == 0:
            log(f"latent pool: {i + 64}/{n} encoded")
    d = {"mean": torch.cat(means), "std": torch.cat(stds), "seeds": seeds, "world": dict(world or {})}
    torch.save(d, path)
    log(f"latent pool: {n} scenes encoded in {(time.time() - t0) / 60:.1f} min")
    return d["mean"], d["std"], d["seeds"]


def unet_loss(models: dict, ids: torch.Tensor, z0: torch.Tensor, gen: torch.Generator, scheduler) -> torch.Tensor:
    """DDPM ε-prediction loss of the UNet on latents ``z0`` with the text encoder's context of ``ids``."""
    noise = torch.randn(z0.shape, generator=gen).to(z0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=gen)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.device)
    t = t.to(z0.device)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    cond = models["text_encoder"](ids)[0]
    return F.mse_loss(models["unet"](zt, t, encoder_hidden_states=cond).sample, noise)


def train_diffusion(models: dict[str, torch.nn.Module], loss_fn, vae, tokenizer, args, state_path: Path,
                    start: dict | None, world: dict | None, save) -> dict[str, torch.nn.Module]:
    """Train ``models`` (denoiser and text encoders, jointly) on the frozen VAE's latents of the scene pool.

    Args:
        loss_fn: ``(models, token ids, scaled latents z0, generator) -> loss`` (:func:`unet_loss`,
            :func:`~diffugen.toyworld.mmdit.flow_loss`).
        save: ``(ema models) -> None``: writes the model folder (every ``--save-every`` steps).

    Returns:
        The EMA copies of ``models`` (what is saved).
    """
    device = args.device
    for m in models.values():
        m.to(device)
    vae.to(device)
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    emas = {name: copy.deepcopy(m).requires_grad_(False) for name, m in models.items()}
    step = 0
    if start and start.get("phase") == "diffusion":
        for name in models:
            models[name].load_state_dict(start[name])
            emas[name].load_state_dict(start[f"ema_{name}"])
        opt.load_state_dict(start["opt"])
        step = start["step"]
        log(f"diffusion: resumed at step {step}")
    for m in models.values():
        m.train()
    vae.requires_grad_(False).eval()
    sf = vae.config.scaling_factor
    shift = vae.config.get("shift_factor") or 0.0
    empty = token_ids(tokenizer, [""])[0]
    t0 = last_ckpt = time.time()
    losses: list[float] = []

    def save_state():
        state = {name: m.state_dict() for name, m in models.items()}
        state.update({f"ema_{name}": m.state_dict() for name, m in emas.items()})
        state.update(phase="diffusion", opt=opt.state_dict(), step=step, vae=vae.state_dict(), scaling_factor=sf,
                     shift_factor=shift)
        torch.save(state, state_path)

    pool_mean, pool_std, pool_seeds = latent_pool(vae, args.seed, args.pool, state_path.parent / "pool.pt", world)
    per_epoch = len(pool_seeds) // args.batch
    while step < args.steps:
        lr = lr_at(step, args.steps, args.lr, 200)
        for g in opt.param_groups:
            g["lr"] = lr
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(len(pool_seeds), generator=torch.Generator().manual_seed(args.seed * 31 + epoch))
        idx = order[k * args.batch : (k + 1) * args.batch]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 17 + step)
        rng = random.Random(args.seed * 1_000_003 + step)
        caps = [caption_variant(int(pool_seeds[i]), rng, world) for i in idx]
        ids = token_ids(tokenizer, caps)
        for i in range(len(caps)):
            if rng.random() < args.uncond:
                ids[i] = empty
        mean, std = pool_mean[idx], pool_std[idx]
        z0 = ((mean + std * torch.randn(mean.shape, generator=gen) - shift) * sf).to(device)
        ids = ids.to(device)
        loss = loss_fn(models, ids, z0, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        for name, m in models.items():
            ema_update(emas[name], m, decay)
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps:
            el = time.time() - t0
            log(f"step {step}/{args.steps} loss {np.mean(losses[-50:]):.4f} lr {lr:.2e} "
                f"{el / 60:.1f} min this run, {el / max(1, len(losses)):.2f} s/step")
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_state()
            last_ckpt = time.time()
            log(f"checkpoint at step {step} → {state_path}")
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save(emas)
            log(f"saved model at step {step} → {args.out}")
    save_state()
    return emas


def save_pipeline(unet, text_encoder, vae, tokenizer, scheduler, out: Path, world: dict | None = None,
                  dtype=torch.float16) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype), text_encoder=copy.deepcopy(text_encoder).to(dtype), tokenizer=tokenizer,
        unet=copy.deepcopy(unet).to(dtype), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    save_world(out, world)


# ---- measuring -----------------------------------------------------------------------------------
def measure(batch: int, steps: int = 4) -> None:
    """Time a few optimizer steps of the VAE and of each UNet design (UNet + text encoder)."""
    torch.manual_seed(0)
    tok = build_tokenizer()
    vae = build_vae()
    n = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters())
    times = []
    for i in range(steps):
        t = time.time()
        x, _ = scene_batch(i * batch, batch)
        post = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(post.sample()).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.time() - t)
    log(f"vae {n / 1e6:.2f} M params: {np.median(times[1:]):.2f} s/step at batch {batch}")
    for name, d in DESIGNS.items():
        unet = build_unet(d["block_out_channels"], d["text_hidden"])
        te = build_text_encoder(tok, d["text_hidden"])
        nu, nt = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in te.parameters())
        opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()))
        times = []
        for i in range(steps):
            t = time.time()
            x, caps = scene_batch(i * batch, batch)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.sample()
            pred = unet(z, torch.randint(0, 1000, (batch,)), encoder_hidden_states=te(token_ids(tok, caps))[0]).sample
            loss = F.mse_loss(pred, z)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.time() - t)
        log(f"design {name}: unet {nu / 1e6:.2f} M + text {nt / 1e6:.2f} M params: "
            f"{np.median(times[1:]):.2f} s/step at batch {batch}")


# ---- entry ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffugen.toyworld.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p.parse_args(argv)


def _rate(text: str) -> float:
    """An argparse type: a share between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli._shared import positive_int

    p.add_argument("--out", default=None, help="diffusers folder to write (default: the shipped model's folder, "
                                                "diffugen/toyworld/model or, with --arch mmdit, model-mmdit)")
    p.add_argument("--steps", type=positive_int, default=4200, help="UNet + text-encoder optimizer steps")
    p.add_argument("--vae-steps", type=positive_int, default=1500)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--vae-batch", type=positive_int, default=16)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--pool", type=positive_int, default=16384, help="scenes encoded once by the VAE and reused with new captions/noise")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond", type=float, default=0.1, help="fraction of captions dropped (for CFG)")
    p.add_argument("--design", choices=sorted(DESIGNS), default="base")
    p.add_argument("--arch", choices=("unet", "mmdit"), default="unet",
                   help="unet: the Stable Diffusion model (builtin:toyworld); mmdit: an SD3-style transformer with a "
                        "16-channel VAE of its own and the shipped model's vocabulary (builtin:toyworld-mmdit, "
                        "diffugen.toyworld.mmdit)")
    p.add_argument("--mmdit-layers", type=positive_int, default=4, help="--arch mmdit: joint blocks (from scratch)")
    p.add_argument("--mmdit-heads", type=positive_int, default=4,
                   help="--arch mmdit: attention heads of 32, so the width is 32 × this (from scratch)")
    p.add_argument("--hollow-rate", type=_rate, default=None, help="share of squares and triangles drawn hollow (default: the world's)")
    p.add_argument("--stretch-rate", type=_rate, default=None, help="share of the other squares and triangles drawn wide or tall")
    p.add_argument("--extra-shapes", action="store_true",
                   help=f"add {' and '.join(EXTRA_SHAPES)} to the world's shapes, both of which can be hollow")
    p.add_argument("--round-holes", action="store_true", help="hollow shapes get a round hole (a hollow circle would be a ring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu",
                   help="where the models train: cpu, or cuda where a GPU is lent (the scenes and the noise are drawn "
                        "on the CPU, so a seed trains the same steps on either)")
    p.add_argument("--state", default=str(Path.home() / ".cache" / "diffugen" / "toyworld-train"),
                   help="folder of the resumable training state (checkpoints, latent pool)")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--save-every", type=int, default=500, help="also write the model folder every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the state in --state")
    p.add_argument("--init-from", default=None,
                   help="fine-tune a trained model folder instead of starting from scratch (its VAE is kept; words "
                        "of the vocabulary it lacks are added as tokens)")
    p.add_argument("--measure", action="store_true", help="only time a few steps of each design and exit")


def world_settings(args) -> dict:
    """The ``make_scene`` arguments the training flags ask for (empty: the world's defaults)."""
    world = {k: v for k, v in (("hollow_rate", args.hollow_rate), ("stretch_rate", args.stretch_rate)) if v is not None}
    if args.extra_shapes:
        world.update(shapes=SHAPES + EXTRA_SHAPES, hollow_shapes=HOLLOW_SHAPES + EXTRA_SHAPES)
    if args.round_holes:
        world["round_holes"] = True
    return world


def check_device(name: str) -> None:
    """Refuse a ``--device`` this machine does not have, before anything is written."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DiffuGenError(f"--device {name}: expected cpu or cuda[:N] ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffuGenError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise DiffuGenError(f"--device {name}: expected cpu or cuda[:N]")


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except DiffuGenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)
    world = world_settings(args)
    if args.out is None:
        from . import MMDIT_DIR

        args.out = str(MMDIT_DIR if args.arch == "mmdit" else Path(__file__).parent / "model")
    if args.measure:
        measure(args.batch)
        return 0
    if args.init_from:
        from ..errors import ModelNotFoundError
        from . import model_available

        if not model_available(args.init_from):  # before anything is written
            raise ModelNotFoundError(f"--init-from: no toy-world model in {Path(args.init_from).resolve()} "
                                     "(expected a diffusers folder with model_index.json)")
        from ..generation.models import _class_name

        found = _class_name(args.init_from)
        wanted = ARCH_PIPELINES[args.arch]
        if found != wanted:
            arch = next((a for a, c in ARCH_PIPELINES.items() if c == found), None)
            raise DiffuGenError(f"--init-from {args.init_from}: a {found}, not the {wanted} that --arch {args.arch} "
                                "trains" + (f" (pass --arch {arch})" if arch else ""))
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    state_dir = Path(args.state)
    state_dir.mkdir(parents=True, exist_ok=True)
    vae_state, diff_state = state_dir / "vae.pt", state_dir / "diffusion.pt"
    if not args.resume and (vae_state.exists() or diff_state.exists()):
        raise DiffuGenError(f"{state_dir} holds a previous run: pass --resume to continue it, or remove it to start over")
    # (`diffugen toyworld train` adds its handler function to the arguments: not a setting)
    (state_dir / "args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if not callable(v)}, indent=1))
    t_start = time.time()
    if args.arch == "mmdit":
        from .mmdit import train_mmdit

        return train_mmdit(args, state_dir, diff_state, world, t_start)
    if args.init_from:
        tokenizer, text_encoder, unet, vae, scheduler = finetune_components(Path(args.init_from), state_dir / "tokenizer", world)
        diff_start = torch.load(diff_state, weights_only=True, map_location="cpu") if args.resume and diff_state.exists() else None
        return _train_unet(unet, text_encoder, vae, tokenizer, scheduler, args, diff_state, diff_start, world, t_start)
    design = DESIGNS[args.design]
    # The tokenizer is kept with the state: a resumed run must use the token ids it was trained with.
    tok_dir = state_dir / "tokenizer"
    if args.resume and tok_dir.is_dir():
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    else:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(str(tok_dir))
    torch.manual_seed(args.seed)
    vae = build_vae()
    torch.manual_seed(args.seed + 1)
    text_encoder = build_text_encoder(tokenizer, design["text_hidden"])
    torch.manual_seed(args.seed + 2)
    unet = build_unet(design["block_out_channels"], design["text_hidden"])
    scheduler = build_scheduler()
    log(f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M, unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, "
        f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M params; vocabulary {len(tokenizer)} tokens")

    diff_start = torch.load(diff_state, weights_only=True, map_location="cpu") if args.resume and diff_state.exists() else None
    vae = trained_vae(vae, args, vae_state, diff_start, world)
    return _train_unet(unet, text_encoder, vae, tokenizer, scheduler, args, diff_state, diff_start, world, t_start)


def trained_vae(vae, args, vae_state: Path, diff_start: dict | None, world: dict, shift: bool = False):
    """The VAE of the diffusion checkpoint ``diff_start``, else trained (or resumed) to ``--vae-steps``, with its
    latent normalisation measured: ``scaling_factor`` (1 / std) and, with ``shift`` (SD3's), ``shift_factor``."""
    if diff_start is not None:
        vae.load_state_dict(diff_start["vae"])
        vae.register_to_config(scaling_factor=diff_start["scaling_factor"],
                               **({"shift_factor": diff_start["shift_factor"]} if shift else {}))
        log(f"vae: from the diffusion checkpoint (scaling factor {diff_start['scaling_factor']:.4f})")
        return vae.eval()
    vae_start = torch.load(vae_state, weights_only=True, map_location="cpu") if args.resume and vae_state.exists() else None
    if vae_start is None or vae_start["step"] < args.vae_steps:
        vae = train_vae(vae, args.vae_steps, args.vae_batch, args.seed, vae_state, args.ckpt_minutes, vae_start, world,
                        args.device)
    else:
        vae.load_state_dict(vae_start["vae"])
        log("vae: already trained")
    vae.eval()
    mean, sf = latent_scale(vae, args.seed, world=world, centred=shift)
    vae.register_to_config(scaling_factor=sf, **({"shift_factor": mean} if shift else {}))
    log(f"vae: latent scaling factor {sf:.4f}" + (f", shift {mean:.4f}" if shift else ""))
    return vae


def _train_unet(unet, text_encoder, vae, tokenizer, scheduler, args, state_path: Path, start: dict | None,
                world: dict, t_start: float) -> int:
    def save(models):
        save_pipeline(models["unet"], models["text_encoder"], vae, tokenizer, scheduler, Path(args.out), world)

    emas = train_diffusion({"unet": unet, "text_encoder": text_encoder},
                           lambda models, ids, z0, gen: unet_loss(models, ids, z0, gen, scheduler),
                           vae, tokenizer, args, state_path, start, world, save)
    save(emas)
    return finish(args, t_start)


ARCH_PIPELINES = {"unet": "StableDiffusionPipeline", "mmdit": "StableDiffusion3Pipeline"}  # what --arch trains


def finish(args, t_start: float) -> int:
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    log(f"done: model in {args.out} ({size / 1e6:.1f} MB), {(time.time() - t_start) / 60:.1f} min this run")
    return 0


def finetune_components(folder: Path, tok_dir: Path, world: dict | None = None):
    """The components of a trained model folder in float32, its vocabulary extended to :data:`VOCABULARY`
    and the world's shapes.

    Words the tokenizer does not keep whole (e.g. ``hollow``, added to the world after the model was
    trained) become added tokens; their embedding rows start at the mean of the existing rows.
    """
    from ..textual_inversion.training import add_token
    from . import load_toyworld_pipeline

    pipe = load_toyworld_pipeline(folder)
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    words = list(VOCABULARY) + [w for w in (world or {}).get("shapes", ()) if w not in VOCABULARY]
    new = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if new:
        add_token(tokenizer, text_encoder, new, text_encoder.get_input_embeddings().weight.detach().mean(0))
        log(f"fine-tuning {folder}: new words {new}")
    tokenizer.save_pretrained(str(tok_dir))
    return tokenizer, text_encoder, pipe.unet, pipe.vae, pipe.scheduler


if __name__ == "__main__":
    sys.exit(main())
