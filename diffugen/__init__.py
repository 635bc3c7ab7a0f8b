"""DiffuGen: labeled image datasets from diffusion models, curated in FiftyOne.

The stages, in the order the data flows (one subpackage each)::

    config → prompts → generation → labels → store → curation

Python API::

    from diffugen import load_config, generate
    summary = generate(load_config("examples/cars.json"))

    from diffugen.labels.relabel import relabel            # new DAAM thresholds, no regeneration
    from diffugen.labels.yolo import label_yolo            # supervised labels
    from diffugen.labels.compare import compare_labels     # DAAM vs YOLO
    from diffugen.curation.review import build_review_queue, apply_review
    from diffugen.curation.export import export_dataset
    from diffugen.curation.bootstrap import train_yolo     # a YOLO-seg from DAAM or curated labels
"""

from . import quiet  # noqa: F401  (first: environment defaults before FiftyOne is imported)
from .errors import ConfigError, DatasetError, DiffuGenError, ModelNotFoundError, OutputPathError

__version__ = "0.1.0"

# Imported on first use, so `import diffugen.testing` (and the CLI's --help) need not load FiftyOne and torch.
_LAZY = {
    "DiffuGenConfig": ".config", "load_config": ".config", "parse_config": ".config",
    "GenerateSummary": ".generation.runner", "Runner": ".generation.runner", "generate": ".generation.runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'diffugen' has no attribute {name!r}")


__all__ = [
    "ConfigError", "DatasetError", "DiffuGenConfig", "DiffuGenError", "GenerateSummary", "ModelNotFoundError",
    "OutputPathError", "Runner", "generate", "load_config", "parse_config", "__version__",
]
