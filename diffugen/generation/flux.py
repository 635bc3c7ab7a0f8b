"""The FLUX.1 family: a CLIP-L pooled embedding and a T5 sequence, a double- then single-stream transformer.

FLUX's transformer attends over the T5 sequence (``max_sequence_length``, the pipeline's default 512;
T5's last hidden states, emphasis applied there); CLIP-L contributes only its pooled output, one
vector per prompt (so emphasis does not act on it). A word's positions are those of its T5 tokens.
Without emphasis the embeddings are exactly the pipeline's own ``encode_prompt``.

FLUX.1 dev/schnell are guidance-distilled: ``guidance_scale`` is an input of the transformer, not
classifier-free guidance, so the whole batch is conditional and the negative prompt is not used (it
is not passed, so the pipeline's ``true_cfg_scale`` path never runs). Heatmaps come from the joint
attention of every block (:mod:`.joint_attention`) on the token grid: FLUX packs 2×2 latents into one
token, so the grid is 1/16 of the image for its 8× VAE.

A FLUX Fill model (FLUX.1-Fill-dev) inpaints with ``FluxFillPipeline``: the masked image and the mask
enter the transformer as extra input channels of the same image tokens, so capture is unchanged. It
cannot make images from text alone: txt2img and img2img need another model. A FLUX Kontext model
(FLUX.1-Kontext-dev; ``model_index.json`` names ``FluxKontextPipeline``) makes txt2img images as FLUX does
and edits with its own pipelines: img2img gives it the parent as the reference image and the child's
prompt as the edit (``FluxKontextPipeline``, which has no ``strength``), inpaint uses
``FluxKontextInpaintPipeline``. Its reference image's tokens follow the image's in the joint sequence.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence, get_args

import torch

from ..errors import DiffuGenError
from .attention import LayerChoice, RefineLayers
from .family import EncodedBatch, ModelFamily
from .joint_attention import FluxHeatmapProcessor, HeatmapMethod, capture_joint_heatmaps
from .sd import tokenize
from .sd3 import sequence_length, t5_embed, t5_tokenize, t5_word_positions
from .tokens import EncodedPrompt

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)


def is_kontext(pipe: DiffusionPipeline) -> bool:
    """Whether ``pipe`` is one of FLUX Kontext's pipelines (what a Kontext model is loaded as)."""
    from diffusers import FluxKontextInpaintPipeline, FluxKontextPipeline

    return isinstance(pipe, (FluxKontextPipeline, FluxKontextInpaintPipeline))


def is_fill(pipe: DiffusionPipeline) -> bool:
    """Whether ``pipe``'s transformer is a FLUX Fill one: it takes the noisy latents, the masked image's latents
    and the mask as its input channels, and predicts only the latents' (FLUX.1-Fill-dev: 384 in, 64 out)."""
    config = pipe.transformer.config
    return config.in_channels > (config.out_channels or config.in_channels)


def packed_grid(pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
    """The token grid of a FLUX.1 or FLUX.2 pipeline's image: the latent grid packed 2×2."""
    scale = pipe.vae_scale_factor * 2
    return height // scale, width // scale


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: Sequence[str], max_length: int | None = None
                   ) -> tuple[list[EncodedPrompt], torch.Tensor, torch.Tensor]:
    """Tokenize and encode prompts as FLUX does, emphasis applied to the T5 sequence of ``max_length``
    (:func:`~.sd3.sequence_length`).

    Returns:
        encoded: the T5 ids of each prompt (what word positions index).
        prompt_embeds: ``(batch, t5_length, joint_attention_dim)``.
        pooled: ``(batch, clip_hidden)``: CLIP-L's pooled output.
    """
    clip = [tokenize(pipe, p) for p in prompts]
    ids = torch.tensor([e.ids for e in clip], device=pipe.text_encoder.device)
    pooled = pipe.text_encoder(ids, output_hidden_states=False).pooler_output.to(pipe.text_encoder.dtype)
    length = sequence_length(pipe, max_length)
    encoded = [t5_tokenize(pipe.tokenizer_2, p, length) for p in prompts]
    return encoded, t5_embed(pipe.text_encoder_2, encoded), pooled


class FluxFamily(ModelFamily):
    """FLUX.1 (``FluxPipeline`` and ``FluxImg2ImgPipeline``/``FluxInpaintPipeline``; ``builtin:tiny-flux``)."""

    name = "flux"
    pipeline_class = "FluxPipeline"
    class_names = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                   "FluxKontextPipeline", "FluxKontextInpaintPipeline")
    own_classes = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")
    attention = "joint"  # the label score's joint-attention weights
    heatmap_methods = get_args(HeatmapMethod)
    cuda_dtype = "bfloat16"  # as the model cards load them; float16 overflows their activations
    long_encoder = "T5"

    def matches(self, pipe: DiffusionPipeline) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel)

    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        if negative_prompt:
            logger.info("FLUX is guidance-distilled: the negative prompt %r is not used", negative_prompt)
        encoded, embeds, pooled = encode_prompts(pipe, prompts, max_sequence_length)
        return EncodedBatch(pipeline_kwargs={"prompt_embeds": embeds, "pooled_prompt_embeds": pooled},
                            prompts=encoded, context_limits={"T5": sequence_length(pipe, max_sequence_length)})

    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        return t5_word_positions(pipe.tokenizer_2, encoded.ids, word)

    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down", method: str = "cross_attention"):
        return capture_joint_heatmaps(pipe.transformer, FluxHeatmapProcessor, refine_power, method)

    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        from diffusers import (FluxFillPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline, FluxKontextInpaintPipeline,
                               FluxKontextPipeline, FluxPipeline)

        if is_fill(pipe):
            if task != "inpaint":
                raise DiffuGenError(
                    f"{task}: a FLUX Fill model (its transformer takes the masked image and the mask: "
                    f"{pipe.transformer.config.in_channels} input channels) only inpaints; give the {task} task "
                    "another FLUX model (the task section's 'model') and keep the Fill model for 'inpaint'")
            return FluxFillPipeline.from_pipe(pipe)
        if is_kontext(pipe):
            kontext = FluxKontextInpaintPipeline if task == "inpaint" else FluxKontextPipeline
            return kontext.from_pipe(pipe)
        cls = {"txt2img": FluxPipeline, "img2img": FluxImg2ImgPipeline, "inpaint": FluxInpaintPipeline}[task]
        return cls.from_pipe(pipe)  # a new object sharing the weights: a scheduler set on it leaves pipe's alone

    def task_kwargs(self, pipe: DiffusionPipeline, task: str, kwargs: dict, size: tuple[int, int]) -> dict:
        """Kontext: no ``strength`` when editing; the asked size kept (its pipelines otherwise make 1024² pixels,
        and resize an image to inpaint to a Kontext resolution)."""
        if not is_kontext(pipe):
            return kwargs
        kwargs = dict(kwargs, max_area=size[0] * size[1])
        if task == "inpaint":
            return dict(kwargs, _auto_resize=False)
        kwargs.pop("strength", None)
        return kwargs

    def call_defaults(self, pipe: DiffusionPipeline, pipeline_class: str | None = None) -> dict:
        """FluxPipeline's defaults; a Fill model's are FluxFillPipeline's (guidance 30, 50 steps)."""
        return super().call_defaults(pipe, pipeline_class or ("FluxFillPipeline" if is_fill(pipe) else None))

    def latent_size(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        return packed_grid(pipe, height, width)
