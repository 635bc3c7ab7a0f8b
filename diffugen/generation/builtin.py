"""Models built into DiffuGen, addressable in a config as ``builtin:<name>``.

``builtin:tiny`` is a complete Stable Diffusion 1.x pipeline (CLIP tokenizer and text encoder,
UNet with cross-attention, 8× VAE, DDIM scheduler) with random weights drawn from fixed seeds:
the same weights on every machine, built in about a second, no download. Its images are noise;
it exists so that every config, test and example exercises the real code paths offline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

# Words that tokenize to one token each in the tiny vocabulary; any other word still works,
# it is split into characters (which also gives the tests multi-token words).
TINY_WORDS = """
a an the of on in at with and or to is it its by from for through over under near front rear side top
view views wide angle close shot photo image picture scene background foreground high detailed street
road city rural town residential area building buildings house houses suburb highway bridge tunnel
car cars sedan suv pickup bus truck van taxi motorcycle bicycle person people dog cat tree trees
wheels tires driving parked crushed collision accident explosion fire firefighters smoke crash
day night noon sunrise sunset morning evening dusk dawn time sky clear clouds cloudy overcast
weather good sunny snowing snow raining rain foggy fog flood storm wet dry
red yellow white black purple blue green orange gray grey silver brown
circle square triangle star ring shape shapes object objects small large big tiny
grass sand water beach field forest desert mountain sea lake river park
camero mustang mini cooper ford fusion toyota corolla honda accord mercedes
deformed blurry low quality worst ugly cartoon drawing render sketch
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    # The byte → printable-character table of GPT-2/CLIP byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    # CLIP's BPE: repeatedly merge the adjacent pair of lowest rank.
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def write_tiny_tokenizer(folder: Path, words: list[str] = TINY_WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a word-level CLIP BPE vocabulary into ``folder``.

    Every byte is a token (alone and as a word end ``x</w>``), so any text tokenizes; each word of
    ``words`` gets merges that join whatever pieces the merges so far leave, so that it becomes a
    single token ``word</w>``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    seen = set(vocab)
    for word in dict.fromkeys(w.lower() for w in words):
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            ranks.setdefault((left, right), len(ranks))
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            left = merged
        assert _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks) == [word + "</w>"], word
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_random_pipeline(text: dict, unet: dict, vae: dict, sample_size: int = 64):
    """A StableDiffusionPipeline of the given component sizes with random weights from fixed seeds.

    Args:
        text: ``CLIPTextConfig`` sizes (``hidden_size``, ``num_hidden_layers``, ...).
        unet: ``UNet2DConditionModel`` arguments besides ``sample_size`` and the channel counts.
        vae: ``AutoencoderKL`` arguments besides the channel counts and ``sample_size``.
        sample_size: the UNet's nominal latent side (images are ``sample_size × vae scale`` by default).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
        )
    # Seeds per component, so each one is the same wherever it is built.
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text,
    ))
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4,
                                cross_attention_dim=text["hidden_size"], **unet)
    torch.manual_seed(2)
    vae_model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                              sample_size=sample_size * 2 ** (len(vae["block_out_channels"]) - 1), **vae)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    for module in (text_encoder, unet, vae_model):
        module.eval().requires_grad_(False)
    return StableDiffusionPipeline(
        vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_pipeline(sample_size: int = 64):
    """Build ``builtin:tiny``: a StableDiffusionPipeline with small random-weight components.

    Args:
        sample_size: the UNet's nominal latent size; 64 means 512×512 images by default (the size
            the daam oracle handles). Any multiple-of-8 size can be generated.
    """
    return build_random_pipeline(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
        unet=dict(layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4)),
        vae=dict(norm_num_groups=4, layers_per_block=1, block_out_channels=(4, 8, 8, 8),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        sample_size=sample_size,
    )


def build_sd15_sized_pipeline(sample_size: int = 64):
    """Random weights in Stable Diffusion 1.5's sizes (~860M-parameter UNet): for GPU benchmarks."""
    return build_random_pipeline(
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768),
        unet=dict(layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        sample_size=sample_size,
    )


def load_toyworld():
    """``builtin:toyworld``: the small model trained on the procedural toy world (shipped in the package)."""
    from ..toyworld import load_toyworld_pipeline

    return load_toyworld_pipeline()


BUILTINS = {"tiny": build_tiny_pipeline, "toyworld": load_toyworld}
