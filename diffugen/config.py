"""The DiffuGen config: a pydantic schema, the original DiffuGen format, and loading with clear errors.

A config holds the defaults shared by every task (model, size, steps, class words, ...) at the top
level and one optional section per task (``txt2img``, ``img2img``, ``inpaint``) that may override
any of them. Configs written for the original DiffuGen (``dataset_root``, ``image_size``,
``seed_range``, ``object_names``, ... ; see ``examples/legacy``) are converted on load by
:func:`convert_legacy` and mean the same thing.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .labels.unsupervised import LabelParams
from .prompts import template_fields

TASKS = ("txt2img", "img2img", "inpaint")
SCHEDULERS = ("ddim", "pndm", "euler", "euler_a", "dpm++", "lms", "unipc")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SeedRange(_Strict):
    """``count_per_prompt`` seeds drawn deterministically per prompt from ``[min, max]``."""

    min: int = Field(0, ge=0)
    max: int = Field(2**31 - 1, le=2**63 - 1)
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


class TaskConfig(_Strict):
    """Fields a task section may set; ``None`` means "inherit from the top level"."""

    model: str | None = None
    templates: list[str] | None = None
    attributes: dict[str, list[str]] | None = None
    negative_prompt: str | None = None
    seeds: list[int] | SeedRange | None = None
    image_count: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
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
    """A supervised segmentation model (see the supervised-labeling issue); kept from original configs."""

    type: Literal["YOLOSeg"] = "YOLOSeg"
    weights: str | None = None
    classes: str | list[str] | None = None  # the original's class-names file; the model's own names are used
    class_map: dict[str, str] = Field(default_factory=dict)  # dataset class → model class
    conf: float = Field(0.25, ge=0.0, le=1.0)
    imgsz: int = Field(640, ge=32, le=4096)
    device: str | None = None  # default: the config's device
    batch_size: int = Field(8, ge=1, le=256)


class DiffuGenConfig(_Strict):
    """The whole config. Every field has a default except ``dataset_name``."""

    dataset_name: str
    output_root: str = "datasets_output"
    model: str = "builtin:tiny"
    checkpoint_config: str | None = None  # diffusers config folder/hub id for single-file checkpoints
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    image_format: Literal["png", "jpg"] = "png"

    templates: list[str] = Field(default_factory=list)
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    negative_prompt: str = ""
    seeds: list[int] | SeedRange = Field(default_factory=lambda: SeedRange(min=0, max=2**31 - 1))
    image_count: int | None = Field(None, ge=1)
    width: int = Field(512, ge=8, le=4096, multiple_of=8)
    height: int = Field(512, ge=8, le=4096, multiple_of=8)
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    batch_size: int = Field(1, ge=1, le=256)

    class_words: list[str] = Field(default_factory=list)
    class_map: dict[str, str] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    textual_inversion: list[TextualInversion] = Field(default_factory=list)
    labels: LabelParams = Field(default_factory=LabelParams)
    heatmap_layers: Literal["daam", "all"] = "daam"
    # Dataset Diffusion's refinement of the heatmaps: the power of the self-attention matrix (0: off).
    # 1 is the default because it measured best on the toy world (BENCHMARKS.md: Otsu IoU 0.533 → 0.635).
    self_attention_power: int = Field(1, ge=0, le=16)
    # Which self-attention layers the refinement averages: the down blocks' (default: as good on the
    # toy world at a third of the cost) or all of them (Dataset Diffusion's recipe).
    self_attention_layers: Literal["down", "all"] = "down"
    unsupervised: bool = True
    label_model: LabelModelConfig | None = None
    images_per_shard: int | None = Field(None, ge=1)

    txt2img: Txt2ImgConfig | None = None
    img2img: Img2ImgConfig | None = None
    inpaint: InpaintConfig | None = None

    @field_validator("dataset_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _SAFE_NAME.match(v) or ".." in v:
            raise ValueError(
                f"must be 1-100 letters, digits, '.', '_' or '-' (it names a folder under output_root); got {v!r}"
            )
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


# ---- the original DiffuGen format -----------------------------------------------------------------
_LEGACY_MARKERS = {"dataset_root", "image_size", "dataset_classes", "dataset_to_model_class_map", "deterministic"}
_LEGACY_TASK_KEYS = {"stable_diffusion_model", "seed_range", "seed_count_per_prompt", "prompts", "source_dataset"}


def is_legacy(raw: dict) -> bool:
    if _LEGACY_MARKERS & raw.keys():
        return True
    return any(isinstance(raw.get(t), dict) and _LEGACY_TASK_KEYS & raw[t].keys() for t in TASKS)


# The original code's five attribute lists; a config may list one that its templates do not use.
_ORIGINAL_ATTRIBUTES = {
    "view_points": "view_point", "object_names": "object_name", "times_of_day": "time_of_day",
    "sky_conditions": "sky_condition", "weather_conditions": "weather_condition",
}


def _placeholder_for(key: str, placeholders: list[str]) -> str | None:
    """Map an original attribute list key (``view_points``, ``times_of_day``) to its placeholder."""
    if key in _ORIGINAL_ATTRIBUTES:
        return _ORIGINAL_ATTRIBUTES[key]
    for p in placeholders:
        head, _, rest = p.partition("_")
        plural_head = f"{head}s_{rest}" if rest else f"{head}s"
        if key in {p, p + "s", p + "es", plural_head}:
            return p
    return None


def convert_legacy(raw: dict) -> dict:
    """Translate an original DiffuGen config into this schema (same meaning, new names).

    ``image_size`` → ``width``/``height``; ``dataset_root`` → ``output_root``; ``dataset_classes`` →
    ``classes`` and ``class_words``; each task's ``stable_diffusion_model`` → ``model``, ``prompts`` →
    ``templates``, ``seed_range`` + ``seed_count_per_prompt`` → ``seeds``; list-valued keys whose
    singular is a template placeholder (``view_points`` → ``{view_point}``) → ``attributes``; in
    ``inpaint`` the remaining lists (``"car": ["yellow camero", ...]``) → ``replacements``;
    ``textual_inversion: {weights, keyword}`` → a top-level embedding whose token is also labeled.
    """
    raw = dict(raw)
    out: dict[str, Any] = {}
    renames = {"dataset_root": "output_root", "dataset_classes": "classes"}
    for key, value in raw.items():
        if key in TASKS:
            continue
        if key == "image_size" and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k in ("width", "height")})
        elif key == "dataset_to_model_class_map":
            out.setdefault("label_model", {})
            out["label_model"]["class_map"] = value
        elif key == "label_model" and isinstance(value, dict):
            out.setdefault("label_model", {})
            out["label_model"].update(value)
        elif key == "deterministic":
            continue  # DiffuGen is always deterministic
        else:
            out[renames.get(key, key)] = value
    if "classes" in out and "class_words" not in out:
        out["class_words"] = list(out["classes"])

    t2i = raw.get("txt2img") or {}
    templates = t2i.get("prompts") or t2i.get("templates") or []
    placeholders = sorted({f for t in templates for f in template_fields(t)})
    tis = []
    for task in TASKS:
        section = raw.get(task)
        if not isinstance(section, dict):
            continue
        new: dict[str, Any] = {}
        attributes: dict[str, Any] = dict(section.get("attributes") or {})
        replacements: dict[str, Any] = dict(section.get("replacements") or {})
        seed_range, seed_count = section.get("seed_range"), section.get("seed_count_per_prompt")
        for key, value in section.items():
            if key == "stable_diffusion_model":
                new["model"] = value
            elif key == "prompts":
                new["templates"] = value
            elif key in ("seed_range", "seed_count_per_prompt", "attributes", "replacements"):
                continue
            elif key == "source_dataset":
                new["source"] = {"task": "txt2img"}  # the original always started from its txt2img output
            elif key == "textual_inversion":
                tis += value if isinstance(value, list) else [value]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value) and key not in (
                "templates",
                "class_words",
            ):
                target = _placeholder_for(key, placeholders)
                if target is not None:
                    attributes[target] = value
                elif task == "inpaint":
                    replacements[key] = value
                else:
                    new[key] = value  # unknown: let the schema report it
            else:
                new[key] = value
        if seed_range is not None or seed_count is not None:
            seeds = dict(seed_range or {})
            if seed_count is not None:
                seeds["count_per_prompt"] = seed_count
            new["seeds"] = seeds
        if attributes:
            new["attributes"] = attributes
        if replacements:
            new["replacements"] = replacements
        out[task] = new
    if tis:
        out["textual_inversion"] = tis
    return out


# ---- loading with readable errors ------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("list[int]", "SeedRange") or "[" in str(p) and "]" in str(p) and "'" not in str(p):
            continue  # pydantic's union-branch names are noise to a user
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(config)"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = DiffuGenConfig
    for p in loc[:-1]:
        if model is None or isinstance(p, int) or p not in model.model_fields:
            return []
        ann = model.model_fields[p].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model else []


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``field.path: message (got value)``, with "did you mean" for unknown keys."""
    lines = [f"{source} is invalid ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        where = _loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            close = difflib.get_close_matches(key, _allowed_keys(e["loc"]), n=1)
            msg = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
        got = e.get("input")
        shown = json.dumps(got, default=str) if not isinstance(got, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {where}: {msg} (got {shown})")
    return "\n".join(lines)


def parse_config(raw: dict, source: str = "config") -> DiffuGenConfig:
    """Validate a config dict (either format) into a :class:`DiffuGenConfig` or raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object/mapping, got {type(raw).__name__}")
    data = convert_legacy(raw) if is_legacy(raw) else raw
    try:
        return DiffuGenConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> DiffuGenConfig:
    """Read a JSON or YAML config file and validate it. Nothing is generated or written here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path.resolve()}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {err}") from None
    return parse_config(raw, source=str(path))
