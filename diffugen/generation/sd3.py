"""The Stable Diffusion 3/3.5 family: CLIP-L, CLIP-G and (optionally) T5 text encoders, an MMDiT transformer.

SD3's text sequence is 77 CLIP positions (the first tokenizer's length) followed by the T5 tokens
(``max_sequence_length``, the pipeline's default 256, unless the model records its own): at each CLIP position the penultimate hidden states of CLIP-L and CLIP-G
concatenated (as SDXL's context) and zero-padded to T5's width; then T5's last hidden states (all
zeros when the model has no T5, ``text_encoder_3=None``). The pooled embedding is both CLIP
encoders' projected end-token embeddings, concatenated. We tokenize with each tokenizer ourselves
(:func:`~.sd.tokenize`, :func:`t5_tokenize`, emphasis included), so a word's positions are known in
both parts of the sequence: the word's heatmap reads its CLIP tokens and its T5 tokens. Without
emphasis the embeddings are exactly the pipeline's own ``encode_prompt`` (an empty negative prompt is
encoded as ``""``, as SD3 does).

Heatmaps come from the transformer's joint attention (:mod:`.joint_attention`), on its token grid:
the latent grid divided by the patch size (1/16 of the image for SD3's 8× VAE and 2×2 patches).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Sequence, get_args

import torch
import torch.nn.functional as F

from ..errors import DiffuGenError
from ..prompts import parse_emphasis
from .attention import LayerChoice, RefineLayers
from .family import EncodedBatch, ModelFamily, model_defaults, token_runs
from .joint_attention import HeatmapMethod, JointHeatmapProcessor, capture_joint_heatmaps
from .sd import apply_emphasis, tokenize, word_positions
from .sdxl import _content_tokens, text_encoders
from .tokens import EncodedPrompt, find_word_tokens

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline



def sequence_length(pipe: DiffusionPipeline, asked: int | None = None) -> int:
    """The T5 (FLUX.2: Qwen3) length to encode with: ``asked`` (a config's ``max_sequence_length``), else the one
    the model's folder records (:func:`~.family.model_defaults`; the toy-world MMDiT's is 0), else the pipeline's
    default (its ``__call__``'s ``max_sequence_length``: SD3 256, FLUX 512)."""
    if asked is not None:
        return asked
    own = model_defaults(pipe).get("max_sequence_length")
    return own if own is not None else inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default


def clip_length(pipe: DiffusionPipeline) -> int:
    """The CLIP part's length of SD3's text sequence: the first tokenizer's (77 for SD3's own)."""
    return pipe.tokenizer.model_max_length


def t5_tokenize(tokenizer, prompt: str, length: int) -> EncodedPrompt:
    """Tokenize a prompt for T5 (emphasis markers removed, weights kept): tokens, ``</s>``, padding to ``length``.

    Without emphasis the ids are the pipeline's own (``padding="max_length"``, ``truncation=True``).
    """
    ids: list[int] = []
    weights: list[float] = []
    chunks = parse_emphasis(prompt)
    for chunk in chunks:
        # Each emphasised chunk starts a word (a "▁" piece); the spaces around it would be pieces of their own.
        text = chunk.text.strip() if len(chunks) > 1 else chunk.text
        chunk_ids = tokenizer(text, add_special_tokens=False).input_ids if text else []
        ids += chunk_ids
        weights += [chunk.weight] * len(chunk_ids)
    truncated = len(ids) > length - 1
    ids, weights = ids[: length - 1], weights[: length - 1]
    pad = length - 1 - len(ids)
    return EncodedPrompt(ids=[*ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad,
                         weights=[*weights, 1.0] + [1.0] * pad, truncated=truncated)


@torch.no_grad()
def t5_embed(encoder, encoded: Sequence[EncodedPrompt]) -> torch.Tensor:
    """``(batch, length, d_model)``: T5's last hidden states with emphasis applied (:func:`~.sd.apply_emphasis`)."""
    ids = torch.tensor([e.ids for e in encoded], device=encoder.device)
    return apply_emphasis(encoder(ids)[0], encoded).to(encoder.dtype)


def t5_word_positions(tokenizer, ids: Sequence[int], word: str) -> list[int]:
    """Positions in T5 ``ids`` of every occurrence of ``word``'s T5 tokens (``▁word`` pieces; T5 is case-sensitive,
    unlike CLIP, so the word is matched as written)."""
    return find_word_tokens(ids, tokenizer(word, add_special_tokens=False).input_ids)


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: Sequence[str], max_length: int | None = None
                   ) -> tuple[list[EncodedPrompt], torch.Tensor, torch.Tensor]:
    """Tokenize and encode prompts as SD3 does, emphasis applied; ``max_length``: the T5 part's
    (:func:`sequence_length`).

    Returns:
        encoded: per prompt, the CLIP ids (77, as the first CLIP tokenizer split them) followed by the
            T5 ids (none without T5): the positions of the transformer's text sequence.
        prompt_embeds: ``(batch, 77 + t5_length, joint_attention_dim)``.
        pooled: ``(batch, projection_1 + projection_2)``.

    Raises:
        DiffuGenError: the two CLIP tokenizers split a prompt differently.
    """
    first: list[EncodedPrompt] | None = None
    hidden, pooled = [], []
    for _, tok, encoder in text_encoders(pipe):
        encoded = [tokenize(pipe, p, tok) for p in prompts]
        if first is None:
            first, first_tok = encoded, tok
        elif any(_content_tokens(first_tok, a) != _content_tokens(tok, b) for a, b in zip(first, encoded)):
            raise DiffuGenError(f"the SD3 model's two CLIP tokenizers split {list(prompts)!r} differently: a word's "
                                "heatmap needs its tokens at the same positions in both text encoders")
        out = encoder(torch.tensor([e.ids for e in encoded], device=encoder.device), output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(apply_emphasis(out.hidden_states[-2], encoded).to(pipe.text_encoder.dtype))
    length = sequence_length(pipe, max_length)
    if pipe.text_encoder_3 is None:
        t5 = torch.zeros(len(prompts), length, pipe.transformer.config.joint_attention_dim,
                         device=pipe.text_encoder.device, dtype=pipe.text_encoder.dtype)
        t5_encoded = [EncodedPrompt([], [], False)] * len(prompts)
    else:
        t5_encoded = [t5_tokenize(pipe.tokenizer_3, p, length) for p in prompts]
        t5 = t5_embed(pipe.text_encoder_3, t5_encoded)
    clip = torch.cat(hidden, dim=-1)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    encoded = [EncodedPrompt(c.ids + t.ids, c.weights + t.weights, c.truncated or t.truncated)
               for c, t in zip(first, t5_encoded)]
    return encoded, torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


class StableDiffusion3Family(ModelFamily):
    """SD3/3.5 (``StableDiffusion3Pipeline`` and its img2img/inpaint siblings; ``builtin:tiny-sd3``)."""

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    class_names = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    attention = "joint"  # the label score's joint-attention weights
    heatmap_methods = get_args(HeatmapMethod)
    cuda_dtype = "bfloat16"  # as the model cards load them; float16 overflows their activations
    long_encoder = "T5"

    def matches(self, pipe: DiffusionPipeline) -> bool:
        from diffusers import SD3Transformer2DModel

        return isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel)

    def text_encoders(self, pipe: DiffusionPipeline) -> list[tuple[str | None, Any, Any]]:
        return text_encoders(pipe)

    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        encoded, embeds, pooled = encode_prompts(pipe, prompts, max_sequence_length)
        _, negative, negative_pooled = encode_prompts(pipe, [negative_prompt] * len(prompts), max_sequence_length)
        return EncodedBatch(
            pipeline_kwargs={"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                             "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled},
            prompts=encoded, context_limits={"CLIP": clip_length(pipe)} | (
                {"T5": sequence_length(pipe, max_sequence_length)} if pipe.text_encoder_3 is not None else {}),
        )

    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        n = clip_length(pipe)
        clip = EncodedPrompt(encoded.ids[:n], encoded.weights[:n], encoded.truncated)
        positions = word_positions(pipe, clip, word, pipe.tokenizer)
        if pipe.text_encoder_3 is not None:
            positions += [n + p for p in t5_word_positions(pipe.tokenizer_3, encoded.ids[n:], word)]
        return positions

    def word_occurrences(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[list[int]]:
        """The positions of each occurrence of ``word``: the k-th occurrence's CLIP tokens with its T5 tokens.

        A word occurs once in each part of the text sequence, so its positions are two runs per occurrence
        (``[3, 79]`` for "car" in "a red car"), not one; an occurrence only one part kept (truncation) is
        its tokens there.
        """
        positions = self.word_positions(pipe, encoded, word)
        n = clip_length(pipe)
        clip = token_runs([p for p in positions if p < n])
        t5 = token_runs([p for p in positions if p >= n])
        return [[*(clip[k] if k < len(clip) else []), *(t5[k] if k < len(t5) else [])]
                for k in range(max(len(clip), len(t5)))]

    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down", method: str = "cross_attention"):
        return capture_joint_heatmaps(pipe.transformer, JointHeatmapProcessor, refine_power, method)

    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline

        cls = {"txt2img": StableDiffusion3Pipeline, "img2img": StableDiffusion3Img2ImgPipeline,
               "inpaint": StableDiffusion3InpaintPipeline}[task]
        return cls.from_pipe(pipe)  # a new object sharing the weights: a scheduler set on it leaves pipe's alone

    def latent_size(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        """The transformer's token grid: the latent grid over the patch size."""
        scale = pipe.vae_scale_factor * pipe.transformer.config.patch_size
        return height // scale, width // scale
