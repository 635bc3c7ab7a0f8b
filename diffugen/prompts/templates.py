"""Prompt templating (paper sec. 3.2): templates × attribute values × seeds → a deterministic work list."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .emphasis import clean_prompt


def template_fields(template: str) -> list[str]:
    """Names of the ``{placeholders}`` of a template, in order of first use."""
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in names:
            if not name.isidentifier():
                raise ValueError(f"template placeholder {{{name}}} must be a plain name like {{object}}: {template!r}")
            names.append(name)
    return names


def fill_template(template: str, attributes: dict[str, str]) -> str:
    """Replace each ``{name}`` with ``attributes[name]`` (extra attributes are ignored)."""
    return template.format_map({k: attributes[k] for k in template_fields(template)})


def stable_hash(*parts: Any) -> str:
    """A hex digest of JSON-serialisable parts that is the same on every machine and Python run."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class WorkItem:
    """One image to make. ``key`` identifies it across runs (resume) and names its files."""

    task: str
    template: str
    attributes: tuple[tuple[str, str], ...]
    seed: int
    prompt: str
    class_words: tuple[tuple[str, str], ...]  # (word in the prompt, dataset class) to label
    parent_key: str | None = None
    parent: Any = field(default=None, compare=False, hash=False)  # the source sample (img2img/inpaint)
    replace: tuple[str, str] | None = None  # inpaint: (class word of the parent, its new description)

    @property
    def key(self) -> str:
        return stable_hash(self.task, self.template, dict(self.attributes), self.seed, self.parent_key, self.replace)[:20]

    @property
    def attribute_dict(self) -> dict[str, str]:
        return dict(self.attributes)


def attribute_combinations(templates: Sequence[str], attributes: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    """Every (template, {placeholder: value}) pair, in a fixed order (template, then attribute product)."""
    combos = []
    for template in templates:
        names = template_fields(template)
        for values in itertools.product(*(attributes[n] for n in names)):
            combos.append((template, dict(zip(names, values))))
    return combos


def sample_subset(n: int, count: int | None, salt: str = "") -> list[int]:
    """Indices of a deterministic subset of ``range(n)`` of size ``count`` (all when ``count`` is None or ≥ n)."""
    if count is None or count >= n:
        return list(range(n))
    rng = random.Random(int(stable_hash("subset", salt, n, count)[:16], 16))
    return sorted(rng.sample(range(n), count))


def seeds_for(seeds: Any, template: str, attributes: dict[str, str]) -> list[int]:
    """Seeds of one prompt: an explicit list as given, or ``count_per_prompt`` seeds drawn from a range.

    Range draws depend only on the prompt's template and attributes, so adding attribute values
    to a config never changes the seeds (and images) of the prompts it already had.
    """
    if isinstance(seeds, (list, tuple)):
        return list(seeds)
    rng = random.Random(int(stable_hash("seed", template, attributes)[:16], 16))
    picked: list[int] = []
    while len(picked) < seeds.count_per_prompt:
        s = rng.randint(seeds.min, seeds.max)
        if s not in picked:
            picked.append(s)
    return picked


def words_in(prompt: str, words: Iterable[str]) -> tuple[str, ...]:
    """The class words that occur in a prompt as whole words (case-insensitive), in given order."""
    text = clean_prompt(prompt).lower()
    found = []
    for w in words:
        if re.search(r"(?<![\w<-])" + re.escape(w.lower()) + r"(?![\w>-])", text):
            found.append(w)
    return tuple(found)


def plan_txt2img(templates: Sequence[str], attributes: dict[str, list[str]], seeds: Any, image_count: int | None,
                 class_words: Sequence[str], class_of: Callable[[str], str] = str) -> list[WorkItem]:
    """The txt2img work list: template × attribute product × seeds, then ``image_count`` of them.

    ``image_count`` picks a deterministic subset of all (prompt, seed) pairs: the number of images.
    The pairs are numbered in the order template → attribute product → seed and only the chosen
    numbers are decoded, so 10 attributes of 10 values cost nothing before the images themselves.
    """
    per_prompt = len(seeds) if isinstance(seeds, (list, tuple)) else seeds.count_per_prompt
    fields = [template_fields(t) for t in templates]
    sizes = [math.prod(len(attributes[n]) for n in names) * per_prompt for names in fields]
    chosen = sample_subset(sum(sizes), image_count, salt=stable_hash(list(templates), attributes))
    items: list[WorkItem] = []
    prompt_of: dict[tuple[int, int], tuple[dict[str, str], str, tuple, list[int]]] = {}
    t, start = 0, 0
    for index in chosen:  # ascending
        while index >= start + sizes[t]:
            start += sizes[t]
            t += 1
        combo, k = divmod(index - start, per_prompt)
        if (t, combo) not in prompt_of:
            prompt_of.clear()
            attrs, rest = {}, combo
            for name in reversed(fields[t]):  # itertools.product order: the last attribute varies fastest
                rest, r = divmod(rest, len(attributes[name]))
                attrs[name] = attributes[name][r]
            attrs = {n: attrs[n] for n in fields[t]}
            prompt = fill_template(templates[t], attrs)
            words = tuple((w, class_of(w)) for w in words_in(prompt, class_words))
            prompt_of[(t, combo)] = (attrs, prompt, words, seeds_for(seeds, templates[t], attrs))
        attrs, prompt, words, prompt_seeds = prompt_of[(t, combo)]
        items.append(WorkItem("txt2img", templates[t], tuple(sorted(attrs.items())), prompt_seeds[k], prompt, words))
    return items
