"""The model-family seam: what the runner needs to know about a kind of diffusion model.

A :class:`ModelFamily` says, for a loaded text-to-image pipeline, how to encode prompts (and where a
word's tokens sit in what the denoiser attends to), which attention layers to capture with which
processor, and how to build the img2img and inpainting pipelines. The runner only talks to this
interface, so a new family (SDXL, SD3, FLUX) is one new module registered in :data:`FAMILIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

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
    context_length: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    """One kind of diffusion model (e.g. SD 1.x/2.x: a CLIP text encoder and a UNet)."""

    name: str = ""

    @abstractmethod
    def matches(self, pipe: DiffusionPipeline) -> bool:
        """Whether ``pipe`` (a loaded text-to-image pipeline) is of this family."""

    @abstractmethod
    def encode(self, pipe: DiffusionPipeline, prompts: Sequence[str], negative_prompt: str) -> EncodedBatch:
        """Encode a batch of prompts (emphasis applied) and the shared negative prompt."""

    @abstractmethod
    def word_positions(self, pipe: DiffusionPipeline, encoded: EncodedPrompt, word: str) -> list[int]:
        """Positions of every occurrence of ``word``'s tokens in ``encoded`` (empty: absent or truncated)."""

    @abstractmethod
    def capture(self, pipe: DiffusionPipeline, layers: LayerChoice = "daam", refine_power: int = 0,
                refine_layers: RefineLayers = "down") -> AbstractContextManager[HeatmapCollector]:
        """Install the heatmap processors on the denoiser while the context is active; restore them after."""

    @abstractmethod
    def task_pipeline(self, pipe: DiffusionPipeline, task: str):
        """The ``task`` pipeline (txt2img, img2img, inpaint) sharing ``pipe``'s weights."""

    def latent_size(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the latent grid the heatmaps are aggregated on."""
        scale = getattr(pipe, "vae_scale_factor", 8)
        return height // scale, width // scale


def _registry() -> list[ModelFamily]:
    from .sd import StableDiffusionFamily

    return [StableDiffusionFamily()]


FAMILIES: list[ModelFamily] = []


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    """The family of a loaded pipeline, or a :class:`ModelNotFoundError` naming what it saw."""
    if not FAMILIES:
        FAMILIES.extend(_registry())
    for fam in FAMILIES:
        if fam.matches(pipe):
            return fam
    raise ModelNotFoundError(
        f"DiffuGen cannot generate with a {type(pipe).__name__}: the model families it serves are "
        f"{[f.name for f in FAMILIES]}"
    )
