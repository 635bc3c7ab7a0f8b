"""Form helpers of the FiftyOne plugin's operators (``operators/__init__.py``), kept in the library so
that the operators stay thin and the forms are testable.

Bad input is shown on the form field (``prop.invalid``, ``prop.error_message``), never raised.
"""

from __future__ import annotations

import json
import time

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..common import MAX_SIDE, MAX_STEPS, MIN_SIDE, MIN_STEPS, ProgressFn, dataset_name_problem
from ..errors import DiffuGenError
from ..store.dataset import label_fields


class CallableOperator(foo.Operator):
    """Adds a Python call: ``op(collection, delegate=False, **params)`` → ``ExecutionResult``."""

    def __call__(self, collection, delegate: bool = False, selected=None, **params):
        view = collection.view() if isinstance(collection, fo.Dataset) else collection
        return foo.execute_operator(self.uri, ctx={"view": view, "params": params, "selected": selected or []},
                                    request_delegation=delegate)


def invalid(prop, message: str):
    prop.invalid = True
    prop.error_message = message
    return prop


def error(inputs, name: str, message: str):
    """An error line in the form that also blocks execution."""
    return invalid(inputs.view(name, types.Error(label=message)), message)


def target(ctx):
    """The selected samples when there are some and the form says so, else the current view."""
    if ctx.selected and ctx.params.get("target", "selected") == "selected":
        return ctx.view.select(ctx.selected)
    return ctx.view


def target_input(ctx, inputs) -> bool:
    """Add the target choice; ``False`` (and an error in the form) when there is nothing to work on."""
    if ctx.dataset is None:
        error(inputs, "no_dataset", "open a dataset first")
        return False
    if ctx.selected:
        choices = types.RadioGroup()
        choices.add_choice("selected", label=f"the {len(ctx.selected)} selected samples")
        choices.add_choice("view", label="the current view")
        inputs.enum("target", choices.values(), default="selected", label="Apply to", view=choices)
    if len(target(ctx)) == 0:
        error(inputs, "empty_view", "the current view has no samples: change the filters or the selection")
        return False
    return True


def field_input(ctx, inputs, name: str, kinds, default: str, label: str, description: str = ""):
    """A dropdown of the dataset's label fields of ``kinds``; an unknown or missing field is marked invalid."""
    choices = label_fields(ctx.dataset, kinds)
    dropdown = types.Dropdown()
    for c in choices:
        dropdown.add_choice(c, label=c)
    # Not `required`: a Python call may leave it out and get the default (the App fills it in).
    value = ctx.params.get(name) or default
    prop = inputs.str(name, default=default if default in choices else None, label=label,
                      description=description, view=dropdown)
    if not choices:
        kinds_text = " or ".join(k.__name__ for k in kinds)
        return invalid(prop, f"this dataset has no {kinds_text} field yet")
    if value not in choices:
        return invalid(prop, f"unknown field {value!r}: choose one of {choices}")
    return prop


def number(inputs, ctx, name: str, default, label: str, lo=None, hi=None, lo_open=False, hi_open=False,
            integer=False, description: str = ""):
    """A number field checked against its range, with a message that says the range."""
    make = inputs.int if integer else inputs.float
    prop = make(name, default=default, label=label, description=description, min=lo, max=hi)
    value = ctx.params.get(name, default)
    if value is None:
        return prop
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return invalid(prop, f"{label}: expected a number, got {value!r}")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if integer and value != int(value):
        bad = True
    if bad:
        span = f"{left}{'' if lo is None else lo}, {'' if hi is None else hi}{right}"
        return invalid(prop, f"{label} must be {'an integer ' if integer else ''}in {span}, got {value}")
    return prop


def json_input(inputs, ctx, name: str, label: str, description: str, kind: type, example: str):
    prop = inputs.str(name, label=label, description=description, default="")
    text = ctx.params.get(name) or ""
    if text.strip():
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return invalid(prop, f"{label}: not valid JSON ({err.msg} at character {err.pos}); e.g. {example}")
        if not isinstance(value, kind):
            return invalid(prop, f"{label}: expected a JSON {kind.__name__}, e.g. {example}")
    return prop


def progress_reporter(ctx) -> ProgressFn:
    """A ``(done, total, message)`` callback for the library, forwarded to ``ctx.set_progress`` (≤ 2/s)."""
    last = [0.0]

    def report(done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        ctx.set_progress(progress=done / total if total else None, label=message)

    return report


def reload(ctx) -> None:
    if not ctx.delegated:
        ctx.ops.reload_dataset()


def execution_options(delegated_by_default: bool):
    return dict(allow_immediate_execution=True, allow_delegated_execution=True,
                default_choice_to_delegated=delegated_by_default)


# ---- the generate form ---------------------------------------------------------------------------
def generate_config(params: dict, dataset: fo.Dataset | None):
    """The :class:`diffugen.config.DiffuGenConfig` of the form (a config file, or the small form)."""
    from ..config import load_config, parse_config

    name = (params.get("dataset_name") or (dataset.name if dataset is not None else "")).strip()
    problem = dataset_name_problem(name) if params.get("dataset_name") else None
    if problem:
        raise DiffuGenError(f"dataset_name: {problem}")
    if params.get("config_path"):
        cfg = load_config(params["config_path"])
        return cfg.model_copy(update={"dataset_name": name}) if params.get("dataset_name") else cfg
    raw = {
        "dataset_name": name,
        "model": params.get("model") or "builtin:tiny",
        "templates": [t.strip() for t in (params.get("templates") or "").splitlines() if t.strip()],
        "attributes": json.loads(params.get("attributes") or "{}"),
        "class_words": [w.strip() for w in (params.get("class_words") or "").split(",") if w.strip()],
    }
    for key in ("width", "height", "steps"):  # empty: the model's own (ModelFamily.call_defaults)
        if params.get(key) is not None:
            raw[key] = params[key]
    if params.get("image_count"):
        raw["image_count"] = params["image_count"]
    seeds = (params.get("seeds") or "").strip()
    if seeds:
        raw["seeds"] = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    root = params.get("output_root") or dataset_output_root(dataset)
    if root:
        raw["output_root"] = root
    return parse_config(raw, source="generate form")


def dataset_output_root(dataset) -> str | None:
    if dataset is None:
        return None
    return (dataset.info.get("diffugen_config") or {}).get("output_root")


def generate_inputs(ctx, inputs) -> None:
    params = ctx.params
    inputs.str("config_path", label="Config file", description="a .json/.yaml config; the form below is ignored when given")
    inputs.str("dataset_name", label="Dataset", default=ctx.dataset.name if ctx.dataset is not None else "",
               description="the dataset to generate into (default: the current one)")
    if not params.get("config_path"):
        inputs.str("model", label="Model", default="builtin:tiny", description="hub id, local folder or .safetensors file")
        inputs.str("templates", label="Prompt templates", description="one per line, e.g. a {view} view of a {object}",
                   view=types.TextFieldView(multiline=True))
        json_input(inputs, ctx, "attributes", "Attributes", "JSON: attribute name → list of values",
                   dict, '{"view": ["front", "rear"], "object": ["car", "bus"]}')
        inputs.str("class_words", label="Class words", description="comma-separated words to label, e.g. car, bus")
        number(inputs, ctx, "image_count", None, "Image count", lo=1, integer=True,
               description="a deterministic subset of all prompt × seed combinations (empty: all)")
        for key, label in (("width", "Width"), ("height", "Height")):
            number(inputs, ctx, key, None, label, lo=MIN_SIDE, hi=MAX_SIDE, integer=True,
                   description="empty: the model's own (SD 1.5: 512, SDXL/SD3/FLUX: 1024)")
        number(inputs, ctx, "steps", None, "Steps", lo=MIN_STEPS, hi=MAX_STEPS, integer=True,
               description="empty: the model's own (SD: 50, SD3/FLUX: 28)")
        seeds = inputs.str("seeds", label="Seeds", description="comma-separated integers, e.g. 0, 1, 2")
        try:
            [int(s) for s in (params.get("seeds") or "").replace(" ", "").split(",") if s]
        except ValueError:
            invalid(seeds, f"Seeds: expected comma-separated integers, got {params.get('seeds')!r}")
        inputs.str("output_root", label="Output folder", default=dataset_output_root(ctx.dataset) or "",
                   description="images, heatmaps and masks go under <output folder>/<dataset>/")
    if any(p.invalid for p in inputs.properties.values()):
        return
    try:
        cfg = generate_config(params, ctx.dataset)
    except (DiffuGenError, ValueError) as err:
        if params.get("config_path"):
            invalid(inputs.properties["config_path"], str(err))
            return
        # "  width: Input should be a multiple of 8 (got 100)" → on the width field
        marked = False
        for line in str(err).splitlines():
            key = line.strip().split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            if line.startswith("  ") and key in inputs.properties:
                invalid(inputs.properties[key], f"{line.strip()}")
                marked = True
        if not marked:
            error(inputs, "config_error", str(err))
        return
    size = f"{cfg.width}x{cfg.height}" if cfg.width and cfg.height else "the model's size"
    steps = f"{cfg.steps} steps" if cfg.steps else "the model's steps"
    inputs.view("plan", types.Notice(label=f"generates into {cfg.dataset_name!r}: tasks {cfg.tasks()}, "
                                           f"model {cfg.model}, {size}, {steps}"))
