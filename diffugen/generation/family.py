"""The model-family seam: what the runner needs to know about a kind of diffusion model.

A :class:`ModelFamily` says, for a loaded text-to-image pipeline, how to encode prompts (and where a
word's tokens sit in what the denoiser attends to), which attention layers to capture with which
processor, and how to build the img2img and inpainting pipelines. The runner only talks to this
interface, so a family is one module registered in :func:`_registry` (:mod:`.sd`: SD 1.x/2.x;
:mod:`.sdxl`: SDXL; :mod:`.sd3`, :mod:`.flux`, :mod:`.flux2` the same way). Loading (:mod:`.models`) asks the
registry which family a model's files name and which diffusers class loads it.
"""

from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..errors import ModelNotFoundError
from .attention import HeatmapCollector, LayerChoice, RefineLayers
from .tokens import EncodedPrompt

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass
class EncodedBatch:
    """A batch of prompts as the pipeline takes them, and as the heatmaps read them.

    ``pipeline_kwargs`` go straight into the pipeline call (``prompt_embeds``,
    ``negative_prompt_embeds``, and whatever else the family's pipeline needs); ``prompts[i]`` is the
    token sequence prompt ``i``'s image tokens attend to, for :meth:`ModelFamily.word_positions`.
    """

    pipeline_kwargs: dict[str, Any]
    prompts: list[EncodedPrompt]
    # What the text encoders keep, for the truncation warning: ``{"CLIP": 77, "T5": 256}`` (SD3 with T5).
    context_limits: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# Per model, the call defaults its folder records for itself (``diffugen.json``, :func:`set_model_defaults`),
# keyed by its denoiser: the task pipelines ``from_pipe`` makes share the modules, not other attributes.
_MODEL_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def denoiser(pipe: DiffusionPipeline):
    """The pipeline's UNet or transformer."""
    return getattr(pipe, "unet", None) or pipe.transformer


def set_model_defaults(pipe: DiffusionPipeline, defaults: dict[str, Any]) -> None:
    """Record ``defaults`` (e.g. ``{"max_sequence_length": 0}``) as the model's own, for every pipeline sharing its
    denoiser; :meth:`ModelFamily.call_defaults` and the T5 families' encoders read them."""
    _MODEL_DEFAULTS[denoiser(pipe)] = dict(defaults)


def model_defaults(pipe: DiffusionPipeline) -> dict[str, Any]:
    """What :func:`set_model_defaults` recorded for the pipeline's model (``{}``: nothing)."""
    return _MODEL_DEFAULTS.get(denoiser(pipe), {})


def token_runs(positions: Sequence[int]) -> list[list[int]]:
    """Positions split into runs of consecutive positions (one occurrence of a word's tokens each)."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


class ModelFamily(ABC):
    """One kind of diffusion model (e.g. SD 1.x/2.x: a CLIP text encoder and a UNet).

    Loading (:mod:`.models`) reads four class attributes: ``pipeline_class``, the diffusers
    text-to-image pipeline a model of the family is loaded with; ``class_names``, the
    ``model_index.json`` ``_class_name`` values that mean this family; ``own_classes``, those among them
    loaded with their own class (a FLUX Kontext model: what it is shows only there); ``load_kwargs``,
    extra arguments to ``from_pretrained``/``from_single_file``.
    """

    name: ClassVar[str] = ""
    pipeline_class: ClassVar[str] = ""
    class_names: ClassVar[tuple[str, ...]] = ()
    load_kwargs: ClassVar[dict[str, Any]] = {}
    own_classes: ClassVar[tuple[str, ...]] = ()  # class names loaded as themselves, not as ``pipeline_class``
    heatmap_methods: ClassVar[tuple[str, ...]] = ("cross_attention",)  # what :meth:`capture`'s ``method`` takes
    cuda_dtype: ClassVar[str] = "float16"  # what ``dtype: "auto"`` loads on a GPU
    long_encoder: ClassVar[str | None] = None  # the encoder whose sequence length :meth:`encode` takes (e.g. "T5")
    attention: ClassVar[str] = "cross"  # what makes its maps: which label-score weights they take (labels.scoring)

    @abstractmethod
    def matches(self, pipe: DiffusionPipeline) -> bool:
        """Whether ``pipe`` (a loaded text-to-image pipeline) is of this family."""

    @abstractmethod
    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str,
               max_sequence_length: int | None = None) -> EncodedBatch:
        """Encode a batch of prompts (emphasis applied) and the shared negative prompt; ``max_sequence_length``:
        the length of the :attr:`long_encoder`'s sequence (``None``: the model's own; ignored without one)."""

    @abstractmethod
    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        """Positions of every occurrence of ``word``'s tokens in ``encoded`` (empty: absent or truncated)."""

    @abstractmethod
    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down", method: str = "cross_attention"
                ) -> AbstractContextManager[HeatmapCollector]:
        """Install the heatmap processors on the denoiser while the context is active; restore them after.
        ``method`` is one of :attr:`heatmap_methods`."""

    @abstractmethod
    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        """The ``task`` pipeline (txt2img, img2img, inpaint) sharing ``pipe``'s weights."""

    def task_kwargs(self, pipe: DiffusionPipeline, task: str, kwargs: dict[str, Any], size: tuple[int, int]
                    ) -> dict[str, Any]:
        """The task's pipeline arguments (:func:`~.runner.task_inputs`) as ``pipe`` takes them, for an image of
        ``size`` ``(height, width)``; by default unchanged."""
        return kwargs

    def max_batch(self, pipe: DiffusionPipeline, task: str) -> int | None:
        """The most prompts one ``task`` call of ``pipe`` takes (``None``: any); the runner makes a larger batch
        in calls of this many (FLUX.2 edits: every image given is a reference of every prompt of the call)."""
        return None

    def word_occurrences(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[list[int]]:
        """The positions of each occurrence of ``word`` in ``encoded``: by default the runs of consecutive
        positions among :meth:`word_positions` (a family whose sequence holds a word twice, e.g. SD3's CLIP
        and T5 parts, groups them itself)."""
        return token_runs(self.word_positions(pipe, encoded, word))

    def text_encoders(self, pipe: DiffusionPipeline) -> list[tuple[str | None, Any, Any]]:
        """``(name, tokenizer, text_encoder)`` of each text encoder, in the order the denoiser's context
        concatenates them; ``name`` is the key of the encoder's vectors in a textual-inversion file of
        the family's format (``None``: the file holds one tensor)."""
        return [(None, pipe.tokenizer, pipe.text_encoder)]

    def call_defaults(self, pipe: DiffusionPipeline, pipeline_class: str | None = None) -> dict[str, Any]:
        """What the family's text-to-image pipeline (or ``pipeline_class``) uses when not told: ``steps``,
        ``guidance_scale``, ``height`` and ``width`` (its ``__call__`` defaults, and the denoiser's sample size
        times the VAE's scale, as the pipeline computes it), so an unset config value means the same as in
        diffusers; what the model's folder records for itself (:func:`set_model_defaults`) comes first."""
        import diffusers

        params = inspect.signature(getattr(diffusers, pipeline_class or self.pipeline_class).__call__).parameters
        side = (getattr(pipe, "default_sample_size", None) or denoiser(pipe).config.sample_size) * pipe.vae_scale_factor
        return {"steps": params["num_inference_steps"].default, "guidance_scale": params["guidance_scale"].default,
                "height": side, "width": side, **model_defaults(pipe)}

    def latent_size(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the latent grid the heatmaps are aggregated on."""
        scale = getattr(pipe, "vae_scale_factor", 8)
        return height // scale, width // scale


def _registry() -> list[ModelFamily]:
    from .flux import FluxFamily
    from .flux2 import Flux2Family
    from .sd import StableDiffusionFamily
    from .sd3 import StableDiffusion3Family
    from .sdxl import StableDiffusionXLFamily

    return [StableDiffusionFamily(), StableDiffusionXLFamily(), StableDiffusion3Family(), FluxFamily(),
            Flux2Family()]


FAMILIES: list[ModelFamily] = []


def families() -> list[ModelFamily]:
    """Every registered family (the registry is filled on first use: the family modules import diffusers)."""
    if not FAMILIES:
        FAMILIES.extend(_registry())
    return FAMILIES


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    """The family of a loaded pipeline, or a :class:`ModelNotFoundError` naming what it saw."""
    for fam in families():
        if fam.matches(pipe):
            return fam
    raise ModelNotFoundError(
        f"DiffuGen cannot generate with a {type(pipe).__name__}: the model families it serves are "
        f"{[f.name for f in FAMILIES]}"
    )


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (a config's ``model_family``)."""
    for fam in families():
        if fam.name == name:
            return fam
    raise ModelNotFoundError(f"model_family {name!r} is not one DiffuGen serves; families are {[f.name for f in FAMILIES]}")


def family_of_class(class_name: str, model: str) -> ModelFamily:
    """The family of a model whose ``model_index.json`` names the pipeline class ``class_name``."""
    for fam in families():
        if class_name in fam.class_names:
            return fam
    served = {f.name: f.pipeline_class for f in FAMILIES}
    raise ModelNotFoundError(
        f"DiffuGen cannot generate with {model}: its model_index.json names a {class_name}, and the model "
        f"families DiffuGen serves are {served}. If it is one of these families under another class name, "
        f"set 'model_family' in the config."
    )
