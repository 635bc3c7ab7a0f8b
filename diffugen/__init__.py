"""DiffuGen: labeled image datasets from Stable Diffusion models, curated in FiftyOne.

Python API::

    from diffugen import load_config, generate, relabel
    summary = generate(load_config("examples/cars.json"))
"""

from .config import DiffuGenConfig, load_config, parse_config
from .errors import ConfigError, DiffuGenError, ModelNotFoundError
from .generate import GenerateSummary, generate

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DiffuGenConfig", "DiffuGenError", "GenerateSummary", "ModelNotFoundError",
    "generate", "load_config", "parse_config", "__version__",
]
