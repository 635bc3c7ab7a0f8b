"""The config stage: schema, the original DiffuGen format, and loading with clear errors."""

from .legacy import convert_legacy, is_legacy
from .loading import format_validation_error, load_config, parse_config
from .schema import (
    SCHEDULERS,
    DiffuGenConfig,
    Img2ImgConfig,
    InpaintConfig,
    LabelModelConfig,
    SeedRange,
    SourceConfig,
    TaskConfig,
    TextualInversion,
    Txt2ImgConfig,
)

__all__ = [
    "SCHEDULERS", "DiffuGenConfig", "Img2ImgConfig", "InpaintConfig", "LabelModelConfig", "SeedRange",
    "SourceConfig", "TaskConfig", "TextualInversion", "Txt2ImgConfig", "convert_legacy", "format_validation_error",
    "is_legacy", "load_config", "parse_config",
]
