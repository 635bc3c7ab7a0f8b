"""The prompts stage: templates × attributes × seeds → the txt2img work list, and prompt emphasis."""

from .emphasis import Chunk, clean_prompt, parse_emphasis
from .templates import (
    WorkItem,
    attribute_combinations,
    fill_template,
    plan_txt2img,
    sample_subset,
    seeds_for,
    stable_hash,
    template_fields,
    words_in,
)

__all__ = [
    "Chunk", "WorkItem", "attribute_combinations", "clean_prompt", "fill_template", "parse_emphasis",
    "plan_txt2img", "sample_subset", "seeds_for", "stable_hash", "template_fields", "words_in",
]
