"""Reading a config file (JSON or YAML, either format) into a :class:`DiffuGenConfig`, with errors
that name each bad field, its value and what was expected."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .legacy import convert_legacy, is_legacy
from .schema import DiffuGenConfig


def _loc(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("list[int]", "SeedRange") or "[" in str(p) and "]" in str(p) and "'" not in str(p):
            continue  # pydantic's union-branch names are noise to a user
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(config)"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = DiffuGenConfig
    for p in loc[:-1]:
        if model is None or isinstance(p, int) or p not in model.model_fields:
            return []
        ann = model.model_fields[p].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model else []


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``field.path: message (got value)``, with "did you mean" for unknown keys."""
    lines = [f"{source} is invalid ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        where = _loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            close = difflib.get_close_matches(key, _allowed_keys(e["loc"]), n=1)
            msg = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
        got = e.get("input")
        shown = json.dumps(got, default=str) if not isinstance(got, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {where}: {msg} (got {shown})")
    return "\n".join(lines)


def parse_config(raw: dict, source: str = "config") -> DiffuGenConfig:
    """Validate a config dict (either format) into a :class:`DiffuGenConfig` or raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object/mapping, got {type(raw).__name__}")
    data = convert_legacy(raw) if is_legacy(raw) else raw
    try:
        return DiffuGenConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> DiffuGenConfig:
    """Read a JSON or YAML config file and validate it. Nothing is generated or written here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path.resolve()}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                          "save the config as UTF-8") from None
    try:
        raw = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {err}") from None
    return parse_config(raw, source=str(path))
