"""The curation loop end to end, once through the CLI and once through the App's operators:
generate → review queue → a reviewer's tags → apply_review → train a YOLO-seg on ``curated`` → label with it.
"""

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from conftest import small_config

from diffugen.cli import main as cli

pytestmark = pytest.mark.slow  # trains ultralytics twice

PLUGIN = "@diffugen/diffugen"


def _config(name, root):
    return small_config(name, root, width=64, height=64, batch_size=4, seeds=[1, 2, 3])


def _median_score(ds) -> float:
    """The review threshold: half the labels doubtful (the tiny random model's attention scores are all low)."""
    return round(float(np.median(ds.values("daam_detections.detections.confidence", unwind=True))), 6)


def _decide(ds):
    """What a reviewer does in the App: approve one queued label, reject one confident label."""
    queued = [d for s in ds for d in s.daam_detections.detections if "needs_review" in d.tags]
    sure = [d for s in ds for d in s.daam_detections.detections if "needs_review" not in d.tags]
    assert queued and len(sure) > 1
    approved, rejected = queued[0].id, sure[0].id
    ds.select_labels(ids=[approved]).tag_labels("approved")
    ds.select_labels(ids=[rejected]).tag_labels("rejected")
    return approved, rejected


def _check_curated(ds, approved, rejected):
    sources = {d.source_id for s in ds for d in s.curated.detections}
    assert approved in sources and rejected not in sources
    return len(sources)


def _run(name, ds, **params):
    result = foo.execute_operator(f"{PLUGIN}/{name}", ctx={"view": ds.view(), "params": params})
    result.raise_exceptions()
    return result.result


def test_review_to_training_through_the_cli(tmp_path, write_config, dataset_name):
    cfg = write_config(_config(dataset_name, tmp_path / "out"))
    assert cli(["generate", str(cfg)]) == 0
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 12
    thr = str(_median_score(ds))
    assert cli(["review", dataset_name, "--min-score", thr]) == 0
    approved, rejected = _decide(ds)
    assert cli(["apply-review", dataset_name, "--min-score", thr, "--reviewer", "rev"]) == 0
    ds.reload()
    n_curated = _check_curated(ds, approved, rejected)
    assert cli(["train", dataset_name, "--field", "curated", "--epochs", "1", "--imgsz", "64", "--batch", "4",
                "--out", str(tmp_path / "run")]) == 0
    ds.reload()
    run = ds.info["diffugen_yolo_runs"][-1]
    assert run["field"] == "curated" and run["counts"]["labels"] == n_curated
    assert run["counts"]["train"] + run["counts"]["val"] == 12
    assert cli(["label", dataset_name, "--yolo", run["weights"], "--conf", "0.0001", "--imgsz", "64"]) == 0
    ds.reload()
    assert ds.count("yolo_detections") == 12


def test_review_to_training_through_the_operators(plugins_dir, tmp_path, dataset_name):
    config = tmp_path / "config.json"
    import json

    config.write_text(json.dumps(_config(dataset_name, tmp_path / "out")))
    start = fo.Dataset()
    assert _run("generate", start, config_path=str(config))["made"] == 12
    ds = fo.load_dataset(dataset_name)
    thr = _median_score(ds)
    assert _run("review", ds, field="daam_detections", min_score=thr, include_unmatched=True)["queued"] > 0
    approved, rejected = _decide(ds)
    summary = _run("apply_review", ds, mode="apply", field="daam_detections", min_score=thr)
    assert summary["approved"] == 1 and summary["rejected"] == 1
    ds.reload()
    n_curated = _check_curated(ds, approved, rejected)
    weights = _run("train_yolo", ds, field="curated", epochs=1, imgsz=64)["weights"]
    ds.reload()
    run = ds.info["diffugen_yolo_runs"][-1]
    assert run["weights"] == weights and run["field"] == "curated" and run["counts"]["labels"] == n_curated
    _run("label_yolo", ds, weights=weights, conf=0.0001, imgsz=64)
    ds.reload()
    assert ds.count("yolo_detections") == 12
    start.delete()


def test_one_sample_trains_validating_on_itself(ds, tmp_path):
    from diffugen.curation.bootstrap import train_yolo

    one = ds.limit(1)
    weights = train_yolo(one, epochs=1, imgsz=64, batch=1, field="daam_detections", out_dir=tmp_path / "run")
    run = ds.info["diffugen_yolo_runs"][-1]
    assert weights.is_file() and run["counts"]["train"] == 1 and run["counts"]["val"] == 0
