"""The Stable Diffusion XL family: two CLIP text encoders, a UNet with added text and size conditioning.

SDXL's context is, per token, the concatenation of two text encoders' penultimate hidden states: CLIP
ViT-L (``text_encoder``, 768 wide) and OpenCLIP ViT-bigG (``text_encoder_2``, 1280 wide), over the
same 77 token positions. The UNet also takes the second encoder's pooled (projected) embedding and six
numbers (original size, crop corner, target size) through ``added_cond_kwargs``, which the pipeline
computes from the image size. We tokenize with both tokenizers ourselves (the SD family's
:func:`~.sd.tokenize`, emphasis included) and check that they split the prompt alike (they share one
vocabulary; only the padding token differs), so a word's positions hold in both halves of the
context. Without emphasis the embeddings are exactly the pipeline's own ``encode_prompt``, including
its all-zero negative embeddings for an empty negative prompt (``force_zeros_for_empty_prompt``).

Heatmaps come from the UNet's cross-attention layers as for SD (:func:`~.attention.capture_heatmaps`).
SDXL has none at full latent resolution and cross-attention at 1/2 and 1/4 of it, so the 1/8 layers
that ``"daam"`` skips for SD do not occur: ``"daam"`` takes every cross-attention layer of the down and
up blocks, not the mid block's, which is what daam 0.2.0's ``trace`` hooks for SDXL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..errors import DiffuGenError
from .family import EncodedBatch
from .sd import StableDiffusionFamily, apply_emphasis, tokenize, word_positions
from .tokens import EncodedPrompt

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def text_encoders(pipe: DiffusionPipeline) -> list[tuple[str, Any, Any]]:
    """``(name, tokenizer, text_encoder)``: ``clip_l`` (CLIP ViT-L) then ``clip_g`` (OpenCLIP ViT-bigG), the
    order their hidden states are concatenated in; the names key an SDXL textual-inversion file's tensors.
    The refiner has only the second encoder."""
    pairs = [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
    return [(name, tok, enc) for name, tok, enc in pairs if enc is not None]


def _content_tokens(tok, encoded: EncodedPrompt) -> list[str]:
    # The prompt's tokens as strings, start token included, up to its end token (padding differs:
    # SDXL's first tokenizer pads with the end token, the second with "!").
    return tok.convert_ids_to_tokens(encoded.ids[: encoded.ids.index(tok.eos_token_id)])


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: Sequence[str]) -> tuple[list[EncodedPrompt], torch.Tensor, torch.Tensor]:
    """Tokenize and encode prompts with each of the pipeline's text encoders, emphasis applied.

    Returns:
        encoded: the prompts as the first tokenizer split them (what word positions index).
        prompt_embeds: ``(batch, 77, width_1 + width_2)``: each encoder's penultimate hidden states,
            each with emphasis applied (:func:`~.sd.apply_emphasis`), concatenated.
        pooled: ``(batch, projection_dim)``: the last encoder's projected end-token embedding (one
            vector per prompt, so emphasis does not apply).

    Raises:
        DiffuGenError: the two tokenizers split a prompt differently (their vocabularies differ).
    """
    first: list[EncodedPrompt] | None = None
    first_tok = None
    hidden, pooled = [], None
    dtype = pipe.text_encoder_2.dtype
    for _, tok, encoder in text_encoders(pipe):
        encoded = [tokenize(pipe, p, tok) for p in prompts]
        if first is None:
            first, first_tok = encoded, tok
        else:
            for prompt, a, b in zip(prompts, first, encoded):
                if _content_tokens(first_tok, a) != _content_tokens(tok, b):
                    raise DiffuGenError(
                        f"the SDXL model's two tokenizers split {prompt!r} differently "
                        f"({_content_tokens(first_tok, a)} vs {_content_tokens(tok, b)}): a word's heatmap needs "
                        "its tokens at the same positions in both text encoders"
                    )
        out = encoder(torch.tensor([e.ids for e in encoded], device=encoder.device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(apply_emphasis(out.hidden_states[-2], encoded).to(dtype))
    return first, torch.cat(hidden, dim=-1), pooled


class StableDiffusionXLFamily(StableDiffusionFamily):
    """SDXL (``StableDiffusionXLPipeline`` and its img2img/inpaint siblings; ``builtin:tiny-sdxl``).

    The SD family's capture, word positions and task pipelines serve SDXL as they are (the auto
    pipelines map an SDXL pipeline to ``StableDiffusionXLImg2ImgPipeline`` and
    ``StableDiffusionXLInpaintPipeline``); prompts are encoded with both text encoders.
    """

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    class_names = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")

    def matches(self, pipe: DiffusionPipeline) -> bool:
        from diffusers import UNet2DConditionModel

        return (isinstance(getattr(pipe, "unet", None), UNet2DConditionModel)
                and getattr(pipe, "text_encoder_2", None) is not None)

    def text_encoders(self, pipe: DiffusionPipeline) -> list[tuple[str | None, Any, Any]]:
        return text_encoders(pipe)

    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        encoded, embeds, pooled = encode_prompts(pipe, prompts)
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            _, negative, negative_pooled = encode_prompts(pipe, [negative_prompt] * len(prompts))
        return EncodedBatch(
            pipeline_kwargs={"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                             "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled},
            prompts=encoded, context_limits={"CLIP": text_encoders(pipe)[0][1].model_max_length},
        )

    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        return word_positions(pipe, encoded, word, text_encoders(pipe)[0][1])
