"""The prompts stage: templates × attributes × seeds → the txt2img work list, and prompt emphasis."""

from .emphasis import Chunk, clean_prompt, parse_emphasis  # noqa: F401  (re-exported)
from .templates import (  # noqa: F401  (re-exported)
    WorkItem, attribute_combinations, fill_template, plan_txt2img, sample_subset, seeds_for, stable_hash,
    template_fields, words_in,
)
