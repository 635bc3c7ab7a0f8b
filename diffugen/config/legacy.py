"""The original DiffuGen config format (``dataset_root``, ``image_size``, ``seed_range``,
``object_names``, ...; see ``examples/original``), converted on load into the schema, same meaning.
"""

from __future__ import annotations

from typing import Any

from ..common import TASKS
from ..prompts import template_fields

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
    ``classes``; the ``object_names`` values are the labeled ``class_words`` (the original labels
    each prompt's ``{object_name}``; without them, the ``dataset_classes``); each task's ``stable_diffusion_model`` → ``model``, ``prompts`` →
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
    if "class_words" not in out:
        objects = [v for t in TASKS for v in (out.get(t, {}).get("attributes") or {}).get("object_name", [])]
        out["class_words"] = list(dict.fromkeys(objects)) or list(out.get("classes", []))
    return out


