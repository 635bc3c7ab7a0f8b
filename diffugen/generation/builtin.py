"""Models built into DiffuGen, addressable in a config as ``builtin:<name>``.

``builtin:tiny`` is a complete Stable Diffusion 1.x pipeline (CLIP tokenizer and text encoder,
UNet with cross-attention, 8× VAE, DDIM scheduler) with random weights drawn from fixed seeds:
the same weights on every machine, built in about a second, no download. Its images are noise;
it exists so that every config, test and example exercises the real code paths offline.
"""

from __future__ import annotations

import json
import re
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


def _merge_whole(symbols: list[str], ranks: dict[tuple[str, str], int], vocab: list[str]) -> None:
    # Add the merges (and their tokens to `vocab`) that make BPE join `symbols` into one token, on top of `ranks`.
    seen = set(vocab)
    pieces = _bpe(symbols, ranks)
    left = pieces[0]
    for right in pieces[1:]:
        merged = left + right
        ranks.setdefault((left, right), len(ranks))
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
        left = merged
    assert _bpe(symbols, ranks) == ["".join(symbols)], symbols


def write_tiny_tokenizer(folder: Path, words: list[str] = TINY_WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a word-level CLIP BPE vocabulary into ``folder``.

    Every byte is a token (alone and as a word end ``x</w>``), so any text tokenizes; each word of
    ``words`` gets merges that join whatever pieces the merges so far leave, so that it becomes a
    single token ``word</w>``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        _merge_whole(list(word[:-1]) + [word[-1] + "</w>"], ranks, vocab)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_VAE = dict(norm_num_groups=4, layers_per_block=1, block_out_channels=(4, 8, 8, 8),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer`` of the tiny vocabulary (:func:`write_tiny_tokenizer`), 77 tokens long.

    SD 1.x and SDXL's first tokenizer pad with the end token; SDXL's second (OpenCLIP's) pads with ``"!"``.
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_tokenizer(Path(tmp))
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                             model_max_length=77)


def _text_encoder(cls, tokenizer, seed: int, sizes: dict):
    # A CLIP text encoder (cls: CLIPTextModel or CLIPTextModelWithProjection) of the tokenizer's vocabulary.
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes,
    ))


def _vae(seed: int, sample_size: int, sizes: dict, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         sample_size=sample_size * 2 ** (len(sizes["block_out_channels"]) - 1), **sizes, **extra)


def _frozen(*modules) -> None:
    for module in modules:
        module.eval().requires_grad_(False)


def build_random_pipeline(text: dict, unet: dict, vae: dict, sample_size: int = 64):
    """A StableDiffusionPipeline of the given component sizes with random weights from fixed seeds.

    Args:
        text: ``CLIPTextConfig`` sizes (``hidden_size``, ``num_hidden_layers``, ...).
        unet: ``UNet2DConditionModel`` arguments besides ``sample_size`` and the channel counts.
        vae: ``AutoencoderKL`` arguments besides the channel counts and ``sample_size``.
        sample_size: the UNet's nominal latent side (images are ``sample_size × vae scale`` by default).
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    # Seeds per component, so each one is the same wherever it is built.
    text_encoder = _text_encoder(CLIPTextModel, tokenizer, 0, text)
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4,
                                cross_attention_dim=text["hidden_size"], **unet)
    vae_model = _vae(2, sample_size, vae)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    _frozen(text_encoder, unet, vae_model)
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
        text=TINY_TEXT,
        unet=dict(layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4)),
        vae=TINY_VAE, sample_size=sample_size,
    )


def build_tiny_sdxl_pipeline(sample_size: int = 64):
    """Build ``builtin:tiny-sdxl``: a StableDiffusionXLPipeline with small random-weight components.

    SDXL's layout in miniature: two CLIP text encoders (a ``CLIPTextModel`` and, wider, a
    ``CLIPTextModelWithProjection`` whose projection is the pooled embedding) over the same vocabulary,
    their penultimate hidden states concatenated as the UNet's context (32 + 48 = 80 wide); a UNet with
    SDXL's ``"text_time"`` added conditioning (pooled text and six size/crop numbers), no attention at
    full latent resolution and cross-attention at 1/2 and 1/4 of it (two transformer layers at 1/4);
    an 8× VAE; SDXL's Euler scheduler. Random weights from fixed seeds, as ``builtin:tiny``.

    Args:
        sample_size: the UNet's nominal latent side; 64 means 512×512 images by default (what daam's
            SDXL tracing assumes for a 512-px model). Any multiple-of-8 size can be generated.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    text_encoder = _text_encoder(CLIPTextModel, tokenizer, 0, TINY_TEXT)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, tokenizer_2, 3, dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, projection_dim=32))
    time_dim = 8
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        # the pooled embedding and 6 numbers (original size, crop corner, target size), each embedded in time_dim
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * time_dim,
    )
    vae_model = _vae(2, sample_size, TINY_VAE, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    _frozen(text_encoder, text_encoder_2, unet, vae_model)
    return StableDiffusionXLPipeline(
        vae=vae_model, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
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


def load_toyworld_mmdit():
    """``builtin:toyworld-mmdit``: the SD3-style MMDiT trained on the same toy world (shipped in the package)."""
    from ..toyworld import load_toyworld_mmdit_pipeline

    return load_toyworld_mmdit_pipeline()


BUILTINS = {"tiny": build_tiny_pipeline, "tiny-sdxl": build_tiny_sdxl_pipeline, "toyworld": load_toyworld,
            "toyworld-mmdit": load_toyworld_mmdit}


# ---- MMDiT families: SD3/3.5 and FLUX.1 ------------------------------------------------------------
TINY_T5 = dict(d_model=96, d_ff=128, d_kv=16, num_layers=2, num_heads=4)
# Characters every text tokenizes into (with and without a word start) when no whole-word piece fits.
_T5_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.;:!?'\"-+()<>_/&"


def tiny_t5_tokenizer(words: list[str] = TINY_WORDS, model_max_length: int = 512):
    """A ``T5TokenizerFast`` over the tiny vocabulary: a SentencePiece-style Unigram model with ``▁`` pieces.

    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 as T5's; each of ``words`` is one ``▁word`` piece and any other
    text falls back to single characters (so a word outside the list is several tokens). Built with
    ``tokenizers`` (a Unigram model saves and reloads offline; a WordLevel one does not reload as T5's).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for w in dict.fromkeys(w.lower() for w in words):
        pieces.setdefault("▁" + w, -1.0)  # a whole word scores above any split into characters
    for c in _T5_CHARS:
        pieces.setdefault("▁" + c, -5.0)
        pieces.setdefault(c, -5.0)
    tok = Tokenizer(models.Unigram(list(pieces.items()), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(tokenizer, seed: int, sizes: dict = TINY_T5):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
                                   feed_forward_proj="gated-gelu", **sizes))


def build_tiny_sd3_pipeline(with_t5: bool = True):
    """Build ``builtin:tiny-sd3``: a StableDiffusion3Pipeline with small random-weight components.

    SD3/3.5's layout in miniature: CLIP-L and CLIP-G text encoders (``CLIPTextModelWithProjection``
    both, 32 and 48 wide, the tiny CLIP vocabulary), a T5 encoder (96 wide, :func:`tiny_t5_tokenizer`;
    ``with_t5=False`` leaves ``text_encoder_3`` out, as SD3 without T5); an MMDiT
    (``SD3Transformer2DModel``, patch 2, two joint blocks, the first with SD3.5's extra image
    self-attention, RMS q/k norm) whose context is the 77 CLIP tokens (their hidden states
    concatenated, 80 wide, zero-padded to 96) followed by the T5 tokens; an 8× VAE with SD3's scaling
    and shift and 16 latent channels; SD3's flow-matching Euler scheduler. Random weights from fixed seeds. Heatmaps are on
    the transformer's token grid, 1/16 of the image.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    text_encoder = _text_encoder(CLIPTextModelWithProjection, tokenizer, 0, TINY_TEXT)
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, tokenizer_2, 3, dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, projection_dim=32))
    tokenizer_3 = tiny_t5_tokenizer() if with_t5 else None
    text_encoder_3 = _t5_encoder(tokenizer_3, 4) if with_t5 else None
    torch.manual_seed(1)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=TINY_T5["d_model"], caption_projection_dim=32,
        pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
        pos_embed_max_size=96, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    torch.manual_seed(2)  # 16 latent channels as SD3's own (its inpainting pipeline accepts no other count)
    vae_model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, sample_size=64, **TINY_VAE,
                              scaling_factor=1.5305, shift_factor=0.0609)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    modules = [m for m in (text_encoder, text_encoder_2, text_encoder_3, transformer, vae_model) if m is not None]
    _frozen(*modules)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae_model, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


def build_tiny_flux_pipeline(fill: bool = False):
    """Build ``builtin:tiny-flux``: a FluxPipeline (FLUX.1-dev's layout) with small random-weight components.

    A CLIP-L text encoder (``CLIPTextModel``, its pooled output conditions the transformer), a T5
    encoder (:func:`tiny_t5_tokenizer`) whose sequence is the text the transformer attends to; a
    ``FluxTransformer2DModel`` with one double-stream (joint) block and one single-stream block,
    guidance embedding (guidance-distilled, no classifier-free guidance) and 3-axis RoPE; an 8× VAE
    with FLUX's scaling and shift, whose 4-channel latents are packed 2×2 into 16-channel tokens (so
    the token grid is 1/16 of the image); FLUX-dev's flow-matching scheduler with resolution-dependent
    shift. Random weights from fixed seeds.

    ``fill=True`` builds ``builtin:tiny-flux-fill``, FLUX.1-Fill-dev's layout: the transformer also takes the
    masked image's packed latents (16 channels) and the packed 8×8 pixel mask (256) as input channels.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    text_encoder = _text_encoder(CLIPTextModel, tokenizer, 0, TINY_TEXT)
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = _t5_encoder(tokenizer_2, 4)
    torch.manual_seed(1)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16 + (16 + 256 if fill else 0), out_channels=16, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TINY_T5["d_model"],
        pooled_projection_dim=text_encoder.config.hidden_size, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    vae_model = _vae(2, 8, TINY_VAE, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    _frozen(text_encoder, text_encoder_2, transformer, vae_model)
    return FluxPipeline(scheduler=scheduler, vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


BUILTINS.update({"tiny-sd3": build_tiny_sd3_pipeline, "tiny-flux": build_tiny_flux_pipeline,
                 "tiny-flux-fill": lambda: build_tiny_flux_pipeline(fill=True)})


# ---- FLUX.2 [klein]: a Qwen3 text encoder --------------------------------------------------------------------
# What Qwen3's chat template renders for one user message with add_generation_prompt=True and enable_thinking=False
# (the call Flux2KleinPipeline makes): the user turn, then an assistant turn whose thinking block is closed empty.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN3_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _whole_word_merges(words: list[str], vocab: list[str]) -> dict[tuple[str, str], int]:
    """Byte-level BPE merges (by rank) in which each of ``words``, lowercased, is one token both at a text's start and
    after a space (``Ġword``); the merged symbols are appended to ``vocab``, which holds the byte symbols."""
    space = _bytes_to_unicode()[ord(" ")]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        for form in (word, space + word):
            _merge_whole(list(form), ranks, vocab)
    return ranks


def tiny_qwen_tokenizer(words: list[str] = TINY_WORDS):
    """A ``Qwen2TokenizerFast`` over the tiny vocabulary: Qwen's byte-level BPE (its pre-tokenizer regex, built by
    transformers from a vocabulary and merges) in which each of ``words`` (and "user", "assistant") is one token,
    both at a text's start and after a space (``Ġword``); any other text falls back to merges or single bytes.

    Qwen3's special tokens (``<|endoftext|>``, the padding, ``<|im_start|>``, ``<|im_end|>``, the end) and its
    ``<think>``/``</think>`` tokens, with :data:`QWEN3_CHAT_TEMPLATE`: the prompt Flux2KleinPipeline encodes is
    tokenized as Qwen3's would be.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab: list[str] = list(byte_chars.values())
    ranks = _whole_word_merges([*words, "user", "assistant"], vocab)
    _merge_whole([byte_chars[ord("\n")]] * 2, ranks, vocab)  # "\n\n" is one token, as Qwen's
    vocab += [*QWEN3_SPECIAL, "<think>", "</think>"]
    tok = Qwen2TokenizerFast(vocab={t: i for i, t in enumerate(vocab)},
                             merges=[pair for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])],
                             eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                             model_max_length=131072)
    tok.add_special_tokens({"additional_special_tokens": list(QWEN3_SPECIAL[1:])})
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


TINY_QWEN3 = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=27, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8)


def _tiny_flux2_denoising(guidance_embeds: bool):
    """The tiny FLUX.2 transformer (seed 1), VAE (seed 2) and scheduler of :func:`build_tiny_flux2_pipeline`;
    ``guidance_embeds``: the transformer takes the guidance scale as an input, as FLUX.2 [dev]'s does."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(1)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * TINY_QWEN3["hidden_size"], timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )
    torch.manual_seed(2)
    vae_model = AutoencoderKLFlux2(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, **TINY_VAE)
    _frozen(transformer, vae_model)
    return transformer, vae_model, flux2_scheduler()


def flux2_scheduler():
    """FLUX.2's flow-matching Euler scheduler, with the pipelines' resolution-dependent (exponential) shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096, time_shift_type="exponential")


def qwen3_text_encoder(tokenizer, sizes: dict, seed: int = 5):
    """A ``Qwen3ForCausalLM`` of ``sizes`` (its widths and depths) over ``tokenizer``'s vocabulary, random weights
    from ``seed``: FLUX.2 [klein]'s text encoder (:data:`TINY_QWEN3`, or a model's own sizes)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, **sizes))


def build_tiny_flux2_pipeline(distilled: bool = False):
    """Build ``builtin:tiny-flux2``: a Flux2KleinPipeline (FLUX.2 [klein]'s layout) with small random-weight components.

    A Qwen3 text encoder (``Qwen3ForCausalLM``, 27 layers 16 wide, :func:`tiny_qwen_tokenizer`): the pipeline's
    default ``text_encoder_out_layers=(9, 18, 27)`` stacks three of its hidden states per token into the 48-wide
    sequence the transformer attends to (the chat-formatted prompt, 512 tokens); a ``Flux2Transformer2DModel`` with
    one double-stream block and one single-stream block (fused QKV+MLP), 4-axis RoPE and no guidance embedding; an
    ``AutoencoderKLFlux2`` (8×, 4 latent channels, the batch norm FLUX.2 normalises its patchified latents with),
    whose latents are packed 2×2 into 16-channel tokens (the token grid is 1/16 of the image); the flow-matching
    Euler scheduler with the pipeline's resolution-dependent shift. Random weights from fixed seeds.

    ``distilled=False`` (the default) is FLUX.2 [klein] Base's configuration: real classifier-free guidance, the
    unconditional half a second transformer call. ``distilled=True`` is FLUX.2 [klein]'s (``is_distilled``): guidance
    is ignored and each step is one call.
    """
    from diffusers import Flux2KleinPipeline

    tokenizer = tiny_qwen_tokenizer()
    text_encoder = qwen3_text_encoder(tokenizer, TINY_QWEN3)
    _frozen(text_encoder)
    transformer, vae_model, scheduler = _tiny_flux2_denoising(guidance_embeds=False)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)


# Mistral 3 (Mistral Small 3.1, FLUX.2 [dev]'s text encoder): its instruct format, the system prompt then the user's
# instruction, with content given as blocks (what diffusers' ``format_input`` writes); an image block is ``[IMG]``.
MISTRAL3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set parts = namespace(text='') %}"
    "{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{%- set parts.text = parts.text + block['text'] %}"
    "{%- else %}{%- set parts.text = parts.text + '[IMG]' %}{%- endif %}"
    "{%- endfor %}{%- set text = parts.text %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
MISTRAL3_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                    "[IMG_BREAK]", "[IMG_END]")


def tiny_mistral_processor(words: list[str] = TINY_WORDS):
    """A ``PixtralProcessor`` (what FLUX.2 [dev] tokenizes with) around a byte-level BPE tokenizer over the tiny
    vocabulary and the words of Flux2Pipeline's system prompt (each one token, at a text's start and after a space),
    with Mistral 3's special tokens and :data:`MISTRAL3_CHAT_TEMPLATE`; any other text falls back to single bytes.
    The tokenizer writes ``<s>`` first, as Mistral's does (the template writes it too, and the processor then adds
    none)."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    vocab: list[str] = [*MISTRAL3_SPECIAL, *_bytes_to_unicode().values()]
    ranks = _whole_word_merges([*words, *re.findall(r"\w+", SYSTEM_MESSAGE)], vocab)
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)},
                                   merges=[pair for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", model_max_length=131072)
    tokenizer.add_special_tokens({"additional_special_tokens": list(MISTRAL3_SPECIAL[4:])})
    tokenizer.chat_template = MISTRAL3_CHAT_TEMPLATE
    return PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tokenizer, patch_size=16,
                            spatial_merge_size=2, chat_template=MISTRAL3_CHAT_TEMPLATE)


TINY_MISTRAL3 = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=30, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=8)
TINY_PIXTRAL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                    image_size=64, patch_size=16)


def mistral3_text_encoder(processor, text_sizes: dict, vision_sizes: dict, seed: int = 5):
    """A ``Mistral3ForConditionalGeneration`` (a Mistral language model of ``text_sizes`` over ``processor``'s
    vocabulary and a Pixtral vision tower of ``vision_sizes``), random weights from ``seed``: FLUX.2 [dev]'s text
    encoder (:data:`TINY_MISTRAL3` and :data:`TINY_PIXTRAL`, or Mistral Small 3.1's own sizes)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    tok = processor.tokenizer
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(Mistral3Config(
        vision_config=PixtralVisionConfig(**vision_sizes),
        text_config=MistralConfig(vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **text_sizes),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2))


def build_tiny_flux2_dev_pipeline():
    """Build ``builtin:tiny-flux2-dev``: a Flux2Pipeline (FLUX.2 [dev]'s layout) with small random-weight components.

    A Mistral 3 text encoder (``Mistral3ForConditionalGeneration``: a language model 30 layers 16 wide, so the
    pipeline's default ``text_encoder_out_layers=(10, 20, 30)`` stack three of its hidden states per token into the
    48-wide sequence, and a one-layer Pixtral vision tower, unused for text) with :func:`tiny_mistral_processor`; the
    transformer, VAE and scheduler of :func:`build_tiny_flux2_pipeline`, with the guidance embedding [dev] is distilled
    with. Random weights from fixed seeds.
    """
    from diffusers import Flux2Pipeline

    processor = tiny_mistral_processor()
    text_encoder = mistral3_text_encoder(processor, TINY_MISTRAL3, TINY_PIXTRAL)
    _frozen(text_encoder)
    transformer, vae_model, scheduler = _tiny_flux2_denoising(guidance_embeds=True)
    return Flux2Pipeline(scheduler=scheduler, vae=vae_model, text_encoder=text_encoder, tokenizer=processor,
                         transformer=transformer)


BUILTINS.update({"tiny-flux2": build_tiny_flux2_pipeline, "tiny-flux2-dev": build_tiny_flux2_dev_pipeline})
