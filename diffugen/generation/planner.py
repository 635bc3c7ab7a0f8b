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
from ..prompts import WorkItem, fill_template, plan_txt2img, words_in


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
