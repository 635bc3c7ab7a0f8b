"""Sharded generation over real `fiftyone delegated launch` workers: same dataset, survives kill -9."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pytest
from conftest import small_config

from diffugen.cli import main as cli
from diffugen.config import parse_config
from diffugen.errors import DiffuGenError
from diffugen.generation.runner import generate
from diffugen.generation.shards import queue_shards, resume_shards, shard_status

pytestmark = pytest.mark.slow  # delegated workers in other processes


def _worker(plugins_dir):
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins_dir))  # same torch threads as this process: same rounding
    return subprocess.Popen([str(Path(sys.executable).parent / "fiftyone"), "delegated", "launch"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(workers):
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
        w.wait(timeout=30)


def _wait(dataset, done, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = shard_status(dataset)
        if done(rows):
            return rows
        failed = [r for r in rows if r.state == "failed"]
        assert not failed, [(r.task, r.index, r.label) for r in failed]
        time.sleep(1)
    raise AssertionError(f"timed out: {[(r.task, r.index, r.state) for r in shard_status(dataset)]}")


def _fingerprint(ds):
    out = {}
    for key, path in zip(ds.values("key"), ds.values("filepath")):
        out[key] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return out


def _referenced(ds):
    paths = set(ds.values("filepath"))
    paths |= set(p for p in ds.values("heatmap.map_path") if p)
    paths |= set(p for p in ds.values("daam_segmentation.mask_path") if p)
    paths |= set(p for per in ds.values("word_heatmaps.map_path") for p in (per or []))
    return {str(Path(p).resolve()) for p in paths}


def _files(root):
    return {str(p.resolve()) for p in Path(root).rglob("*") if p.is_file()}


def test_two_workers_make_the_single_process_dataset(plugins_dir, tmp_path):
    name = "sharded-two-workers"
    raw = small_config(name, tmp_path / "sharded", width=64, height=64, seeds=[1, 2, 3],
                       img2img={"attributes": {"time": ["night"]}, "strength": 0.7})
    config = tmp_path / "sharded.json"
    config.write_text(json.dumps(raw))
    single = parse_config({**raw, "dataset_name": name + "-single", "output_root": str(tmp_path / "single")})
    generate(single)
    try:
        assert cli(["generate", str(config), "--shards", "2"]) == 0
        rows = shard_status(name)
        assert [(r.task, r.index, r.state) for r in rows] == [
            ("txt2img", 0, "queued"), ("txt2img", 1, "queued"), ("img2img", 0, "queued"), ("img2img", 1, "queued")]
        workers = [_worker(plugins_dir), _worker(plugins_dir)]
        try:
            _wait(name, lambda rows: len(rows) == 4 and all(r.state == "completed" for r in rows))
        finally:
            _stop(workers)
        sharded, ref = fo.load_dataset(name), fo.load_dataset(name + "-single")
        assert len(sharded) == len(ref) == 24
        assert _fingerprint(sharded) == _fingerprint(ref)  # same samples, same image per seed
        assert _files(tmp_path / "sharded" / name) == _referenced(sharded)
    finally:
        for n in (name, name + "-single"):
            if fo.dataset_exists(n):
                fo.delete_dataset(n)


def test_kill_a_worker_then_resume(plugins_dir, tmp_path, capsys):
    name = "sharded-kill"
    raw = small_config(name, tmp_path / "out", width=64, height=64, steps=12, batch_size=1, seeds=list(range(6)))
    config = tmp_path / "kill.json"
    config.write_text(json.dumps(raw))
    try:
        queue_shards(config, 2)
        worker = _worker(plugins_dir)
        try:
            # kill -9 while a shard is running and has reported progress
            _wait(name, lambda rows: any(r.state == "running" and (r.progress or 0) > 0 for r in rows), timeout=180)
        finally:
            _stop([worker])
        running = [r for r in shard_status(name) if r.state == "running"]
        assert running and all(r.stale and "is gone" in r.why_stale for r in running)
        assert cli(["status", name]) == 0
        assert "STALE" in capsys.readouterr().out
        requeued = resume_shards(config)
        assert {(q["task"], q["index"]) for q in requeued} >= {(r.task, r.index) for r in running}
        worker = _worker(plugins_dir)
        try:
            _wait(name, lambda rows: {(r.task, r.index) for r in rows if r.state == "completed"} == {("txt2img", 0), ("txt2img", 1)})
        finally:
            _stop([worker])
        ds = fo.load_dataset(name)
        assert len(ds) == 24 and len(set(ds.values("key"))) == 24
        assert _files(tmp_path / "out" / name) == _referenced(ds)  # no orphan or partial files
        assert resume_shards(config) == []
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_bad_shard_requests(plugins_dir, tmp_path):
    name = "sharded-bad"
    raw = small_config(name, tmp_path / "out")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(raw))
    with pytest.raises(DiffuGenError, match="must be >= 1"):
        queue_shards(config, 0)
    with pytest.raises(DiffuGenError, match="more than the 8 txt2img images"):
        queue_shards(config, 9)
    assert not fo.dataset_exists(name)
    try:
        queue_shards(config, 2)
        config.write_text(json.dumps({**raw, "steps": 4}))
        with pytest.raises(DiffuGenError, match="changed since its shards were queued"):
            resume_shards(config)
        from diffugen.generation.shards import run_shard

        params = {"config_path": str(config), "dataset_name": name, "task": "txt2img", "shard_index": 0,
                  "num_shards": 2, "config_fingerprint": "0" * 16}
        with pytest.raises(DiffuGenError, match="changed since this shard was queued"):
            run_shard(params)
        assert len(fo.load_dataset(name)) == 0
    finally:
        from fiftyone.operators.delegated import DelegatedOperationService

        service = DelegatedOperationService()
        for op in service.list_operations(dataset_name=name):
            service.delete_operation(op.id)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_queue_and_resume_first_drop_samples_whose_files_are_gone(plugins_dir, tmp_path):
    """The repair runs once where shards are queued or resumed (workers skip it): no worker needed here."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    name = "sharded-repair"
    raw = small_config(name, tmp_path / "out")
    config = tmp_path / "repair.json"
    config.write_text(json.dumps(raw))
    service = DelegatedOperationService()
    try:
        generate(parse_config(raw))
        ds = fo.load_dataset(name)
        keys = sorted(ds.values("key"))
        first, second = (ds.match({"key": k}).first() for k in keys[:2])
        Path(first.filepath).unlink()
        queue_shards(config, 2)
        ds.reload()
        assert sorted(ds.values("key")) == keys[1:]  # only the sample without its image is gone
        Path(second["daam_segmentation"].mask_path).unlink()
        op = service.list_operations(dataset_name=name)[0]
        service.set_failed(op.id, result=ExecutionResult(error="killed"))
        assert [q["replaces"] for q in resume_shards(config)] == [str(op.id)]
        ds.reload()
        assert sorted(ds.values("key")) == keys[2:]
    finally:
        for op in service.list_operations(dataset_name=name):
            service.delete_operation(op.id)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
