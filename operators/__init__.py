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

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffugen.common import DEFAULT_SPLIT, REVIEW_MIN_SCORE, YOLO_START_MODEL
from diffugen.plugin import forms
from diffugen.store.dataset import LABEL_LISTS

PLUGIN = "@diffugen/diffugen"
DETECTIONS = (fo.Detections,)


class Generate(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="generate", label="DiffuGen: generate images", dynamic=True,
                                  description="generate and DAAM-label images from prompt templates",
                                  **forms.execution_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        forms.generate_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Generate images"))

    def execute(self, ctx):
        from diffugen.generation.runner import generate

        cfg = forms.generate_config(ctx.params, ctx.dataset)
        summary = generate(cfg, progress=forms.progress_reporter(ctx))
        if not ctx.delegated:
            if ctx.dataset is not None and cfg.dataset_name == ctx.dataset.name:
                ctx.ops.reload_dataset()
            else:
                ctx.ops.open_dataset(cfg.dataset_name)
        return {"dataset": cfg.dataset_name, "summary": str(summary),
                "made": sum(t.made for t in summary.tasks)}


class GenerateShard(forms.CallableOperator):
    """One shard queued by ``diffugen generate CONFIG --shards N``; unlisted (workers run it)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="generate_shard", label="DiffuGen: generate one shard", unlisted=True,
                                  **forms.execution_options(True))

    def execute(self, ctx):
        from diffugen.generation.shards import run_shard

        summary = run_shard(ctx.params, progress=forms.progress_reporter(ctx))
        return {"dataset": summary.dataset, "summary": str(summary), "made": sum(t.made for t in summary.tasks)}


# ---- label_daam ----------------------------------------------------------------------------------
def _label_params(params: dict):
    from diffugen.labels.daam import LabelParams

    threshold = "otsu" if params.get("threshold_mode", "otsu") == "otsu" else params.get("threshold", 0.5)
    return LabelParams(threshold=threshold, **{k: params.get(k, _label_default(k)) for k in _FORM_LABEL_PARAMS})


_FORM_LABEL_PARAMS = ("erode", "dilate", "min_area", "max_area", "snap", "grow")  # the form's numbers besides the threshold


def _label_default(name: str) -> float:
    from diffugen.labels.daam import LabelParams

    return LabelParams.model_fields[name].default


def _label_daam_inputs(ctx, inputs) -> None:
    if not forms.target_input(ctx, inputs):
        return
    if "word_heatmaps" not in ctx.dataset.get_field_schema():
        forms.error(inputs, "no_heatmaps", f"{ctx.dataset.name!r} has no 'word_heatmaps' field: it was not made by diffugen generate")
        return
    mode = types.RadioGroup()
    mode.add_choice("otsu", label="Otsu (automatic)")
    mode.add_choice("fixed", label="fixed threshold")
    inputs.enum("threshold_mode", mode.values(), default="otsu", label="Threshold", view=mode)
    if ctx.params.get("threshold_mode", "otsu") == "fixed":
        forms.number(inputs, ctx, "threshold", 0.5, "Threshold", lo=0, hi=1, lo_open=True, hi_open=True,
                description="on the min-max normalised heatmap; foreground is value > threshold")
    forms.number(inputs, ctx, "erode", _label_default("erode"), "Erosion", lo=0, hi=1, hi_open=True, description="kernel, fraction of min(W, H)")
    forms.number(inputs, ctx, "dilate", _label_default("dilate"), "Dilation", lo=0, hi=1, hi_open=True, description="kernel, fraction of min(W, H)")
    forms.number(inputs, ctx, "min_area", _label_default("min_area"), "Minimum area", lo=0, hi=1, hi_open=True,
            description="drop instances smaller than this fraction of the image")
    forms.number(inputs, ctx, "max_area", _label_default("max_area"), "Maximum area", lo=0, hi=1, lo_open=True,
            description="drop instances larger than this fraction of the image (the background); 1: keep all")
    forms.number(inputs, ctx, "snap", _label_default("snap"), "Snap to the image", lo=0, hi=1, hi_open=True,
            description="cut each label to the image's edges: guided-filter radius, fraction of min(W, H); 0: off")
    forms.number(inputs, ctx, "grow", _label_default("grow"), "Grow over the object's colour", lo=0,
            description="then grow each label over the connected pixels within this colour difference (CIE76 ΔE); 0: off")
    inputs.bool("preview", default=False, label="Preview only",
                description="count the labels before/after without writing anything")
    if any(p.invalid for p in inputs.properties.values()):
        return
    if ctx.params.get("preview"):
        from diffugen.labels.relabel import preview_relabel

        p = preview_relabel(forms.target(ctx), _label_params(ctx.params), limit=20)
        inputs.view("preview_counts", types.Notice(
            label=f"preview of {p.samples} samples: {p.labels_before} labels now → {p.labels_after} with these settings"))


class LabelDaam(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="label_daam", label="DiffuGen: relabel from DAAM heatmaps", dynamic=True,
                                  description="recompute the DAAM labels of the view or the selected samples",
                                  **forms.execution_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _label_daam_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Relabel from DAAM heatmaps"))

    def execute(self, ctx):
        from diffugen.labels.relabel import preview_relabel, relabel

        params = _label_params(ctx.params)
        if ctx.params.get("preview", False):
            return preview_relabel(forms.target(ctx), params).to_dict()
        n = relabel(forms.target(ctx), params, progress=forms.progress_reporter(ctx))
        forms.reload(ctx)
        return {"relabeled": n, "params": params.model_dump(mode="json")}


# ---- supervised labels, comparison, training (the lead's library functions) ----------------------
class LabelYolo(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="label_yolo", label="DiffuGen: label with a YOLO model", dynamic=True,
                                  description="instance-segment the view with YOLO weights (yolo_* fields)",
                                  **forms.execution_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if forms.target_input(ctx, inputs):
            from diffugen.errors import DiffuGenError
            from diffugen.labels.yolo import check_weights

            weights = inputs.str("weights", required=True, label="Weights", description="a YOLO-seg .pt file")
            if ctx.params.get("weights"):
                try:
                    check_weights(ctx.params["weights"])
                except DiffuGenError as err:
                    forms.invalid(weights, str(err))
            forms.json_input(inputs, ctx, "class_map", "Class map", "JSON: dataset class → model class",
                             dict, '{"pickup": "truck"}')
            forms.number(inputs, ctx, "conf", 0.25, "Confidence threshold", lo=0, hi=1)
            forms.number(inputs, ctx, "imgsz", 640, "Image size", lo=32, hi=4096, integer=True)
            forms.number(inputs, ctx, "batch_size", 8, "Batch size", lo=1, hi=1024, integer=True)
            inputs.str("device", default="cpu", label="Device", description="cpu, cuda:0, ...")
            inputs.bool("trust_weights", default=False, label="Trust the weights file",
                        description="load it even if ultralytics' safe load refuses it (a .pt is a pickle: it can run code)")
        return types.Property(inputs, view=types.View(label="Label with YOLO"))

    def execute(self, ctx):
        from diffugen.labels.yolo import label_yolo

        p = ctx.params
        result = label_yolo(forms.target(ctx), weights=p["weights"], class_map=json.loads(p.get("class_map") or "{}"),
                            conf=p.get("conf", 0.25), imgsz=p.get("imgsz", 640), batch_size=p.get("batch_size", 8),
                            device=p.get("device", "cpu"), progress=forms.progress_reporter(ctx),
                            trust_weights=p.get("trust_weights", False))
        forms.reload(ctx)
        return {"result": _jsonable(result)}


class CompareLabels(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="compare_labels", label="DiffuGen: compare DAAM and YOLO labels",
                                  dynamic=True, description="match DAAM and YOLO labels (IoU), per-sample agreement",
                                  **forms.execution_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if forms.target_input(ctx, inputs):
            forms.number(inputs, ctx, "iou_threshold", 0.5, "IoU threshold", lo=0, hi=1, lo_open=True)
        return types.Property(inputs, view=types.View(label="Compare labels"))

    def execute(self, ctx):
        from diffugen.labels.compare import compare_labels

        result = compare_labels(forms.target(ctx), iou_threshold=ctx.params.get("iou_threshold", 0.5),
                                progress=forms.progress_reporter(ctx))
        forms.reload(ctx)
        return {"result": _jsonable(result)}


class TrainYolo(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="train_yolo", label="DiffuGen: train a YOLO model", dynamic=True,
                                  description="train YOLO-seg on the curated (or DAAM) labels of the view",
                                  **forms.execution_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if forms.target_input(ctx, inputs):
            _train_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Train YOLO"))

    def execute(self, ctx):
        from diffugen.curation.bootstrap import train_yolo

        p = ctx.params
        weights = train_yolo(forms.target(ctx), epochs=p.get("epochs", 30), imgsz=p.get("imgsz"),
                             model=p.get("model") or YOLO_START_MODEL, min_score=p.get("min_score"),
                             field=p.get("field") or _default_train_field(ctx.dataset), progress=forms.progress_reporter(ctx))
        return {"weights": str(weights)}


def _default_train_field(dataset) -> str:
    from diffugen.curation.export import default_label_field

    return default_label_field(dataset, fallback="daam_polygons")


def _train_inputs(ctx, inputs) -> None:
    from diffugen.curation.bootstrap import check_start_model
    from diffugen.errors import DiffuGenError

    forms.field_input(ctx, inputs, "field", LABEL_LISTS, _default_train_field(ctx.dataset), "Labels",
                      description="curated: what the review approved (after apply_review)")
    forms.number(inputs, ctx, "epochs", 30, "Epochs", lo=1, hi=10000, integer=True)
    forms.number(inputs, ctx, "imgsz", None, "Image size", lo=32, hi=4096, integer=True,
                 description="empty: the images' size, rounded to a multiple of 32")
    model = inputs.str("model", default=YOLO_START_MODEL, label="Model",
                       description="a YOLO-seg .yaml (from scratch) or .pt file (fine-tune)")
    try:
        check_start_model(ctx.params.get("model") or YOLO_START_MODEL)
    except DiffuGenError as err:
        forms.invalid(model, str(err))
    forms.number(inputs, ctx, "min_score", None, "Minimum label score", lo=0, hi=1,
                 description="train only on labels scored at least this (empty: all)")


def _jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


# ---- review and curation -------------------------------------------------------------------------
class Review(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="review", label="DiffuGen: build the review queue", dynamic=True,
                                  description="tag low-score or unmatched labels needs_review; saved view 'review queue'",
                                  **forms.execution_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if forms.target_input(ctx, inputs):
            forms.field_input(ctx, inputs, "field", LABEL_LISTS, "daam_detections", "Label field")
            forms.number(inputs, ctx, "min_score", REVIEW_MIN_SCORE, "Score threshold", lo=0, hi=1,
                    description="labels scored below it need review")
            inputs.bool("include_unmatched", default=True, label="Include unmatched",
                        description="also labels that compare_labels found no match for (matched = False)")
        return types.Property(inputs, view=types.View(label="Build the review queue"))

    def execute(self, ctx):
        from diffugen.curation.review import REVIEW_VIEW, build_review_queue

        p = ctx.params
        n = build_review_queue(forms.target(ctx), field=p.get("field", "daam_detections"), min_score=p.get("min_score", REVIEW_MIN_SCORE),
                               include_unmatched=p.get("include_unmatched", True))
        forms.reload(ctx)
        return {"queued": n, "view": REVIEW_VIEW}


class ApplyReview(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_review", label="DiffuGen: apply the review (curated labels)",
                                  dynamic=True, description="write 'curated' from approved/rejected tags and scores, "
                                                            "or take another source's labels for the selected samples",
                                  **forms.execution_options(False))

    def resolve_input(self, ctx):
        inputs = types.Object()
        if forms.target_input(ctx, inputs):
            mode = types.RadioGroup()
            mode.add_choice("apply", label="apply the review decisions")
            mode.add_choice("take", label="take another field's labels instead (e.g. YOLO for these samples)")
            inputs.enum("mode", mode.values(), default="apply", label="Action", view=mode)
            if ctx.params.get("mode", "apply") == "take":
                forms.field_input(ctx, inputs, "take_field", DETECTIONS, "yolo_detections", "Take labels from")
            else:
                forms.field_input(ctx, inputs, "field", DETECTIONS, "daam_detections", "Source field",
                             description="samples without a per-sample choice take their labels from it")
            forms.number(inputs, ctx, "min_score", REVIEW_MIN_SCORE, "Score threshold", lo=0, hi=1,
                    description="unreviewed labels below it are left out")
            inputs.str("reviewer", label="Reviewer", description="recorded in dataset.info['diffugen_reviews']")
        return types.Property(inputs, view=types.View(label="Apply the review"))

    def execute(self, ctx):
        from diffugen.curation.review import apply_review, take_labels

        p = ctx.params
        if p.get("mode", "apply") == "take":
            summary = take_labels(forms.target(ctx), p.get("take_field", "yolo_detections"), min_score=p.get("min_score", REVIEW_MIN_SCORE),
                                  reviewer=p.get("reviewer") or None, progress=forms.progress_reporter(ctx))
        else:
            summary = apply_review(forms.target(ctx), field=p.get("field", "daam_detections"), min_score=p.get("min_score", REVIEW_MIN_SCORE),
                                   reviewer=p.get("reviewer") or None, progress=forms.progress_reporter(ctx))
        forms.reload(ctx)
        return summary.to_dict()


# ---- export --------------------------------------------------------------------------------------
def _export_inputs(ctx, inputs) -> None:
    from diffugen.curation.export import (
        FIELD_TYPES, FORMATS, check_out_dir, default_export_root, default_label_field, parse_split,
    )
    from diffugen.errors import DiffuGenError

    if not forms.target_input(ctx, inputs):
        return
    fmt = types.RadioGroup()
    for f in FORMATS:
        fmt.add_choice(f, label={"yolo": "YOLO (segmentation)", "coco": "COCO (polygons)", "masks": "mask images"}[f])
    inputs.enum("format", fmt.values(), default="yolo", label="Format", view=fmt)
    kinds = FIELD_TYPES.get(ctx.params.get("format", "yolo"), LABEL_LISTS)
    forms.field_input(ctx, inputs, "field", kinds, default_label_field(ctx.dataset), "Label field",
                      description="default: curated once the review was applied, else the DAAM labels")
    root = default_export_root(ctx.dataset)
    out = inputs.str("out_dir", required=True, label="Export folder",
                     description=f"inside the export root {root} (a relative path is taken relative to it)")
    split = inputs.str("split", default=DEFAULT_SPLIT, label="Split", description="name=fraction pairs")
    forms.number(inputs, ctx, "seed", 0, "Seed", integer=True)
    inputs.bool("overwrite", default=False, label="Overwrite", description="replace an existing export folder")
    try:
        parse_split(ctx.params.get("split", DEFAULT_SPLIT))
    except DiffuGenError as err:
        forms.invalid(split, str(err))
    if root is None:
        forms.invalid(out, "no export root: set DIFFUGEN_EXPORT_ROOT (or generate the dataset with an absolute output_root)")
    elif ctx.params.get("out_dir"):
        try:
            check_out_dir(ctx.params["out_dir"], ctx.params.get("overwrite", False), root)
        except DiffuGenError as err:
            forms.invalid(out, str(err))


class Export(forms.CallableOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export", label="DiffuGen: export for training", dynamic=True,
                                  description="YOLO, COCO or mask-image export with a train/val split",
                                  **forms.execution_options(True))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _export_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Export"))

    def execute(self, ctx):
        from diffugen.curation.export import default_export_root, default_label_field, export_dataset

        p = ctx.params
        summary = export_dataset(forms.target(ctx), p["out_dir"], format=p.get("format", "yolo"),
                                 field=p.get("field") or default_label_field(ctx.dataset), split=p.get("split", DEFAULT_SPLIT),
                                 seed=p.get("seed", 0), overwrite=p.get("overwrite", False),
                                 allowed_root=default_export_root(ctx.dataset), progress=forms.progress_reporter(ctx))
        forms.reload(ctx)  # the split tags
        return summary.to_dict()


OPERATORS = (Generate, GenerateShard, LabelDaam, LabelYolo, CompareLabels, TrainYolo, Review, ApplyReview, Export)


def _sibling(name: str):
    # FiftyOne loads this file as a plain module (not a package): a relative import of operators/NAME.py
    # would fail, so it is loaded by its path, as a submodule of this one.
    import importlib.util
    import sys
    from pathlib import Path

    module_name = f"{__name__}.{name}"
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def register(p):
    for op in OPERATORS:
        p.register(op)
    p.register(_sibling("panel").ReviewPanel)  # the review queue, one label at a time
