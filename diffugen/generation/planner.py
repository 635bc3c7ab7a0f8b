"""The work lists of the three tasks (paper sec. 3.2–3.4): deterministic, so a rerun finds what exists.

txt2img expands templates × attributes × seeds (:func:`diffugen.prompts.plan_txt2img`); img2img
re-renders each source sample with replaced or added attributes; inpaint repaints each labeled
object of a source sample, once per replacement description, inside its dilated DAAM mask.
"""

from __future__ import annotations

import itertools
import re

import cv2
import fiftyone as fo
import numpy as np

from ..config import DiffuGenConfig
from ..prompts import WorkItem, fill_template, plan_txt2img, template_fields, words_in


def _source_samples(cfg: DiffuGenConfig, task: str, ds: fo.Dataset) -> list[fo.Sample]:
    source = getattr(cfg, task).source
    src = fo.load_dataset(source.dataset) if source.dataset else ds
    view = src.match(fo.ViewField("task") == source.task).sort_by("key")
    if source.limit:
        view = view.limit(source.limit)
    return list(view.select_fields(
        ["key", "prompt_template", "attributes", "seed", "class_words", "daam_segmentation", "metadata"]
    ))


def _parent_attributes(sample: fo.Sample) -> dict[str, str]:
    attrs = sample["attributes"]
    return {k: v for k, v in attrs.to_dict().items() if not k.startswith("_")} if attrs is not None else {}


def plan(cfg: DiffuGenConfig, task: str, ds: fo.Dataset | None = None) -> list[WorkItem]:
    """The deterministic work list of ``task`` (img2img/inpaint read their source samples from ``ds``)."""
    words = cfg.all_class_words()
    if task == "txt2img":
        return plan_txt2img(cfg.task_value(task, "templates"), cfg.task_attributes(task), cfg.task_value(task, "seeds"),
                            cfg.task_value(task, "image_count"), words, cfg.class_of)
    section = getattr(cfg, task)
    own_seeds = section.seeds  # None: each child keeps its parent's seed
    own_templates = section.templates
    items: list[WorkItem] = []
    for parent in _source_samples(cfg, task, ds):
        parent_attrs = _parent_attributes(parent)
        templates = own_templates or [parent["prompt_template"]]
        seeds = own_seeds if isinstance(own_seeds, list) else [parent["seed"]]
        if task == "img2img":
            overrides = section.attributes or {}
            names = list(overrides)
            for values, template, seed in itertools.product(itertools.product(*overrides.values()), templates, seeds):
                attrs = {**parent_attrs, **dict(zip(names, values))}
                prompt = fill_template(template, attrs)
                pairs = tuple((w, cfg.class_of(w)) for w in words_in(prompt, words))
                items.append(WorkItem(task, template, tuple(sorted(attrs.items())), seed, prompt, pairs,
                                      parent_key=parent["key"], parent=parent))
        else:  # inpaint: each labeled class word of the parent × each of its replacement descriptions
            for word in parent["class_words"] or []:
                for description, template, seed in itertools.product(section.replacements.get(word, []), templates, seeds):
                    attrs = {k: (description if v == word else v) for k, v in parent_attrs.items()}
                    prompt = fill_template(template, attrs)
                    if description not in prompt:  # the word was not an attribute value: replace it in the text
                        prompt = re.sub(rf"\b{re.escape(word)}\b", description, fill_template(template, parent_attrs), count=1)
                    others = tuple((w, cfg.class_of(w)) for w in words_in(prompt, words) if w != word)
                    items.append(WorkItem(task, template, tuple(sorted(attrs.items())), seed, prompt,
                                          ((description, cfg.class_of(word)), *others),
                                          parent_key=parent["key"], parent=parent, replace=(word, description)))
    return items


def inpaint_mask(item: WorkItem, class_ids: dict[str, int], dilation: float) -> np.ndarray | None:
    """The parent's DAAM mask of the replaced object, dilated; ``None`` when the parent has none."""
    seg = item.parent["daam_segmentation"]
    if seg is None:
        return None
    mask = seg.get_mask() if seg.mask is None else seg.mask
    if mask is None:
        return None
    cls = item.class_words[0][1]
    binary = (mask == class_ids.get(cls, -1)).astype(np.uint8) * 255
    if not binary.any():
        return None
    side = max(1, int(round(dilation * min(binary.shape))))
    if dilation > 0:
        binary = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side | 1, side | 1)))
    return binary


def plan_warnings(cfg: DiffuGenConfig) -> list[str]:
    """What a config asks for that would silently make less than it seems to (one line each)."""
    out = []
    for task in cfg.tasks():
        templates = cfg.task_value(task, "templates") or []
        attributes = cfg.task_attributes(task)
        if any(not t.strip() for t in templates):
            out.append(f"{task}: an empty template: its images have an empty prompt")
        used = {n for t in templates for n in template_fields(t)}
        for name, values in attributes.items():
            if not values and (name in used or task != "txt2img"):
                out.append(f"{task}: attribute {name!r} has no values: its templates plan 0 images")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                out.append(f"{task}: attribute {name!r} lists {duplicates} more than once: each image is made once")
    words = cfg.all_class_words()
    if not words:
        out.append("no class words: images are made, but nothing is labeled (give 'class_words')")
    texts = [t for task in cfg.tasks() for t in cfg.task_value(task, "templates") or []]
    texts += [v for task in cfg.tasks() for vs in cfg.task_attributes(task).values() for v in vs]
    if cfg.inpaint is not None:
        texts += [d for ds in cfg.inpaint.replacements.values() for d in ds]
    for w in words:
        if not any(words_in(t, [w]) for t in texts):
            out.append(f"class word {w!r} occurs in no template or attribute value: it is never labeled")
    return out
