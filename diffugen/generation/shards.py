"""Scale generation out: shards of a config's work list as FiftyOne delegated operations.

``diffugen generate CONFIG --shards N`` queues, per task, N runs of the plugin's unlisted
``generate_shard`` operator, each making one disjoint part of the task's deterministic work list
(:func:`diffugen.generation.runner.shard_items`). Any number of ``fiftyone delegated launch`` workers sharing
the database (and the media root) claim and run them; FiftyOne's queue guarantees each operation
is claimed once. Because a run only makes samples whose key is missing, the union of the shards
is exactly the single-process dataset, and a shard run again after a crash finishes what it left.

img2img and inpaint shards start from txt2img samples: they are queued after the txt2img shards
and, when a worker claims one early, it waits (saying so in its progress) until no shard of an
earlier task of the same dataset is queued or running.

A killed worker leaves its operation RUNNING forever in FiftyOne. Each shard records the worker
(host and pid) in its progress label; :func:`shard_status` calls a running shard *stale* when that
process is gone (same host) or when it has not reported progress for ``stale_after`` seconds, and
:func:`resume_shards` marks stale and failed shards failed and queues them again.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..common import STALE_AFTER_S, ProgressFn
from ..common import TASKS as ORDER
from ..config import DiffuGenConfig, load_config
from ..errors import DiffuGenError
from ..prompts import stable_hash
from ..store.dataset import open_dataset
from ..store.files import pid_alive
from ..store.repair import drop_incomplete

SHARD_OPERATOR = "@diffugen/diffugen/generate_shard"  # unlisted: workers run it, users queue with --shards
_WORKER = re.compile(r"^\[(?P<host>[^:\]]+):(?P<pid>\d+)\]")


def fingerprint(cfg: DiffuGenConfig) -> str:
    """A hash of everything in the config: shards refuse to run a config changed since queueing."""
    return stable_hash(cfg.model_dump(mode="json"))[:16]


def worker_tag() -> str:
    return f"[{socket.gethostname()}:{os.getpid()}]"


def _service():
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def _check_plugin() -> None:
    import fiftyone as fo
    import fiftyone.operators as foo

    if not foo.operator_exists(SHARD_OPERATOR):
        raise DiffuGenError(
            f"the DiffuGen FiftyOne plugin is not installed in the plugins folder ({fo.config.plugins_dir}): "
            "run `diffugen plugin install` here and on every worker machine"
        )


def queue_shards(config_path: str | Path, num_shards: int, tasks: Sequence[str] | None = None,
                 output_root: str | None = None) -> list[dict]:
    """Queue ``num_shards`` delegated ``generate`` operations per task; returns what was queued.

    Raises:
        DiffuGenError: ``num_shards < 1``, more shards than txt2img work items, or no plugin.
    """
    from .planner import plan

    config_path = Path(config_path).resolve()
    cfg = load_config(config_path)
    if output_root:
        cfg = cfg.model_copy(update={"output_root": output_root})
    chosen = list(tasks) if tasks else cfg.tasks()
    if num_shards < 1:
        raise DiffuGenError(f"--shards must be >= 1, got {num_shards}")
    if "txt2img" in chosen:
        n = len(plan(cfg, "txt2img"))
        if num_shards > n:
            raise DiffuGenError(f"--shards {num_shards} is more than the {n} txt2img images of this config")
    _check_plugin()
    import fiftyone.operators as foo

    ds = open_dataset(cfg.dataset_name, cfg.dataset_classes(), cfg.model_dump(mode="json"))
    drop_incomplete(ds)  # once here, before any worker plans (generate() skips it for shards)
    fp = fingerprint(cfg)
    queued = []
    # Workers claim the most recently queued operation first: queue the last task first.
    for task in [t for t in reversed(ORDER) if t in chosen]:
        for index in range(num_shards):
            params = {"config_path": str(config_path), "dataset_name": cfg.dataset_name, "task": task,
                      "shard_index": index, "num_shards": num_shards, "config_fingerprint": fp}
            if output_root:
                params["output_root"] = output_root
            result = foo.execute_operator(SHARD_OPERATOR, ctx={"dataset": ds, "view": ds.view(), "params": params},
                                          request_delegation=True)
            if result.error:
                raise DiffuGenError(f"could not queue {task} shard {index}: {result.error}")
            queued.append({"id": str(result.result["id"]), "task": task, "index": index, "count": num_shards})
    queued.sort(key=lambda q: (ORDER.index(q["task"]), q["index"]))
    ds.info["diffugen_shards"] = {"config_path": str(config_path), "fingerprint": fp, "num_shards": num_shards,
                                  "tasks": chosen, "queued_at": _dt.datetime.utcnow().isoformat(timespec="seconds")}
    ds.save()
    return queued


@dataclass
class ShardStatus:
    id: str
    task: str
    index: int
    count: int
    state: str
    progress: float | None
    label: str
    updated_at: _dt.datetime | None
    stale: bool = False
    why_stale: str = ""


def _stale(op, label: str, stale_after: float) -> str:
    """Why a RUNNING operation is stale ('' if it is not)."""
    m = _WORKER.match(label or "")
    if m and m["host"] == socket.gethostname() and not pid_alive(int(m["pid"])):
        return f"its worker process {m['pid']} is gone"
    updated = op.updated_at or op.started_at
    if updated is not None:
        idle = (_dt.datetime.utcnow() - updated.replace(tzinfo=None)).total_seconds()
        if idle > stale_after:
            return f"no progress for {idle:.0f} s"
    return ""


def shard_status(dataset_name: str, stale_after: float = STALE_AFTER_S) -> list[ShardStatus]:
    """Every generate shard queued on ``dataset_name``, oldest first, with stale running ones marked."""
    out = []
    for op in _service().list_operations(operator=SHARD_OPERATOR, dataset_name=dataset_name):
        params = (op.context.request_params or {}).get("params", {}) if op.context else {}
        if "num_shards" not in params:
            continue
        label = getattr(op.status, "label", None) or ""
        progress = getattr(op.status, "progress", None)
        s = ShardStatus(str(op.id), params["task"], int(params["shard_index"]), int(params["num_shards"]),
                        str(op.run_state), progress, label, op.updated_at)
        if s.state == "running":
            s.why_stale = _stale(op, label, stale_after)
            s.stale = bool(s.why_stale)
        out.append(s)
    return sorted(out, key=lambda s: (ORDER.index(s.task), s.index, s.updated_at or _dt.datetime.min))


def _latest(shards: Sequence[ShardStatus]) -> dict[tuple[str, int], ShardStatus]:
    latest: dict[tuple[str, int], ShardStatus] = {}
    for s in shards:  # a requeued shard supersedes the one it replaces
        key = (s.task, s.index)
        if key not in latest or s.state in ("completed", "queued", "running") or latest[key].state == "failed":
            latest[key] = s
    return latest


def resume_shards(config_path: str | Path, stale_after: float = STALE_AFTER_S) -> list[dict]:
    """Requeue every shard of the config's dataset that did not complete (failed, or running but stale).

    Raises:
        DiffuGenError: the config changed since the shards were queued, or none were queued.
    """
    import fiftyone as fo

    cfg = load_config(config_path)
    if not fo.dataset_exists(cfg.dataset_name):
        raise DiffuGenError(f"no dataset {cfg.dataset_name!r}: nothing to resume")
    info = fo.load_dataset(cfg.dataset_name).info.get("diffugen_shards")
    if not info:
        raise DiffuGenError(f"{cfg.dataset_name!r} has no queued shards: run `diffugen generate CONFIG --shards N`")
    if info["fingerprint"] != fingerprint(cfg):
        raise DiffuGenError(f"{config_path} changed since its shards were queued; queue them again with --shards")
    service = _service()
    latest = _latest(shard_status(cfg.dataset_name, stale_after))
    requeue = []
    for s in latest.values():
        if s.state == "failed" or s.stale:
            if s.stale:
                _fail(service, s)
            requeue.append(s)
    if not requeue:
        return []
    # img2img/inpaint work lists come from the earlier task's samples: redo (only what is missing
    # of) every later-task shard that is not waiting in the queue already.
    first = min(ORDER.index(s.task) for s in requeue)
    requeue += [s for s in latest.values() if ORDER.index(s.task) > first and s not in requeue
                and s.state not in ("queued", "running")]
    requeue.sort(key=lambda s: (-ORDER.index(s.task), s.index))  # claimed newest first: earlier tasks last
    _check_plugin()
    import fiftyone.operators as foo

    ds = fo.load_dataset(cfg.dataset_name)
    drop_incomplete(ds)
    out = []
    for s in requeue:
        params = {"config_path": info["config_path"], "dataset_name": cfg.dataset_name, "task": s.task,
                  "shard_index": s.index, "num_shards": s.count, "config_fingerprint": info["fingerprint"]}
        result = foo.execute_operator(SHARD_OPERATOR, ctx={"dataset": ds, "view": ds.view(), "params": params},
                                      request_delegation=True)
        out.append({"id": str(result.result["id"]), "task": s.task, "index": s.index, "replaces": s.id,
                    "why": s.why_stale or "failed"})
    return out


def _fail(service, s: ShardStatus) -> None:
    from fiftyone.operators.executor import ExecutionResult

    service.set_failed(s.id, result=ExecutionResult(error=f"marked failed by diffugen: {s.why_stale}"))


def wait_for_earlier_tasks(dataset_name: str, task: str, report: Callable[[str], None] | None = None,
                           poll: float = 2.0, timeout: float = 24 * 3600, stale_after: float = STALE_AFTER_S) -> None:
    """Block until no shard of a task before ``task`` is queued or running (img2img needs txt2img)."""
    earlier = ORDER[: ORDER.index(task)]
    deadline = time.monotonic() + timeout
    while True:
        rows = [s for s in _latest(shard_status(dataset_name, stale_after)).values() if s.task in earlier]
        dead = [s for s in rows if s.stale or s.state == "failed"]
        if dead:
            raise DiffuGenError(
                f"{task} needs every {'/'.join(earlier)} shard, but {dead[0].task} shard {dead[0].index + 1} "
                f"{'is dead (' + dead[0].why_stale + ')' if dead[0].stale else 'failed'}: "
                "run `diffugen generate CONFIG --resume`"
            )
        pending = [s for s in rows if s.state in ("queued", "scheduled", "running")]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DiffuGenError(f"{task} shard waited {timeout:.0f} s for {len(pending)} earlier shards; giving up")
        if report is not None:
            report(f"waiting for {len(pending)} {'/'.join(sorted({s.task for s in pending}))} shard(s)")
        time.sleep(poll)


def run_shard(params: dict, progress: ProgressFn | None = None):
    """Run one queued shard (what the ``generate`` operator does with shard parameters)."""
    from .runner import generate

    cfg = load_config(params["config_path"])
    if params.get("output_root"):
        cfg = cfg.model_copy(update={"output_root": params["output_root"]})
    if fingerprint(cfg) != params["config_fingerprint"]:
        raise DiffuGenError(
            f"{params['config_path']} changed since this shard was queued; nothing was generated. "
            "Queue the shards again: diffugen generate CONFIG --shards N"
        )
    tag = worker_tag()
    task = params["task"]

    def tagged(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress(done, total, f"{tag} {task} shard {params['shard_index'] + 1}/{params['num_shards']}: {message}")

    if task != "txt2img":
        wait_for_earlier_tasks(cfg.dataset_name, task, report=lambda m: tagged(0, 1, m))
    tagged(0, 1, "starting")
    return generate(cfg, tasks=[task], progress=tagged, shard=(int(params["shard_index"]), int(params["num_shards"])))
