"""DiffuGen: labeled image datasets from Stable Diffusion models, curated in FiftyOne.

Python API::

    from diffugen import load_config, generate
    summary = generate(load_config("examples/cars.json"))

    from diffugen.relabel import relabel                 # new DAAM thresholds, no regeneration
    from diffugen.labels.supervised import label_yolo    # supervised labels
    from diffugen.train import train_yolo                # bootstrap a YOLO-seg from DAAM labels
    from diffugen.compare import compare_labels          # DAAM vs YOLO
    from diffugen.review import build_review_queue, apply_review
    from diffugen.export import export_dataset
"""

from .config import DiffuGenConfig, load_config, parse_config
from .errors import ConfigError, DiffuGenError, ModelNotFoundError
from .generate import GenerateSummary, generate

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DiffuGenConfig", "DiffuGenError", "GenerateSummary", "ModelNotFoundError",
    "generate", "load_config", "parse_config", "__version__",
]
