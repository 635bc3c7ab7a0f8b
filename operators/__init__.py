"""FiftyOne operators of the DiffuGen plugin (``@diffugen/diffugen``): thin forms over the library.

Each operator validates its form in ``resolve_input`` (a bad value is shown on its field, nothing
is raised), then ``execute`` reads ``ctx.params`` and makes one ``diffugen`` call, reporting
progress through ``ctx.set_progress``. Long operations (generate, label_yolo, compare_labels,
train_yolo, export) default to delegated execution (``fiftyone delegated launch`` runs them).

From Python, run one with :func:`fiftyone.operators.execute_operator`, or call it::

    import fiftyone.operators as foo
    review = foo.get_operator("@diffugen/diffugen/review")
    review(dataset, field="daam_detections", min_score=0.4)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

PLUGIN = "@diffugen/diffugen"
DETECTIONS = (fo.Detections,)
LABEL_LISTS = (fo.Detections, fo.Polylines)


# ---- shared helpers ------------------------------------------------------------------------------
class _Operator(foo.Operator):
    """Adds a Python call: ``op(collection, delegate=False, **params)`` → ``ExecutionResult``."""

    def __call__(self, collection, delegate: bool = False, selected=None, **params):
        view = collection.view() if isinstance(collection, fo.Dataset) else collection
        return foo.execute_operator(self.uri, ctx={"view": view, "params": params, "selected": selected or []},
                                    request_delegation=delegate)


def _invalid(prop, message: str):
    prop.invalid = True
    prop.error_message = message
    return prop


def _error(inputs, name: str, message: str):
    """An error line in the form that also blocks execution."""
    return _invalid(inputs.view(name, types.Error(label=message)), message)


def _target(ctx):
    """The selected samples when there are some and the form says so, else the current view."""
    if ctx.selected and ctx.params.get("target", "selected") == "selected":
        return ctx.view.select(ctx.selected)
    return ctx.view


def _target_input(ctx, inputs) -> bool:
    """Add the target choice; ``False`` (and an error in the form) when there is nothing to work on."""
    if ctx.dataset is None:
        _error(inputs, "no_dataset", "open a dataset first")
        return False
    if ctx.selected:
        choices = types.RadioGroup()
        choices.add_choice("selected", label=f"the {len(ctx.selected)} selected samples")
        choices.add_choice("view", label="the current view")
        inputs.enum("target", choices.values(), default="selected", label="Apply to", view=choices)
    if len(_target(ctx)) == 0:
        _error(inputs, "empty_view", "the current view has no samples: change the filters or the selection")
        return False
    return True


def _fields(collection, kinds) -> list[str]:
    from diffugen.review import label_fields

    return label_fields(collection, kinds)


def _field_input(ctx, inputs, name: str, kinds, default: str, label: str, description: str = ""):
    """A dropdown of the dataset's label fields of ``kinds``; an unknown or missing field is marked invalid."""
    choices = _fields(ctx.dataset, kinds)
    dropdown = types.Dropdown()
    for c in choices:
        dropdown.add_choice(c, label=c)
    # Not `required`: a Python call may leave it out and get the default (the App fills it in).
    value = ctx.params.get(name) or default
    prop = inputs.str(name, default=default if default in choices else None, label=label,
                      description=description, view=dropdown)
    if not choices:
        kinds_text = " or ".join(k.__name__ for k in kinds)
        return _invalid(prop, f"this dataset has no {kinds_text} field yet")
    if value not in choices:
        return _invalid(prop, f"unknown field {value!r}: choose one of {choices}")
    return prop


def _number(inputs, ctx, name: str, default, label: str, lo=None, hi=None, lo_open=False, hi_open=False,
            integer=False, description: str = ""):
    """A number field checked against its range, with a message that says the range."""
    make = inputs.int if integer else inputs.float
    prop = make(name, default=default, label=label, description=description, min=lo, max=hi)
    value = ctx.params.get(name, default)
    if value is None:
        return prop
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _invalid(prop, f"{label}: expected a number, got {value!r}")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if integer and value != int(value):
        bad = True
    if bad:
        span = f"{left}{'' if lo is None else lo}, {'' if hi is None else hi}{right}"
        return _invalid(prop, f"{label} must be {'an integer ' if integer else ''}in {span}, got {value}")
    return prop


def _json_input(inputs, ctx, name: str, label: str, description: str, kind: type, example: str):
    prop = inputs.str(name, label=label, description=description, default="")
    text = ctx.params.get(name) or ""
    if text.strip():
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return _invalid(prop, f"{label}: not valid JSON ({err.msg} at character {err.pos}); e.g. {example}")
        if not isinstance(value, kind):
            return _invalid(prop, f"{label}: expected a JSON {kind.__name__}, e.g. {example}")
    return prop


def _progress(ctx):
    """A ``(done, total, message)`` callback for the library, forwarded to ``ctx.set_progress`` (≤ 2/s)."""
    last = [0.0]

    def report(done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        ctx.set_progress(progress=done / total if total else None, label=message)

    return report


def _reload(ctx) -> None:
    if not ctx.delegated:
        ctx.ops.reload_dataset()


def _options(delegated_by_default: bool):
    return dict(allow_immediate_execution=True, allow_delegated_execution=True,
                default_choice_to_delegated=delegated_by_default)


# ---- generate ------------------------------------------------------------------------------------
def _generate_config(params: dict, dataset: fo.Dataset | None):
    """The :class:`diffugen.config.DiffuGenConfig` of the form (a config file, or the small form)."""
    from diffugen.config import load_config, parse_config

    name = (params.get("dataset_name") or (dataset.name if dataset is not None else "")).strip()
    if params.get("config_path"):
        cfg = load_config(params["config_path"])
        return cfg.model_copy(update={"dataset_name": name}) if params.get("dataset_name") else cfg
    raw = {
        "dataset_name": name,
        "model": params.get("model") or "builtin:tiny",
        "templates": [t.strip() for t in (params.get("templates") or "").splitlines() if t.strip()],
        "attributes": json.loads(params.get("attributes") or "{}"),
        "class_words": [w.strip() for w in (params.get("class_words") or "").split(",") if w.strip()],
        "width": params.get("width", 512),
        "height": params.get("height", 512),
        "steps": params.get("steps", 30),
    }
    if params.get("image_count"):
        raw["image_count"] = params["image_count"]
    seeds = (params.get("seeds") or "").strip()
    if seeds:
        raw["seeds"] = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    root = params.get("output_root") or _dataset_output_root(dataset)
    if root:
        raw["output_root"] = root
    return parse_config(raw, source="generate form")


def _dataset_output_root(dataset) -> str | None:
    if dataset is None:
        return None
    return (dataset.info.get("diffugen_config") or {}).get("output_root")


def _generate_inputs(ctx, inputs) -> None:
    from diffugen.errors import DiffuGenError

    params = ctx.params
    inputs.str("config_path", label="Config file", description="a .json/.yaml config; the form below is ignored when given")
    inputs.str("dataset_name", label="Dataset", default=ctx.dataset.name if ctx.dataset is not None else "",
               description="the dataset to generate into (default: the current one)")
    if not params.get("config_path"):
        inputs.str("model", label="Model", default="builtin:tiny", description="hub id, local folder or .safetensors file")
        inputs.str("templates", label="Prompt templates", description="one per line, e.g. a {view} view of a {object}",
                   view=types.TextFieldView(multiline=True))
        _json_input(inputs, ctx, "attributes", "Attributes", "JSON: attribute name → list of values",
                    dict, '{"view": ["front", "rear"], "object": ["car", "bus"]}')
        inputs.str("class_words", label="Class words", description="comma-separated words to label, e.g. car, bus")
        _number(inputs, ctx, "image_count", None, "Image count", lo=1, integer=True,
                description="a deterministic subset of all prompt × seed combinations (empty: all)")
        _number(inputs, ctx, "width", 512, "Width", lo=8, hi=4096, integer=True)
        _number(inputs, ctx, "height", 512, "Height", lo=8, hi=4096, integer=True)
        _number(inputs, ctx, "steps", 30, "Steps", lo=1, hi=1000, integer=True)
        seeds = inputs.str("seeds", label="Seeds", description="comma-separated integers, e.g. 0, 1, 2")
        try:
            [int(s) for s in (params.get("seeds") or "").replace(" ", "").split(",") if s]
        except ValueError:
            _invalid(seeds, f"Seeds: expected comma-separated integers, got {params.get('seeds')!r}")
        inputs.str("output_root", label="Output folder", default=_dataset_output_root(ctx.dataset) or "",
                   description="images, heatmaps and masks go under <output folder>/<dataset>/")
    if any(p.invalid for p in inputs.properties.values()):
        return
    try:
        cfg = _generate_config(params, ctx.dataset)
    except (DiffuGenError, ValueError) as err:
        if params.get("config_path"):
            _invalid(inputs.properties["config_path"], str(err))
            return
        # "  width: Input should be a multiple of 8 (got 100)" → on the width field
        marked = False
        for line in str(err).splitlines():
            key = line.strip().split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            if line.startswith("  ") and key in inputs.properties:
                _invalid(inputs.properties[key], f"{line.strip()}")
                marked = True
        if not marked:
            _error(inputs, "config_error", str(err))
        return
    inputs.view("plan", types.Notice(label=f"generates into {cfg.dataset_name!r}: tasks {cfg.tasks()}, "
                                           f"model {cfg.model}, {cfg.width}x{cfg.height}, {cfg.steps} steps"))


class Generate(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="generate", label="DiffuGen: generate images", dynamic=True,
                                  description="generate and DAAM-label images from prompt templates",
                                  **_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _generate_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Generate images"))

    def execute(self, ctx):
        from diffugen.generate import generate

        if "num_shards" in ctx.params:  # one shard queued by `diffugen generate CONFIG --shards N`
            from diffugen.shards import run_shard

            summary = run_shard(ctx.params, progress=_progress(ctx))
            return {"dataset": summary.dataset, "summary": str(summary), "made": sum(t.made for t in summary.tasks)}
        cfg = _generate_config(ctx.params, ctx.dataset)
        summary = generate(cfg, progress=_progress(ctx))
        if not ctx.delegated:
            if ctx.dataset is not None and cfg.dataset_name == ctx.dataset.name:
                ctx.ops.reload_dataset()
            else:
                ctx.ops.open_dataset(cfg.dataset_name)
        return {"dataset": cfg.dataset_name, "summary": str(summary),
                "made": sum(t.made for t in summary.tasks)}


# ---- label_daam ----------------------------------------------------------------------------------
def _label_params(params: dict):
    from diffugen.labels.unsupervised import LabelParams

    threshold = "otsu" if params.get("threshold_mode", "otsu") == "otsu" else params.get("threshold", 0.5)
    return LabelParams(threshold=threshold, erode=params.get("erode", 0.01), dilate=params.get("dilate", 0.02),
                       min_area=params.get("min_area", 0.001))


def _label_daam_inputs(ctx, inputs) -> None:
    if not _target_input(ctx, inputs):
        return
    if "word_heatmaps" not in ctx.dataset.get_field_schema():
        _error(inputs, "no_heatmaps", f"{ctx.dataset.name!r} has no 'word_heatmaps' field: it was not made by diffugen generate")
        return
    mode = types.RadioGroup()
    mode.add_choice("otsu", label="Otsu (automatic)")
    mode.add_choice("fixed", label="fixed threshold")
    inputs.enum("threshold_mode", mode.values(), default="otsu", label="Threshold", view=mode)
    if ctx.params.get("threshold_mode", "otsu") == "fixed":
        _number(inputs, ctx, "threshold", 0.5, "Threshold", lo=0, hi=1, lo_open=True, hi_open=True,
                description="on the min-max normalised heatmap; foreground is value > threshold")
    _number(inputs, ctx, "erode", 0.01, "Erosion", lo=0, hi=1, hi_open=True, description="kernel, fraction of min(W, H)")
    _number(inputs, ctx, "dilate", 0.02, "Dilation", lo=0, hi=1, hi_open=True, description="kernel, fraction of min(W, H)")
    _number(inputs, ctx, "min_area", 0.001, "Minimum area", lo=0, hi=1, hi_open=True,
            description="drop instances smaller than this fraction of the image")
    inputs.bool("preview", default=False, label="Preview only",
                description="count the labels before/after without writing anything")
    if any(p.invalid for p in inputs.properties.values()):
        return
    if ctx.params.get("preview"):
        from diffugen.review import preview_relabel

        p = preview_relabel(_target(ctx), _label_params(ctx.params), limit=20)
        inputs.view("preview_counts", types.Notice(
            label=f"preview of {p.samples} samples: {p.labels_before} labels now → {p.labels_after} with these settings"))


class LabelDaam(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="label_daam", label="DiffuGen: relabel from DAAM heatmaps", dynamic=True,
                                  description="recompute the DAAM labels of the view or the selected samples",
                                  **_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _label_daam_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Relabel from DAAM heatmaps"))

    def execute(self, ctx):
        from diffugen.relabel import relabel
        from diffugen.review import preview_relabel

        params = _label_params(ctx.params)
        if ctx.params.get("preview", False):
            return preview_relabel(_target(ctx), params).to_dict()
        n = relabel(_target(ctx), params, progress=_progress(ctx))
        _reload(ctx)
        return {"relabeled": n, "params": params.model_dump(mode="json")}


# ---- supervised labels, comparison, training (the lead's library functions) ----------------------
class LabelYolo(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="label_yolo", label="DiffuGen: label with a YOLO model", dynamic=True,
                                  description="instance-segment the view with YOLO weights (yolo_* fields)",
                                  **_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _target_input(ctx, inputs):
            from diffugen.errors import DiffuGenError
            from diffugen.labels.supervised import check_weights

            weights = inputs.str("weights", required=True, label="Weights", description="a YOLO-seg .pt file")
            if ctx.params.get("weights"):
                try:
                    check_weights(ctx.params["weights"])
                except DiffuGenError as err:
                    _invalid(weights, str(err))
            _json_input(inputs, ctx, "class_map", "Class map", "JSON: model class → dataset class",
                        dict, '{"truck": "car"}')
            _number(inputs, ctx, "conf", 0.25, "Confidence threshold", lo=0, hi=1)
            _number(inputs, ctx, "imgsz", 640, "Image size", lo=32, hi=4096, integer=True)
            _number(inputs, ctx, "batch_size", 8, "Batch size", lo=1, hi=1024, integer=True)
            inputs.str("device", default="cpu", label="Device", description="cpu, cuda:0, ...")
        return types.Property(inputs, view=types.View(label="Label with YOLO"))

    def execute(self, ctx):
        from diffugen.labels.supervised import label_yolo

        p = ctx.params
        result = label_yolo(_target(ctx), weights=p["weights"], class_map=json.loads(p.get("class_map") or "{}"),
                            conf=p.get("conf", 0.25), imgsz=p.get("imgsz", 640), batch_size=p.get("batch_size", 8),
                            device=p.get("device", "cpu"), progress=_progress(ctx))
        _reload(ctx)
        return {"result": _jsonable(result)}


class CompareLabels(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="compare_labels", label="DiffuGen: compare DAAM and YOLO labels",
                                  dynamic=True, description="match DAAM and YOLO labels (IoU), per-sample agreement",
                                  **_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _target_input(ctx, inputs):
            _number(inputs, ctx, "iou_threshold", 0.5, "IoU threshold", lo=0, hi=1, lo_open=True)
        return types.Property(inputs, view=types.View(label="Compare labels"))

    def execute(self, ctx):
        from diffugen.compare import compare_labels

        result = compare_labels(_target(ctx), iou_threshold=ctx.params.get("iou_threshold", 0.5),
                                progress=_progress(ctx))
        _reload(ctx)
        return {"result": _jsonable(result)}


class TrainYolo(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="train_yolo", label="DiffuGen: train a YOLO model", dynamic=True,
                                  description="train YOLO-seg on the curated labels of the view", **_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _target_input(ctx, inputs):
            _number(inputs, ctx, "epochs", 30, "Epochs", lo=1, hi=10000, integer=True)
            _number(inputs, ctx, "imgsz", None, "Image size", lo=32, hi=4096, integer=True,
                    description="empty: the images' size, rounded to a multiple of 32")
            model = inputs.str("model", default="yolov8n-seg.yaml", label="Model",
                               description="a YOLO-seg .yaml (from scratch) or .pt file (fine-tune)")
            name = ctx.params.get("model") or "yolov8n-seg.yaml"
            if not name.endswith((".pt", ".yaml", ".yml")):
                _invalid(model, f"Model must be a YOLO-seg .yaml or .pt file, got {name!r}")
            elif name.endswith(".pt") and not Path(name).expanduser().is_file():
                _invalid(model, f"starting weights not found: {name} (nothing is downloaded)")
            _number(inputs, ctx, "min_score", None, "Minimum label score", lo=0, hi=1,
                    description="train only on DAAM labels scored at least this (empty: all)")
        return types.Property(inputs, view=types.View(label="Train YOLO"))

    def execute(self, ctx):
        from diffugen.train import train_yolo

        p = ctx.params
        weights = train_yolo(_target(ctx), epochs=p.get("epochs", 30), imgsz=p.get("imgsz"),
                             model=p.get("model") or "yolov8n-seg.yaml", min_score=p.get("min_score"),
                             progress=_progress(ctx))
        return {"weights": str(weights)}


def _jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


# ---- review and curation -------------------------------------------------------------------------
class Review(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="review", label="DiffuGen: build the review queue", dynamic=True,
                                  description="tag low-score or unmatched labels needs_review; saved view 'review queue'",
                                  **_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _target_input(ctx, inputs):
            _field_input(ctx, inputs, "field", LABEL_LISTS, "daam_detections", "Label field")
            _number(inputs, ctx, "min_score", 0.5, "Score threshold", lo=0, hi=1,
                    description="labels scored below it need review")
            inputs.bool("include_unmatched", default=True, label="Include unmatched",
                        description="also labels that compare_labels found no match for (matched = False)")
        return types.Property(inputs, view=types.View(label="Build the review queue"))

    def execute(self, ctx):
        from diffugen.review import REVIEW_VIEW, build_review_queue

        p = ctx.params
        n = build_review_queue(_target(ctx), field=p.get("field", "daam_detections"), min_score=p.get("min_score", 0.5),
                               include_unmatched=p.get("include_unmatched", True))
        _reload(ctx)
        return {"queued": n, "view": REVIEW_VIEW}


class ApplyReview(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_review", label="DiffuGen: apply the review (curated labels)",
                                  dynamic=True, description="write 'curated' from approved/rejected tags and scores, "
                                                            "or take another source's labels for the selected samples",
                                  **_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _target_input(ctx, inputs):
            mode = types.RadioGroup()
            mode.add_choice("apply", label="apply the review decisions")
            mode.add_choice("take", label="take another field's labels instead (e.g. YOLO for these samples)")
            inputs.enum("mode", mode.values(), default="apply", label="Action", view=mode)
            if ctx.params.get("mode", "apply") == "take":
                _field_input(ctx, inputs, "take_field", DETECTIONS, "yolo_detections", "Take labels from")
            else:
                _field_input(ctx, inputs, "field", DETECTIONS, "daam_detections", "Source field",
                             description="samples without a per-sample choice take their labels from it")
            _number(inputs, ctx, "min_score", 0.5, "Score threshold", lo=0, hi=1,
                    description="unreviewed labels below it are left out")
            inputs.str("reviewer", label="Reviewer", description="recorded in dataset.info['diffugen_reviews']")
        return types.Property(inputs, view=types.View(label="Apply the review"))

    def execute(self, ctx):
        from diffugen.review import apply_review, take_labels

        p = ctx.params
        if p.get("mode", "apply") == "take":
            summary = take_labels(_target(ctx), p.get("take_field", "yolo_detections"), min_score=p.get("min_score", 0.5),
                                  reviewer=p.get("reviewer") or None, progress=_progress(ctx))
        else:
            summary = apply_review(_target(ctx), field=p.get("field", "daam_detections"), min_score=p.get("min_score", 0.5),
                                   reviewer=p.get("reviewer") or None, progress=_progress(ctx))
        _reload(ctx)
        return summary.to_dict()


# ---- export --------------------------------------------------------------------------------------
def _export_inputs(ctx, inputs) -> None:
    from diffugen.errors import DiffuGenError
    from diffugen.export import FIELD_TYPES, FORMATS, check_out_dir, default_export_root, parse_split

    if not _target_input(ctx, inputs):
        return
    fmt = types.RadioGroup()
    for f in FORMATS:
        fmt.add_choice(f, label={"yolo": "YOLO (segmentation)", "coco": "COCO (polygons)", "masks": "mask images"}[f])
    inputs.enum("format", fmt.values(), default="yolo", label="Format", view=fmt)
    kinds = FIELD_TYPES.get(ctx.params.get("format", "yolo"), LABEL_LISTS)
    _field_input(ctx, inputs, "field", kinds, "curated", "Label field")
    root = default_export_root(ctx.dataset)
    out = inputs.str("out_dir", required=True, label="Export folder",
                     description=f"inside the export root {root} (a relative path is taken relative to it)")
    split = inputs.str("split", default="train=0.8,val=0.2", label="Split", description="name=fraction pairs")
    _number(inputs, ctx, "seed", 0, "Seed", integer=True)
    inputs.bool("overwrite", default=False, label="Overwrite", description="replace an existing export folder")
    try:
        parse_split(ctx.params.get("split", "train=0.8,val=0.2"))
    except DiffuGenError as err:
        _invalid(split, str(err))
    if root is None:
        _invalid(out, "no export root: set DIFFUGEN_EXPORT_ROOT (or generate the dataset with an absolute output_root)")
    elif ctx.params.get("out_dir"):
        try:
            check_out_dir(ctx.params["out_dir"], ctx.params.get("overwrite", False), root)
        except DiffuGenError as err:
            _invalid(out, str(err))


class Export(_Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export", label="DiffuGen: export for training", dynamic=True,
                                  description="YOLO, COCO or mask-image export with a train/val split",
                                  **_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _export_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Export"))

    def execute(self, ctx):
        from diffugen.export import default_export_root, export_dataset

        p = ctx.params
        summary = export_dataset(_target(ctx), p["out_dir"], format=p.get("format", "yolo"),
                                 field=p.get("field", "curated"), split=p.get("split", "train=0.8,val=0.2"),
                                 seed=p.get("seed", 0), overwrite=p.get("overwrite", False),
                                 allowed_root=default_export_root(ctx.dataset), progress=_progress(ctx))
        _reload(ctx)  # the split tags
        return summary.to_dict()


OPERATORS = (Generate, LabelDaam, LabelYolo, CompareLabels, TrainYolo, Review, ApplyReview, Export)


def register(p):
    for op in OPERATORS:
        p.register(op)
