"""The DiffuGen config schema (pydantic): top-level defaults and one optional section per task.

A config holds the defaults shared by every task (model, size, steps, class words, ...) at the top
level and one optional section per task (``txt2img``, ``img2img``, ``inpaint``) that may override
any of them. Every key either acts or is rejected by name: nothing is accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..common import (
    MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, MIN_STEPS, SIDE_MULTIPLE, TASKS, dataset_name_problem, device_problem,
)
from ..labels.daam import LabelParams
from ..prompts import template_fields

SCHEDULERS = ("ddim", "pndm", "euler", "euler_a", "dpm++", "lms", "unipc")
# The model families of diffugen.generation.family's registry (tests check the two agree); "auto":
# the one the model's files show.
MODEL_FAMILIES = ("auto", "sd", "sdxl", "sd3", "flux", "flux2")


def _side(default: int | None = None) -> Any:
    return Field(default, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)


def _steps(default: int | None = None) -> Any:
    return Field(default, ge=MIN_STEPS, le=MAX_STEPS)


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def _check_device(v: str | None) -> str | None:
    problem = None if v is None else device_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SeedRange(_Strict):
    """``count_per_prompt`` seeds drawn deterministically per prompt from ``[min, max]``."""

    min: int = Field(0, ge=0)
    max: int = Field(2**31 - 1, le=MAX_SEED)
    count_per_prompt: int = Field(1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> "SeedRange":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.max - self.min + 1 < self.count_per_prompt:
            raise ValueError(
                f"the range [{self.min}, {self.max}] holds fewer than count_per_prompt={self.count_per_prompt} seeds"
            )
        return self


class TextualInversion(_Strict):
    """A learned embedding: ``path`` to a diffusers (.bin/.safetensors) or A1111 (.pt) file and its ``token``."""

    path: str = Field(alias="weights")
    token: str = Field(alias="keyword")
    label: str | None = None  # dataset class of the token's object; default: the token without <>

    @field_validator("token")
    @classmethod
    def _token_shape(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"a textual-inversion token is one word without spaces, like '<grand-piano>'; got {v!r}")
        return v


class SourceConfig(_Strict):
    """Which samples img2img and inpaint start from: samples of ``task`` in ``dataset`` (default: this one)."""

    task: Literal["txt2img", "img2img", "inpaint"] = "txt2img"
    dataset: str | None = None
    limit: int | None = Field(None, ge=1)


class SamplingConfig(_Strict):
    """The sampler's settings, at the top level and in task sections alike. ``None`` at the top level:
    what the model's own diffusers pipeline uses (its size, steps and guidance; FLUX: 3.5); in a task
    section: the top level's value."""

    image_count: int | None = Field(None, ge=1)
    width: int | None = _side()
    height: int | None = _side()
    steps: int | None = _steps()
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]


class TaskConfig(SamplingConfig):
    """Fields a task section may set; ``None`` means "inherit from the top level"."""

    model: str | None = None
    templates: list[str] | None = None
    attributes: dict[str, list[str]] | None = None
    negative_prompt: str | None = None
    seeds: list[Seed] | SeedRange | None = None
    batch_size: int | None = Field(None, ge=1, le=256)


class Txt2ImgConfig(TaskConfig):
    pass


class Img2ImgConfig(TaskConfig):
    """``attributes`` here replace or add attribute values of each source sample."""

    source: SourceConfig = SourceConfig()
    strength: float = Field(0.5, gt=0.0, le=1.0)


class InpaintConfig(TaskConfig):
    """``replacements`` maps a class word to descriptions painted inside its (dilated) mask."""

    source: SourceConfig = SourceConfig()
    replacements: dict[str, list[str]] = Field(default_factory=dict)
    strength: float = Field(1.0, gt=0.0, le=1.0)
    mask_dilation: float = Field(0.03, ge=0.0, lt=0.5)  # dilation kernel as a fraction of min(width, height)


class LabelModelConfig(_Strict):
    """A supervised YOLO segmentation model that labels every generated batch too.

    ``classes`` (the original's class-names file, one name per line, or a list) is checked against
    the names the weights carry when they load: a mismatch is an error, not a silent relabeling.
    """

    type: Literal["YOLOSeg"] = "YOLOSeg"
    weights: str | None = None
    classes: str | list[str] | None = None
    class_map: dict[str, str] = Field(default_factory=dict)  # dataset class → model class
    conf: float = Field(0.25, ge=0.0, le=1.0)
    imgsz: int = Field(640, ge=32, le=4096)
    device: str | None = None  # default: the config's device
    batch_size: int = Field(8, ge=1, le=256)
    # A .pt file is a pickle that can run code: it is checked with ultralytics' safe load unless trusted.
    trust_weights: bool = False

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))


class DiffuGenConfig(SamplingConfig):
    """The whole config. Every field has a default except ``dataset_name``."""

    dataset_name: str
    output_root: str = "datasets_output"
    model: str = "builtin:tiny"
    checkpoint_config: str | None = None  # diffusers config folder/hub id for single-file checkpoints
    model_family: Literal[MODEL_FAMILIES] = "auto"  # type: ignore[valid-type]  # "sd" (1.x/2.x), "sdxl", "sd3" (3/3.5), "flux" or "flux2" to override
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    image_format: Literal["png", "jpg"] = "png"

    templates: list[str] = Field(default_factory=list)
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    negative_prompt: str = ""
    seeds: list[Seed] | SeedRange = Field(default_factory=lambda: SeedRange(min=0, max=2**31 - 1))
    batch_size: int = Field(1, ge=1, le=256)
    # The length of the long text sequence SD3/FLUX (T5) and FLUX.2 (Qwen3) models attend over; not set: the
    # model's own (its folder's diffugen.json, else the pipeline's default: SD3 256, FLUX 512). FLUX.1 schnell
    # was trained with 256, and shorter sequences are faster; a prompt longer than this is truncated.
    max_sequence_length: int | None = Field(None, ge=1, le=512)

    class_words: list[str] = Field(default_factory=list)
    class_map: dict[str, str] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    textual_inversion: list[TextualInversion] = Field(default_factory=list)
    labels: LabelParams = Field(default_factory=LabelParams)
    heatmap_layers: Literal["daam", "all"] = "daam"
    # How a word's heatmap is made: the image's attention onto the word's tokens (every family), or
    # ConceptAttention's output-space projection (SD3/FLUX only; not the default until the toy world's
    # label accuracy says it is better on a transformer model).
    heatmap_method: Literal["cross_attention", "concept_attention"] = "cross_attention"
    # Dataset Diffusion's refinement of the heatmaps: the power of the self-attention matrix (0: off).
    # 1 is the default because it measured best on the toy world (BENCHMARKS.md: Otsu IoU 0.533 → 0.635).
    self_attention_power: int = Field(1, ge=0, le=16)
    # Which self-attention layers the refinement averages: the down blocks' (default: as good on the
    # toy world at a third of the cost) or all of them (Dataset Diffusion's recipe).
    self_attention_layers: Literal["down", "all"] = "down"
    # As in the original DiffuGen: ``False`` means the label model's labels are required (absent
    # weights are an error); ``True`` means DAAM labels suffice (absent weights are skipped with a
    # warning). Not set: weights that are named must exist. DAAM labels are made in every case.
    unsupervised: bool | None = None
    label_model: LabelModelConfig | None = None
    # Media files of each task go into numbered sub-folders of this many images (the original's shards).
    images_per_shard: int | None = Field(None, ge=1)

    txt2img: Txt2ImgConfig | None = None
    img2img: Img2ImgConfig | None = None
    inpaint: InpaintConfig | None = None

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))

    @field_validator("dataset_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = dataset_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("textual_inversion", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _consistent(self) -> "DiffuGenConfig":
        if not (self.templates or self.txt2img or self.img2img or self.inpaint):
            raise ValueError("nothing to generate: give 'templates' or a 'txt2img', 'img2img' or 'inpaint' section")
        # Every {placeholder} of every template needs an attribute list.
        for task in TASKS:
            section = getattr(self, task)
            if task == "txt2img" and section is None and not self.templates:
                continue
            if task != "txt2img" and section is None:
                continue
            templates = self.task_value(task, "templates")
            attributes = self.task_attributes(task)
            for i, template in enumerate(templates):
                for name in template_fields(template):
                    if task == "txt2img" and name not in attributes:
                        raise ValueError(
                            f"{task}.templates[{i}] uses {{{name}}} but no attribute list is named {name!r}; "
                            f"attributes are {sorted(attributes)}"
                        )
            if task == "txt2img" and not templates:
                raise ValueError("txt2img needs at least one template in 'templates'")
        for word, cls_ in self.class_map.items():
            if self.classes and cls_ not in self.classes:
                raise ValueError(f"class_map[{word!r}] = {cls_!r} is not one of classes {self.classes}")
        if self.unsupervised is False and (self.label_model is None or not self.label_model.weights):
            raise ValueError("unsupervised: false asks for supervised labels, but there is no label_model.weights")
        return self

    # ---- resolved views used by the generator -------------------------------------------------
    def task_value(self, task: str, name: str) -> Any:
        """The value of ``name`` for ``task``: the task section's own value, else the top level's."""
        section = getattr(self, task, None)
        value = getattr(section, name, None) if section is not None else None
        return getattr(self, name) if value is None else value

    def task_attributes(self, task: str) -> dict[str, list[str]]:
        """Attribute lists for ``task``: img2img/inpaint override the txt2img lists they inherit."""
        base = dict(self.attributes)
        if self.txt2img is not None and self.txt2img.attributes:
            base.update(self.txt2img.attributes)
        section = getattr(self, task)
        if task != "txt2img" and section is not None and section.attributes:
            base.update(section.attributes)
        return base

    def tasks(self) -> list[str]:
        """Task sections this config runs, in order txt2img → img2img → inpaint."""
        out = []
        if self.txt2img is not None or self.templates:
            out.append("txt2img")
        out += [t for t in ("img2img", "inpaint") if getattr(self, t) is not None]
        return out

    def class_of(self, word: str) -> str:
        """Dataset class of a class word (``class_map``, else the word itself, TI tokens without <>)."""
        if word in self.class_map:
            return self.class_map[word]
        for ti in self.textual_inversion:
            if ti.token == word:
                return ti.label or word.strip("<>")
        return word

    def dataset_classes(self) -> list[str]:
        """Ordered dataset classes: ``classes`` first, then any class a class word maps to."""
        out = list(self.classes)
        for word in [*self.class_words, *(ti.token for ti in self.textual_inversion)]:
            c = self.class_of(word)
            if c not in out:
                out.append(c)
        return out

    def all_class_words(self) -> list[str]:
        words = list(self.class_words)
        words += [ti.token for ti in self.textual_inversion if ti.token not in words]
        return words


