"""Textual inversion (paper sec. 3.4): learn a new token's embedding from a few images of a concept.

The recipe of diffusers' ``examples/textual_inversion``: the token is added to the tokenizer, its
embedding row(s) start from an existing word's (``init_word``), and only those rows train, with the
usual noise-prediction loss of the frozen UNet on the frozen VAE's latents of the images, captioned
with object templates ("a photo of a {}") or, when the folder has a ``metadata.jsonl`` (Hugging Face
imagefolder convention), each image's own caption with ``{}`` standing for the token::

    diffugen textual-inversion train --images DIR --token "<thing>" --init-word object \\
        --model builtin:toyworld --out thing.safetensors

The result is a diffusers-format embedding (``{token: (num_vectors, dim)}`` in safetensors) that a
generate config loads with ``"textual_inversion": [{"path": "thing.safetensors", "token": "<thing>"}]``.

Runs are deterministic and resumable: each image is encoded once (posterior mean and std kept), and
step ``k`` draws its images, captions, latents, noise and timesteps from generators seeded with
``(seed, k)``. Every ``checkpoint_every`` steps the rows and their AdamW state are written to
``OUT.ckpt.safetensors`` (safetensors tensors + string metadata, no pickle); ``resume=True`` continues
from there and ends with the same embedding as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffuGenError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a close-up photo of a {}",
    "a photo of the {}",
    "a good photo of a {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a cropped photo of the {}",
)
# Words offered when the init word is several tokens (those that are one token in the model's vocabulary).
_SUGGESTIONS = ("object", "thing", "person", "animal", "car", "dog", "cat", "shape", "toy", "building", "style")


@dataclass
class TextualInversionResult:
    """What a run wrote: the embedding file and how training went."""

    path: Path
    token: str
    steps: int
    num_vectors: int
    final_loss: float | None
    losses: list[float] = field(default_factory=list)  # one per step, resumed steps included
    pipeline: Any = field(default=None, repr=False)  # the trained pipeline, the token in its tokenizer

    def config_snippet(self) -> str:
        """The generate-config entry that loads this embedding."""
        return json.dumps({"textual_inversion": [{"path": str(self.path), "token": self.token}]})

    def __str__(self) -> str:
        loss = f", final loss {self.final_loss:.4f}" if self.final_loss is not None else ""
        return f"trained {self.token} ({self.num_vectors} vector(s)) for {self.steps} steps{loss}: {self.path}"


# ---- data ----------------------------------------------------------------------------------------
def _seeded(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *keys)``: every step's randomness is reproducible on its own."""
    value = seed
    for k in keys:
        value = value * 1_000_003 + k
    return torch.Generator().manual_seed(value % (1 << 63))


def find_images(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DiffuGenError(
            f"--images: no such folder {folder.resolve()} (expected a folder of .png/.jpg/.jpeg/.webp images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffuGenError(f"--images: {folder.resolve()} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def read_captions(folder: Path, files: list[Path], token: str) -> dict[str, str]:
    """``metadata.jsonl`` captions by file name (``{}`` or the token itself marks the concept); ``{}`` if none."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return {}
    names = {f.name for f in files}
    captions = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DiffuGenError(
                f'{meta}:{n}: expected a line like {{"file_name": "x.png", "text": "a red {{}} on the grass"}}') from None
        if name not in names:
            raise DiffuGenError(f"{meta}:{n}: {name!r} is not an image in {folder}")
        if "{}" not in text:
            if token not in text:
                raise DiffuGenError(f"{meta}:{n}: the caption {text!r} does not mention the concept: "
                                    f"write {{}} (or {token}) where it goes")
            text = text.replace(token, "{}")  # one form, so that extra vectors expand alike
        captions[name] = text
    missing = names - captions.keys()
    if missing:
        logger.warning("%d image(s) have no caption in %s and use the templates: %s", len(missing), meta,
                       sorted(missing)[:5])
    return captions


def load_image(path: Path, size: int) -> torch.Tensor:
    """An image as ``(3, size, size)`` float32 in ``[-1, 1]``: RGB, centre square crop, bicubic resize."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def encode_images(vae, files: list[Path], size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each image once; returns the VAE posterior's mean and std, each ``(n, C, size/f, size/f)`` float32.

    Why: the VAE is frozen, so its posterior per image never changes; sampling ``mean + std * ε``
    each step is exactly ``latent_dist.sample()`` without re-running the encoder.
    """
    means, stds = [], []
    for i in range(0, len(files), batch_size):
        x = torch.stack([load_image(f, size) for f in files[i : i + batch_size]])
        post = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Images of ``step``: the stream walks a fresh permutation of the ``n`` images each epoch."""
    perms: dict[int, list[int]] = {}
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(i, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=_seeded(seed, 1, epoch)).tolist()
        out.append(perms[epoch][k])
    return out


# ---- model surgery -------------------------------------------------------------------------------
def check_token(tokenizer, token: str, num_vectors: int) -> list[str]:
    """The new tokens (``token``, ``token_1``, ...; diffusers' names for extra vectors), checked to be new."""
    if not token or any(c.isspace() for c in token):
        raise DiffuGenError(f"--token must be one word without spaces, like '<my-thing>'; got {token!r}")
    if num_vectors < 1:
        raise DiffuGenError(f"--num-vectors must be >= 1, got {num_vectors}")
    tokens = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    vocab = tokenizer.get_vocab()
    for t in tokens:
        pieces = tokenizer.tokenize(t)
        if t in vocab or (len(pieces) == 1 and pieces[0] in vocab and pieces[0].removesuffix("</w>") == t.lower()):
            raise DiffuGenError(
                f"--token {t!r} is already in the model's vocabulary; pick a new name such as '<{token.strip('<>')}-new>'"
            )
    return tokens


def init_token_id(tokenizer, init_word: str) -> int:
    """The id of ``init_word``, which must be a single token of the tokenizer."""
    ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        ok = [w for w in _SUGGESTIONS if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]
        if not ok:  # a small special-purpose vocabulary: offer some of its own whole words
            by_id = sorted((i, t[:-4]) for t, i in tokenizer.get_vocab().items() if t.endswith("</w>"))
            ok = [w for _, w in by_id if len(w) >= 3 and w.isalpha()]
        hint = f", such as {', '.join(repr(w) for w in ok[:5])}" if ok else ""
        raise DiffuGenError(
            f"--init-word {init_word!r} is {len(ids)} tokens for this model's tokenizer "
            f"({tokenizer.convert_ids_to_tokens(ids)}); it must be one token: pick a one-token word close to the "
            f"concept{hint}"
        )
    return ids[0]


def init_token_ids(tokenizer, init_word: str, num_vectors: int) -> list[int]:
    """The ids the token's ``num_vectors`` rows start from: one word for all, or one word per vector.

    ``"hollow square"`` with two vectors starts them at ``hollow`` and ``square``: a concept between
    known ones (a ring: a hollow thing that is round) often starts best from its description.
    """
    words = init_word.split()
    if len(words) not in (1, num_vectors):
        raise DiffuGenError(f"--init-word {init_word!r} is {len(words)} words: give one word, or one per vector "
                            f"(--num-vectors {num_vectors})")
    ids = [init_token_id(tokenizer, w) for w in words]
    return ids * num_vectors if len(ids) == 1 else ids


def add_token(tokenizer, text_encoder, tokens: list[str], init: int | list[int] | torch.Tensor) -> list[int]:
    """Add ``tokens`` to the tokenizer and text encoder; returns their ids.

    Args:
        init: each new row starts as a copy of this token id's row (or of the ids' rows, one per
            token), or of this ``(dim,)`` vector.
    """
    with torch.no_grad():
        row = (text_encoder.get_input_embeddings().weight[init] if isinstance(init, (int, list)) else init).clone()
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):  # check_token passed, so this is a tokenizer we do not understand
        raise DiffuGenError(f"the tokenizer added {added} of the tokens {tokens}; is one of them already known?")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set just below
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[ids] = row
    return ids


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict for ``latents`` noised with ``noise`` at ``t`` (its scheduler's kind)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise DiffuGenError(
        f"the model's scheduler predicts {kind!r}; textual inversion supports epsilon, v_prediction and sample")


# ---- files ---------------------------------------------------------------------------------------
def _max_norm(value: float | str | None) -> float | str | None:
    """``max_norm`` checked: ``None``, ``"vocab"``, or a positive number (a string from the CLI too)."""
    if value is None or value == "vocab":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise DiffuGenError(f"--max-norm must be a positive number or 'vocab'; got {value!r}")
    return number


def checkpoint_path(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its checkpoint: ``NAME.ckpt.safetensors`` next to it."""
    out = Path(out)
    return out.with_suffix(".ckpt.safetensors")


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from ..store.files import write_atomic

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))  # never a half-written file


def _model_key(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _read_checkpoint(path: Path, identity: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise DiffuGenError(
            f"could not read the checkpoint {path}: {type(err).__name__}: {err}; delete it to start over") from None
    if (meta.get("format") != "diffugen-textual-inversion-checkpoint"
            or not {"embeds", "exp_avg", "exp_avg_sq"} <= tensors.keys()):
        raise DiffuGenError(f"{path} is not a DiffuGen textual-inversion checkpoint; delete it or choose another --out")
    for key, want in identity.items():
        if meta.get(key) != want:
            raise DiffuGenError(
                f"the checkpoint {path} was made with {key} {meta.get(key)!r}, this run has {want!r}: "
                "resume with the same token, init word, model and number of vectors, or delete the checkpoint"
            )
    return tensors, meta


# ---- training ------------------------------------------------------------------------------------
def train_textual_inversion(
    images: str | Path,
    token: str,
    init_word: str,
    model: str,
    out: str | Path,
    *,
    steps: int = 500,
    lr: float = 5e-3,
    batch_size: int = 4,
    size: int | None = None,
    templates: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    checkpoint_every: int = 50,
    resume: bool = False,
    num_vectors: int = 1,
    max_norm: float | str | None = None,
    progress: bool = True,
) -> TextualInversionResult:
    """Learn an embedding for ``token`` from the images in ``images``; write it to ``out`` (safetensors).

    Each step takes ``batch_size`` images, draws latents ``z0 = (mean + std·ε)·scaling_factor`` of shape
    ``(B, C, size/f, size/f)`` (``f`` the VAE's scale factor), noise and timesteps, and minimises
    ``MSE(unet(z_t, t, text(caption)), target)`` (target: the noise, or the velocity for
    ``v_prediction`` models) with AdamW over the text encoder's input embedding matrix
    ``(vocab, dim)``; after every step all rows but the new ones are restored, so only the new
    ``(num_vectors, dim)`` rows change. The UNet and VAE run in ``dtype``; the embedding trains in float32.

    Args:
        images: a folder of .png/.jpg/.jpeg/.webp images; an optional ``metadata.jsonl`` gives captions.
        token: the new token, one word without spaces (conventionally ``<name>``).
        init_word: a word that is one token of the model's tokenizer; the new rows start as its embedding
            (or ``num_vectors`` such words, one per row).
        model: anything :func:`diffugen.generation.models.load_pipeline` loads (``builtin:toyworld``, a folder, a hub id, ...).
        out: the ``.safetensors`` file to write, ``{token: (num_vectors, dim)}`` (diffusers format).
        size: image side in pixels (default: the model's native ``unet.sample_size × vae scale factor``).
        templates: captions with ``{}`` for the token, for images without a ``metadata.jsonl`` caption.
        checkpoint_every: write ``OUT.ckpt.safetensors`` every this many steps and at the end (0: never).
        resume: continue from that checkpoint; without it an existing checkpoint is refused.
        num_vectors: rows the token gets (extra ones are named ``token_1``, ``token_2``, ...).
        max_norm: after each step, scale any new row longer than this back to this L2 norm (a number,
            or its text); ``"vocab"``: the longest row of the model's own vocabulary. Unconstrained rows grow
            several times longer than any word's, which can drown the other words of a prompt.
            ``None`` (default): the plain diffusers recipe.
        progress: show a tqdm bar with the loss.

    Returns:
        The file written, the loss of every step, and the trained pipeline (a fresh one, not the
        process-wide cached one) with the token in its tokenizer and text encoder.

    Raises:
        DiffuGenError: bad folder, token, init word, size or checkpoint (the message says which and why).
        ModelNotFoundError: the model could not be loaded.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from ..generation.models import load_pipeline

    out = Path(out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise DiffuGenError(f"--out must be a .safetensors file, got {str(out)!r}")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise DiffuGenError(
            f"steps and batch size must be >= 1 and lr > 0; got steps={steps}, batch_size={batch_size}, lr={lr}")
    max_norm = _max_norm(max_norm)
    templates = list(templates or DEFAULT_TEMPLATES)
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise DiffuGenError(f"--template needs {{}} where the token goes; got {bad}")
    ckpt = checkpoint_path(out)
    if ckpt.exists() and not resume:
        raise DiffuGenError(
            f"a checkpoint of an earlier run exists: {ckpt}; pass --resume to continue it, or delete it to start over")
    files = find_images(images)
    captions = read_captions(Path(images).expanduser(), files, token)

    # load_pipeline builds a fresh pipeline (never the process-wide cached one), so adding a token here
    # leaves any pipeline that generate() holds untouched.
    pipe = load_pipeline(model, device, dtype)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    tokens = check_token(tokenizer, token, num_vectors)
    init_ids = init_token_ids(tokenizer, init_word, num_vectors)
    scale = pipe.vae_scale_factor
    multiple = scale * 2 ** (len(unet.config.block_out_channels) - 1)
    size = size or unet.config.sample_size * scale
    if size < multiple or size % multiple:
        raise DiffuGenError(
            f"--size must be a multiple of {multiple} for this model (VAE ×{scale}, UNet downsampling); got {size}")

    dev = unet.device
    text_encoder.to(dtype=torch.float32)  # the trained rows need float32 even when the UNet runs in float16
    ids = add_token(tokenizer, text_encoder, tokens, init_ids)
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False).eval()
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    frozen = weight.detach().clone()  # the rows to restore after each step
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    if max_norm == "vocab":
        max_norm = float(frozen[keep].norm(dim=1).max())
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=0.0)

    identity = {"token": token, "init_word": init_word, "model": _model_key(model), "num_vectors": str(num_vectors)}
    setup = {"seed": str(seed), "batch_size": str(batch_size), "size": str(size), "images": str(len(files))}
    if max_norm is not None:  # absent otherwise, as in checkpoints written before the option
        setup["max_norm"] = str(max_norm)
    start, losses = 0, []
    if resume and ckpt.exists():
        state, meta = _read_checkpoint(ckpt, identity)
        changed = {k: (meta.get(k), setup.get(k)) for k in [*setup, "max_norm"] if meta.get(k) != setup.get(k)}
        if changed:
            logger.warning("resuming %s with changed settings %s: the run will differ from an uninterrupted one",
                           ckpt, changed)
        start, losses = int(meta["step"]), json.loads(meta["losses"])
        if start > steps:
            logger.warning("the checkpoint %s is at step %d, past steps=%d: writing its embedding as is", ckpt, start, steps)
        with torch.no_grad():
            weight[ids] = state["embeds"].to(weight.device)
        # AdamW is elementwise: the new rows' moments are all the state their trajectory depends on.
        exp_avg, exp_avg_sq = torch.zeros_like(weight), torch.zeros_like(weight)
        exp_avg[ids], exp_avg_sq[ids] = state["exp_avg"].to(dev), state["exp_avg_sq"].to(dev)
        optimizer.state[weight] = {"step": torch.tensor(float(start)), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        logger.info("resumed %s at step %d of %d", ckpt, start, steps)
    elif resume:
        logger.warning("--resume: no checkpoint at %s, starting from step 0", ckpt)

    def save_checkpoint(step: int) -> None:
        st = optimizer.state[weight]  # called after a step, so AdamW has its moments
        _save_atomic(
            {"embeds": weight[ids], "exp_avg": st["exp_avg"][ids], "exp_avg_sq": st["exp_avg_sq"][ids]},
            ckpt,
            {"format": "diffugen-textual-inversion-checkpoint", **identity, **setup, "step": str(step),
             "steps": str(steps), "lr": str(lr), "losses": json.dumps(losses)},
        )

    mean, std = encode_images(vae, files, size, batch_size)
    sf = vae.config.scaling_factor
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    placeholder = " ".join(tokens)  # what diffusers' loader expands the token to at generation time
    prompts_of = [captions.get(f.name) for f in files]
    max_len = tokenizer.model_max_length

    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc=f"textual inversion {token}",
               unit="step")
    for step in bar:
        gen = _seeded(seed, 2, step)
        idx = batch_indices(seed, step, batch_size, len(files))
        picks = torch.randint(len(templates), (len(idx),), generator=gen).tolist()
        texts = [(prompts_of[i] or templates[p]).replace("{}", placeholder) for i, p in zip(idx, picks)]
        input_ids = tokenizer(texts, padding="max_length", max_length=max_len, truncation=True,
                              return_tensors="pt").input_ids
        m, s = mean[idx], std[idx]
        latents = (m + s * torch.randn(m.shape, generator=gen).to(dev)) * sf
        noise = torch.randn(latents.shape, generator=gen).to(dev)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen).to(dev)
        noisy = noise_scheduler.add_noise(latents, noise, t)

        cond = text_encoder(input_ids.to(dev))[0]
        pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample
        loss = F.mse_loss(pred.float(), prediction_target(noise_scheduler, latents, noise, t).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            weight[keep] = frozen[keep]  # only the new token's rows may move
            if max_norm is not None:
                norms = weight[ids].norm(dim=1, keepdim=True)
                weight[ids] = weight[ids] * (max_norm / norms).clamp(max=1.0)
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if checkpoint_every > 0 and (done % checkpoint_every == 0 or done == steps):
            save_checkpoint(done)
            logger.info("checkpoint at step %d (loss %.4f): %s", done, losses[-1], ckpt)
    bar.close()
    weight.requires_grad_(False)

    trained = max(start, steps)
    _save_atomic({token: weight[ids]}, out, {"token": token, "init_word": init_word, "model": model,
                                            "steps": str(trained), "format": "diffusers-textual-inversion"})
    return TextualInversionResult(path=out.resolve(), token=token, steps=trained, num_vectors=num_vectors,
                                  final_loss=losses[-1] if losses else None, losses=losses, pipeline=pipe)
