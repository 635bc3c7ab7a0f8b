"""The Stable Diffusion 1.x/2.x family: one CLIP text encoder, a UNet with cross-attention.

Prompt → token ids → text embeddings, with emphasis weights and textual-inversion tokens. We
tokenize ourselves (rather than letting the pipeline do it) so that the token positions used to
read a word's cross-attention are exactly those the text encoder saw. Without emphasis the ids and
embeddings are identical to the pipeline's own ``encode_prompt``. Heatmaps come from the UNet's
cross-attention layers (:func:`diffugen.generation.attention.capture_heatmaps`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch

from ..prompts import parse_emphasis
from .attention import LayerChoice, RefineLayers, capture_heatmaps
from .family import EncodedBatch, ModelFamily
from .tokens import EncodedPrompt, find_word_tokens

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)


def _convert(pipe: DiffusionPipeline, text: str, tokenizer) -> str:
    # Expands multi-vector textual-inversion tokens ("<tok>" → "<tok> <tok>_1 ...").
    return pipe.maybe_convert_prompt(text, tokenizer) if hasattr(pipe, "maybe_convert_prompt") else text


def tokenize(pipe: DiffusionPipeline, prompt: str, tokenizer=None) -> EncodedPrompt:
    """Tokenize a prompt (emphasis markers removed, weights kept) into the model's context length.

    ``tokenizer``: which of the pipeline's tokenizers (default ``pipe.tokenizer``; SDXL has two).
    """
    tok = tokenizer or pipe.tokenizer
    length = tok.model_max_length
    ids: list[int] = []
    weights: list[float] = []
    for chunk in parse_emphasis(prompt):
        chunk_ids = tok(_convert(pipe, chunk.text, tok), add_special_tokens=False).input_ids
        ids += chunk_ids
        weights += [chunk.weight] * len(chunk_ids)
    truncated = len(ids) > length - 2
    ids, weights = ids[: length - 2], weights[: length - 2]
    pad = length - 2 - len(ids)
    return EncodedPrompt(
        ids=[tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * pad,
        weights=[1.0, *weights, 1.0] + [1.0] * pad,
        truncated=truncated,
    )


def apply_emphasis(hidden: torch.Tensor, encoded: Sequence[EncodedPrompt]) -> torch.Tensor:
    """``hidden`` ``(batch, 77, dim)`` (one text encoder's output) with each token's emphasis weight applied.

    Each token's embedding is multiplied by its weight (as in A1111), then the prompt's overall
    scale is restored. A1111 restores the mean; we restore the standard deviation, because the
    mean of a layer-normalised output can be ~0 (it is for small or random text encoders) and
    dividing by it then blows the embeddings up. Without emphasis ``hidden`` is returned as is.
    """
    weights = torch.tensor([e.weights for e in encoded], device=hidden.device, dtype=hidden.dtype)
    if bool((weights != 1).any()):
        before = hidden.float().std(dim=(1, 2), keepdim=True)
        hidden = hidden * weights.unsqueeze(-1)
        hidden = hidden * (before / hidden.float().std(dim=(1, 2), keepdim=True).clamp_min(1e-6)).to(hidden.dtype)
    return hidden


@torch.no_grad()
def embed(pipe: DiffusionPipeline, encoded: Sequence[EncodedPrompt]) -> torch.Tensor:
    """``(batch, 77, dim)`` text embeddings with emphasis applied (:func:`apply_emphasis`)."""
    device = pipe.text_encoder.device
    ids = torch.tensor([e.ids for e in encoded], device=device)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        mask = (ids != pipe.tokenizer.pad_token_id).long()
    hidden = pipe.text_encoder(ids, attention_mask=mask)[0]
    return apply_emphasis(hidden, encoded).to(pipe.unet.dtype)


def word_positions(pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str, tokenizer=None) -> list[int]:
    """Token positions of every occurrence of ``word`` in the encoded prompt (empty if absent/truncated).

    ``tokenizer``: the one ``encoded`` was made with (default ``pipe.tokenizer``).
    """
    tok = tokenizer or pipe.tokenizer
    word_ids = tok(_convert(pipe, word.lower(), tok), add_special_tokens=False).input_ids
    return find_word_tokens(encoded.ids, word_ids)


class StableDiffusionFamily(ModelFamily):
    """SD 1.x/2.x (``StableDiffusionPipeline`` and its img2img/inpaint siblings; ``builtin:tiny``, ``builtin:toyworld``)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    class_names = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    load_kwargs = {"safety_checker": None, "requires_safety_checker": False}

    def matches(self, pipe: DiffusionPipeline) -> bool:
        from diffusers import UNet2DConditionModel

        unet = getattr(pipe, "unet", None)
        return (isinstance(unet, UNet2DConditionModel) and getattr(pipe, "text_encoder", None) is not None
                and getattr(pipe, "text_encoder_2", None) is None)

    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        encoded = [tokenize(pipe, p) for p in prompts]
        negative = tokenize(pipe, negative_prompt)
        return EncodedBatch(
            pipeline_kwargs={"prompt_embeds": embed(pipe, encoded),
                             "negative_prompt_embeds": embed(pipe, [negative] * len(encoded))},
            prompts=encoded, context_limits={"CLIP": pipe.tokenizer.model_max_length},
        )

    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        return word_positions(pipe, encoded, word)

    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down", method: str = "cross_attention"):
        return capture_heatmaps(pipe.unet, layers, refine_power, refine_layers)

    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        if task == "txt2img":
            return type(pipe).from_pipe(pipe)  # a new object: a scheduler set on it leaves the cached one alone
        cls = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[task]
        return cls.from_pipe(pipe)
