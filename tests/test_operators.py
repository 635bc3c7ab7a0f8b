"""The FiftyOne plugin: discovery, each operator run for real (immediate and delegated), bad input."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from conftest import small_config
from fiftyone import ViewField as F
from fiftyone.operators.executor import ExecutionError, ExecutionRunState

from diffugen.plugin.install import install_plugin

PLUGIN = "@diffugen/diffugen"
MINE = ["generate", "label_daam", "review", "apply_review", "export"]
ALL = MINE + ["label_yolo", "compare_labels", "train_yolo"]


def run(name, collection, delegate=False, selected=None, **params):
    view = collection.view() if isinstance(collection, fo.Dataset) else collection
    return foo.execute_operator(f"{PLUGIN}/{name}", ctx={"view": view, "params": params, "selected": selected or []},
                                request_delegation=delegate)


def label_state(ds, field="daam_detections"):
    return sorted(ds.values(f"{field}.detections.id", unwind=True))


def test_plugin_is_discovered_with_all_operators(plugins_dir, tmp_path):
    uris = {op.uri for op in foo.list_operators()}
    assert {f"{PLUGIN}/{n}" for n in ALL} <= uris
    from fiftyone.plugins.context import build_plugin_contexts

    ours = [c for c in build_plugin_contexts() if c.name == PLUGIN]
    assert len(ours) == 1 and not ours[0].errors
    # a copy (no symlink) is a complete plugin too
    copied = install_plugin(tmp_path / "copy", link=False)
    assert (copied / "fiftyone.yml").is_file() and (copied / "operators" / "__init__.py").is_file()
    from diffugen.errors import DiffuGenError

    with pytest.raises(DiffuGenError, match="already exists"):
        install_plugin(tmp_path / "copy", link=False)
    opts = foo.get_operator(f"{PLUGIN}/export").config
    assert opts.allow_delegated_execution and opts.default_choice_to_delegated and opts.allow_immediate_execution
    assert not foo.get_operator(f"{PLUGIN}/review").config.default_choice_to_delegated


def test_generate_operator_from_config_file_and_form(plugins_dir, base, tmp_path):
    name = f"gen-{uuid.uuid4().hex[:8]}"
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(small_config(name, tmp_path / "out", seeds=[11],
                                                attributes={"view": ["rear", "front"], "object": ["car"], "time": ["noon"]})))
    try:
        res = run("generate", base, config_path=str(cfg_path), dataset_name=name)
        assert res.result["made"] == 2 and len(fo.load_dataset(name)) == 2
        # the small form, into the same dataset: 1 more image, labels and heatmaps included
        res = run("generate", base, dataset_name=name, templates="a photo of a {object}\n", attributes='{"object": ["car"]}',
                  class_words="car", width=64, height=64, steps=2, seeds="5", output_root=str(tmp_path / "out"))
        ds = fo.load_dataset(name)
        assert res.result["made"] == 1 and len(ds) == 3
        made = ds.match(F("prompt") == "a photo of a car").first()
        assert made.seed == 5 and made.metadata.width == 64 and made.word_heatmaps
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    # bad form input: the field says why, nothing is made
    with pytest.raises(ExecutionError, match=r"Path: attributes.*not valid JSON"):
        run("generate", base, dataset_name=name, templates="a {object}", attributes='{"object": ["car"]', class_words="car")
    with pytest.raises(ExecutionError, match=r"Path: width.*multiple of 8"):
        run("generate", base, dataset_name=name, templates="a {object}", attributes='{"object": ["car"]}',
            class_words="car", width=100)
    with pytest.raises(ExecutionError, match=r"Path: config_path.*not found"):
        run("generate", base, config_path=str(tmp_path / "missing.json"), dataset_name=name)
    assert not fo.dataset_exists(name)


def test_label_daam_preview_writes_nothing_then_selected_samples_are_relabeled(plugins_dir, ds):
    before = label_state(ds)
    params = dict(threshold_mode="fixed", threshold=0.9, erode=0.0, dilate=0.0)
    preview = run("label_daam", ds, preview=True, **params).result
    assert preview["samples"] == 8 and preview["labels_before"] == len(before)
    assert label_state(ds) == before and "diffugen_label_params" not in ds.info
    chosen = ds.limit(2).values("id")
    res = run("label_daam", ds, selected=chosen, **params).result
    assert res["relabeled"] == 2 and res["params"]["threshold"] == 0.9
    ds.reload()
    changed = {s.id for s in ds if {d.id for d in s.daam_detections.detections}.isdisjoint(before)}
    assert changed == set(chosen)
    per_sample = {p["id"]: p["after"] for p in preview["per_sample"]}
    assert all(len(ds[i].daam_detections.detections) == per_sample[i] for i in chosen)


def test_review_then_apply_review_and_take_other_labels(plugins_dir, ds):
    scores = ds.values("daam_detections.detections.confidence", unwind=True)
    thr = float(np.median(scores))  # the tiny random model's scores are all low: half the labels are doubtful
    res = foo.get_operator(f"{PLUGIN}/review")(ds, field="daam_detections", min_score=thr).result  # callable
    assert res["queued"] == sum(s < thr for s in scores) > 0
    assert ds.count_label_tags()["needs_review"] == res["queued"]
    assert "review queue" in ds.list_saved_views()
    queue = ds.load_saved_view("review queue")
    assert queue.count("daam_detections.detections") == res["queued"]
    # the reviewer approves one queued label and rejects one confident label
    low = queue.first().daam_detections.detections[0]
    high_view = ds.filter_labels("daam_detections", F("confidence") >= thr)
    high = high_view.first().daam_detections.detections[0]
    ds.select_labels(ids=[low.id]).tag_labels("approved")
    ds.select_labels(ids=[high.id]).tag_labels("rejected")
    summary = run("apply_review", ds, field="daam_detections", min_score=thr, reviewer="ann").result
    kept = {d.source_id for s in ds for d in s.curated.detections}
    expected = {d.id for s in ds for d in s.daam_detections.detections if d.confidence >= thr} - {high.id} | {low.id}
    assert kept == expected and summary["labels"] == len(expected) and summary["approved"] == 1
    assert ds.info["diffugen_reviews"][-1]["reviewer"] == "ann"
    # "YOLO instead of DAAM" for two selected samples (a copy of the DAAM field stands in for YOLO here)
    ds.clone_sample_field("daam_detections", "yolo_detections")
    chosen = ds.skip(2).limit(2).values("id")
    run("apply_review", ds, selected=chosen, mode="take", take_field="yolo_detections", min_score=0.0)
    ds.reload()
    for s in ds:
        sources = {d.source for d in s.curated.detections}
        assert sources <= ({"yolo"} if s.id in chosen else {"daam"})
        assert s.curated_source == ("yolo_detections" if s.id in chosen else None)
    run("apply_review", ds, min_score=thr)  # re-applying keeps the per-sample choice
    assert set(ds.select(chosen).distinct("curated.detections.source")) <= {"yolo"}


def test_export_operator_inside_the_export_root(plugins_dir, ds, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUGEN_EXPORT_ROOT", str(tmp_path))
    res = run("export", ds, format="yolo", field="daam_detections", out_dir="exports/yolo", split="train=0.75,val=0.25")
    out = tmp_path / "exports" / "yolo"
    assert res.result["splits"] == {"train": 6, "val": 2} and (out / "dataset.yaml").is_file()
    assert len(list((out / "labels" / "train").glob("*.txt"))) == 6
    assert ds.count_sample_tags() == {"train": 6, "val": 2}
    with pytest.raises(ExecutionError, match=r"Path: out_dir.*already exists"):
        run("export", ds, format="yolo", field="daam_detections", out_dir="exports/yolo")
    # without DIFFUGEN_EXPORT_ROOT the export root is the dataset's output root
    monkeypatch.delenv("DIFFUGEN_EXPORT_ROOT")
    root = Path(ds.info["diffugen_config"]["output_root"])
    res = run("export", ds, format="masks", field="daam_segmentation", out_dir="exports/masks", split="all=1")
    assert res.result["splits"] == {"all": 8} and len(list((root / "exports" / "masks" / "all" / "labels").glob("*.png"))) == 8
    with pytest.raises(ExecutionError, match=r"Path: out_dir.*outside the allowed export root"):
        run("export", ds, format="masks", field="daam_segmentation", out_dir=str(tmp_path / "x"))


def test_bad_input_is_reported_on_the_field_and_changes_nothing(plugins_dir, ds, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUGEN_EXPORT_ROOT", str(tmp_path / "root"))
    before = label_state(ds)
    cases = [
        ("review", ds, dict(field="nope"), r"Path: field.*unknown field 'nope'"),
        ("apply_review", ds, dict(field="daam_polygons"), r"Path: field.*unknown field 'daam_polygons'"),
        ("label_daam", ds.match(F("seed") == -1), dict(), r"Path: empty_view.*no samples"),
        ("review", ds.match(F("seed") == -1), dict(), r"Path: empty_view.*no samples"),
        ("label_daam", ds, dict(threshold_mode="fixed", threshold=1.5), r"Path: threshold.*in \(0, 1\), got 1.5"),
        ("label_daam", ds, dict(dilate=-0.1), r"Path: dilate.*in \[0, 1\), got -0.1"),
        ("review", ds, dict(min_score=2), r"Path: min_score.*in \[0, 1\], got 2"),
        ("export", ds, dict(field="daam_detections", out_dir=str(tmp_path / "elsewhere")),
         r"Path: out_dir.*outside the allowed export root"),
        ("export", ds, dict(field="daam_detections", out_dir="../escape"), r"Path: out_dir.*outside the allowed export root"),
        ("export", ds, dict(field="daam_detections", out_dir="x", split="train=lots"), r"Path: split.*not a number"),
        ("export", ds, dict(format="coco", field="daam_segmentation", out_dir="x"), r"Path: field.*unknown field"),
    ]
    for name, coll, params, message in cases:
        with pytest.raises(ExecutionError, match=message):
            run(name, coll, **params)
    assert label_state(ds) == before
    assert not ds.count_label_tags() and not ds.count_sample_tags()
    assert "curated" not in ds.get_field_schema() and "review queue" not in ds.list_saved_views()
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "root").exists()


@pytest.mark.slow
def test_delegated_label_daam_runs_in_a_worker(plugins_dir, ds):
    from fiftyone.operators.delegated import DelegatedOperationService

    before = label_state(ds)
    queued = run("label_daam", ds, delegate=True, threshold_mode="fixed", threshold=0.9)
    assert queued.delegated
    op_id = queued.result["id"]
    assert label_state(ds) == before  # nothing happens until a worker runs it
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins_dir))  # + the running database's port
    assert env.get("FIFTYONE_PRIVATE_DATABASE_PORT") or env.get("FIFTYONE_DATABASE_URI")
    worker = subprocess.Popen([str(Path(sys.executable).parent / "fiftyone"), "delegated", "launch"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    service = DelegatedOperationService()
    try:
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:
            state = service.get(op_id).run_state
            if state in ExecutionRunState.TERMINAL_STATES or worker.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        worker.terminate()
        try:
            log, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            log, _ = worker.communicate()
    doc = service.get(op_id)
    assert state == ExecutionRunState.COMPLETED, f"state {state}; error {getattr(doc.result, 'error', None)}\n{log[-3000:]}"
    ds.reload()
    assert label_state(ds) != before and ds.info["diffugen_label_params"]["threshold"] == 0.9
    service.delete_operation(op_id)
