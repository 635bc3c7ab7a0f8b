"""The FLUX.2 [klein] family: a Qwen3 text encoder, a double- then single-stream transformer, a 2×2-packed VAE.

FLUX.2 [klein]'s transformer attends over the prompt in Qwen3's chat format (the user turn, then an
assistant turn whose thinking block is closed empty: what ``apply_chat_template(..., enable_thinking=False)``
renders), ``max_sequence_length`` tokens (the pipeline's default 512), each token the hidden states of
Qwen3's layers ``text_encoder_out_layers`` (9, 18, 27) side by side. A word's positions are its tokens
inside that templated sequence, found from the fast tokenizer's character offsets over the prompt's
place in the template (so neither the template's own tokens nor the same letters inside another word
are taken for it; matched case-insensitively, as a whole word); emphasis weights reach the tokens the
same way and are applied to the stacked states. Without emphasis the embeddings are exactly the
pipeline's own ``encode_prompt``.

FLUX.2 [klein] (``is_distilled``) is step-distilled: guidance is ignored, each step is one conditional
transformer call and the negative prompt is not used. FLUX.2 [klein] Base is not: with
``guidance_scale > 1`` the pipeline runs the transformer a second time per step on the negative
prompt's embeddings, inside ``cache_context("uncond")``; the collector is paused for that call
(:class:`PauseUnconditional`), so maps read the conditional prompts only.

Heatmaps come from the joint attention of every block (:mod:`.joint_attention`): the double-stream
blocks compute as FLUX.1's (:class:`~.joint_attention.FluxHeatmapProcessor`), the single-stream ones
through :class:`~.joint_attention.Flux2SingleHeatmapProcessor`; the token grid is the latent grid packed
2×2, 1/16 of the image for the 8× VAE. img2img is an edit, as FLUX Kontext's: the parent is the
reference image (``image=``, no ``strength``) and the child's prompt the edit; inpainting uses
``Flux2KleinInpaintPipeline``, which also appends the masked image's tokens. Reference tokens follow
the image's in the joint sequence and make no map. Flux2KleinPipeline takes ``image`` as the references
of every prompt of a call, so img2img makes one image per call (:meth:`Flux2Family.max_batch`).

FLUX.2 [dev] (``Flux2Pipeline``, loaded as itself) has the same transformer and VAE and a Mistral 3 text
encoder (``Mistral3ForConditionalGeneration``, read through its ``PixtralProcessor``): the prompt is the user's
instruction after the pipeline's system prompt (diffusers' own ``format_input``), the hidden states of layers
10, 20 and 30 side by side. It is guidance-distilled (the guidance scale is an input of the transformer, one call
per step, no negative prompt), edits for img2img as [klein] does, and has no inpainting pipeline in diffusers.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import torch

from ..errors import DiffuGenError
from ..prompts import parse_emphasis
from .attention import LayerChoice, RefineLayers
from .family import EncodedBatch, ModelFamily
from .flux import packed_grid
from .joint_attention import (
    Flux2SingleHeatmapProcessor,
    FluxHeatmapProcessor,
    HeatmapMethod,
    JointHeatmapCollector,
    capture_joint_heatmaps,
)
from .sd import apply_emphasis
from .sd3 import sequence_length
from .tokens import EncodedPrompt

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

_MARK = "\x00"  # stands for the prompt when the template is rendered around it
_HOOK = "diffugen_pause_unconditional"


@dataclass(frozen=True)
class ChatPrompt(EncodedPrompt):
    """A prompt tokenized inside its chat template: ``content`` is the prompt (emphasis markers removed),
    ``spans[i]`` token ``i``'s characters ``(start, end)`` relative to where ``content`` begins."""

    content: str
    spans: list[tuple[int, int]]


def is_dev(pipe: DiffusionPipeline) -> bool:
    """Whether ``pipe`` is FLUX.2 [dev]'s ``Flux2Pipeline`` (a Mistral 3 text encoder), not a [klein] one."""
    from diffusers import Flux2Pipeline

    return isinstance(pipe, Flux2Pipeline)


def text_tokenizer(pipe: DiffusionPipeline):
    """The fast tokenizer of the pipeline's text encoder ([dev]'s ``tokenizer`` is a processor around it)."""
    return getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)


def chat_render(pipe: DiffusionPipeline) -> Callable[[str], str]:
    """How the pipeline puts a prompt in its text encoder's chat format: [klein], Qwen3's user turn, then an assistant
    turn whose thinking is closed empty; [dev], Mistral 3's system prompt (the pipeline's ``system_message``), then
    the prompt as the user's instruction."""
    if is_dev(pipe):
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        return lambda content: pipe.tokenizer.apply_chat_template(
            format_input([content], pipe.system_message)[0], tokenize=False, add_generation_prompt=False)
    return lambda content: pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, enable_thinking=False)


def chat_text(render: Callable[[str], str], prompt: str) -> tuple[str, int]:
    """The chat-formatted text the pipeline encodes for ``prompt`` (``render``: :func:`chat_render`), and where
    ``prompt`` begins in it.

    Raises:
        DiffuGenError: the chat template does not put the prompt in the text as it is.
    """
    text = render(prompt)
    before, _, after = render(_MARK).partition(_MARK)
    if text != before + prompt + after:
        raise DiffuGenError(f"the tokenizer's chat template changes the prompt {prompt[:80]!r}: its words' tokens "
                            "cannot be found in what the text encoder reads")
    return text, len(before)


def chat_tokenize(pipe: DiffusionPipeline, prompt: str, length: int) -> ChatPrompt:
    """Tokenize a prompt in its chat template (emphasis markers removed, weights kept), padded to ``length``.

    The ids are the pipeline's own (``padding="max_length"``, ``truncation=True``; no second beginning-of-text
    token where the template writes one, as transformers' ``apply_chat_template`` does); a token's weight is that of
    its last character in the prompt (a ``Ġword`` token's space belongs to the text before it), 1 outside it.
    """
    chunks = parse_emphasis(prompt)
    content = "".join(c.text for c in chunks)
    char_weights = [c.weight for c in chunks for _ in c.text]
    text, start = chat_text(chat_render(pipe), content)
    tokenizer = text_tokenizer(pipe)
    bos = tokenizer.bos_token
    enc = tokenizer(text, padding="max_length", truncation=True, max_length=length, return_offsets_mapping=True,
                    add_special_tokens=not (bos and text.startswith(bos)))
    spans = [(s - start, e - start) for s, e in enc.offset_mapping]
    weights = [char_weights[min(e, len(content)) - 1] if e > max(s, 0) and s < len(content) else 1.0 for s, e in spans]
    truncated = bool(enc.encodings[0].overflowing)  # what truncation cut off, kept by the tokenizers backend
    return ChatPrompt(ids=list(enc.input_ids), weights=weights, truncated=truncated, content=content, spans=spans)


def chat_word_positions(encoded: ChatPrompt, word: str) -> list[int]:
    """Positions of the tokens of every whole-word occurrence of ``word`` (any case) in ``encoded``'s prompt."""
    positions: list[int] = []
    for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", encoded.content, re.IGNORECASE):
        positions += [i for i, (s, e) in enumerate(encoded.spans) if e > s and s < m.end() and e > m.start()]
    return positions


def out_layers(pipe: DiffusionPipeline) -> tuple[int, ...]:
    """The text encoder's layers whose hidden states the pipeline stacks (its ``__call__``'s default: [klein] 9, 18,
    27; [dev] 10, 20, 30)."""
    return inspect.signature(type(pipe).__call__).parameters["text_encoder_out_layers"].default


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: Sequence[str], max_length: int | None = None
                   ) -> tuple[list[ChatPrompt], torch.Tensor]:
    """Tokenize and encode prompts as the FLUX.2 pipeline does, emphasis applied, to ``max_length`` tokens
    (:func:`~.sd3.sequence_length`).

    Returns:
        encoded: each prompt's chat-formatted ids (what word positions index).
        prompt_embeds: ``(batch, length, 3 * text_hidden)``: the pipeline's ``encode_prompt`` of the prompts.
    """
    length = sequence_length(pipe, max_length)
    encoded = [chat_tokenize(pipe, p, length) for p in prompts]
    embeds, _ = pipe.encode_prompt([e.content for e in encoded], device=pipe._execution_device,
                                   max_sequence_length=length, text_encoder_out_layers=out_layers(pipe))
    return encoded, apply_emphasis(embeds, encoded).to(embeds.dtype)


def flux2_processor(collector: JointHeatmapCollector, name: str, original) -> FluxHeatmapProcessor:
    """The heatmap processor for a FLUX.2 attention layer whose processor is ``original``."""
    from diffusers.models.transformers.transformer_flux2 import (
        Flux2AttnProcessor,
        Flux2ParallelSelfAttnProcessor,
    )

    if isinstance(original, Flux2ParallelSelfAttnProcessor):
        return Flux2SingleHeatmapProcessor(collector, name, original)
    if isinstance(original, Flux2AttnProcessor):
        return FluxHeatmapProcessor(collector, name, original)
    raise DiffuGenError(f"{name}: a {type(original).__name__} (FLUX.2 heatmaps read Flux2AttnProcessor and "
                        "Flux2ParallelSelfAttnProcessor layers)")


def _pause_unconditional_hook(collector: JointHeatmapCollector):
    from diffusers.hooks import ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager

    class PauseUnconditional(ModelHook):
        """Pauses ``collector`` for the transformer calls a pipeline makes in ``cache_context("uncond")``.

        diffusers hands a call's cache context to the ``StateManager`` of every stateful hook on the model.
        """

        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.calls = StateManager(BaseState)
            self.paused = False

        def pre_forward(self, module, *args, **kwargs):
            try:
                unconditional = self.calls.context.name == "uncond"
            except ValueError:  # called outside any cache context
                unconditional = False
            if unconditional and collector.active:
                collector.active, self.paused = False, True
            return args, kwargs

        def post_forward(self, module, output):
            if self.paused:
                collector.active, self.paused = True, False
            return output

        def reset_state(self, module):
            self.calls.reset()
            return module

    return PauseUnconditional()


@contextmanager
def capture_flux2_heatmaps(transformer, refine_power: int = 0, method: HeatmapMethod = "cross_attention"
                           ) -> Iterator[JointHeatmapCollector]:
    """:func:`~.joint_attention.capture_joint_heatmaps` with FLUX.2's processors, paused on unconditional calls."""
    from diffusers.hooks import HookRegistry

    with capture_joint_heatmaps(transformer, flux2_processor, refine_power, method) as collector:
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(_pause_unconditional_hook(collector), _HOOK)
        try:
            yield collector
        finally:
            registry.remove_hook(_HOOK, recurse=False)


class Flux2Family(ModelFamily):
    """FLUX.2 [klein] and [klein] Base (``Flux2KleinPipeline``, ``Flux2KleinInpaintPipeline``; ``builtin:tiny-flux2``)
    and FLUX.2 [dev] (``Flux2Pipeline``; ``builtin:tiny-flux2-dev``)."""

    name = "flux2"
    pipeline_class = "Flux2KleinPipeline"
    class_names = ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline", "Flux2Pipeline")
    own_classes = ("Flux2Pipeline",)  # [dev]: its own text encoder, loaded as itself
    cuda_dtype = "bfloat16"  # as the model cards load them
    long_encoder = "Qwen3"  # [dev]: Mistral 3
    attention = "joint"  # the label score's joint-attention weights
    heatmap_methods = get_args(HeatmapMethod)

    def matches(self, pipe: DiffusionPipeline) -> bool:
        from diffusers import Flux2KleinInpaintPipeline, Flux2KleinPipeline, Flux2Pipeline

        return isinstance(pipe, (Flux2KleinPipeline, Flux2KleinInpaintPipeline, Flux2Pipeline))

    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        encoded, embeds = encode_prompts(pipe, prompts, max_sequence_length)
        kwargs = {"prompt_embeds": embeds}
        if is_dev(pipe) or pipe.config.is_distilled:
            if negative_prompt:
                logger.info("FLUX.2 [%s] is %s-distilled: the negative prompt %r is not used",
                            *(("dev", "guidance") if is_dev(pipe) else ("klein", "step")), negative_prompt)
        else:
            kwargs["negative_prompt_embeds"] = encode_prompts(pipe, [negative_prompt] * len(prompts),
                                                              max_sequence_length)[1]
        encoder = "Mistral3" if is_dev(pipe) else "Qwen3"
        return EncodedBatch(pipeline_kwargs=kwargs, prompts=encoded,
                            context_limits={encoder: sequence_length(pipe, max_sequence_length)})

    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        return chat_word_positions(encoded, word)

    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down", method: str = "cross_attention"):
        return capture_flux2_heatmaps(pipe.transformer, refine_power, method)

    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        from diffusers import Flux2KleinInpaintPipeline, Flux2KleinPipeline, Flux2Pipeline

        if is_dev(pipe):
            if task == "inpaint":
                raise DiffuGenError(
                    "inpaint: FLUX.2 [dev] (Flux2Pipeline) has no inpainting pipeline in diffusers; give the inpaint "
                    "task a FLUX.2 [klein] model or a model of another family (the task section's 'model')")
            cls = Flux2Pipeline
        else:
            cls = Flux2KleinInpaintPipeline if task == "inpaint" else Flux2KleinPipeline
        return cls.from_pipe(pipe)  # a new object sharing the weights: a scheduler set on it leaves pipe's alone

    def call_defaults(self, pipe: DiffusionPipeline, pipeline_class: str | None = None) -> dict:
        """The [klein] pipeline's defaults; a [dev] model's are Flux2Pipeline's."""
        return super().call_defaults(pipe, pipeline_class or ("Flux2Pipeline" if is_dev(pipe) else None))

    def task_kwargs(self, pipe: DiffusionPipeline, task: str, kwargs: dict, size: tuple[int, int]) -> dict:
        """img2img: the parent is the reference image of an edit, which has no ``strength``."""
        if task != "img2img":
            return kwargs
        return {k: v for k, v in kwargs.items() if k != "strength"}

    def max_batch(self, pipe: DiffusionPipeline, task: str) -> int | None:
        """img2img: one prompt per call (every image given is a reference of every prompt of the call)."""
        return 1 if task == "img2img" else None

    def latent_size(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        return packed_grid(pipe, height, width)
