"""Scale-out: two `fiftyone delegated launch` workers vs one on the same sharded config.

    python bench/bench_shards.py [--images 64] [--shards 4] [--steps 20] [--size 64]

Each worker is limited to one torch thread (OMP_NUM_THREADS=1). Workers are started and warmed
up (their first shard imports diffusers and loads the model) before the clock starts; the clock
runs from queueing until every shard is completed. Also measures the per-shard overhead (queue +
claim + setup) with shards of one image each. The workers share this process's private database
(they inherit ``FIFTYONE_DATABASE_URI``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import private_database


SIZE = 64


def config(name: str, root: Path, images: int, steps: int) -> dict:
    return {
        "dataset_name": name, "output_root": str(root), "model": "builtin:tiny", "width": SIZE, "height": SIZE,
        "steps": steps, "batch_size": 4, "templates": ["a {view} view of a {object} at {time}"],
        "attributes": {"view": ["rear", "front"], "object": ["car", "bus"], "time": ["noon", "night"]},
        "class_words": ["car", "bus"], "seeds": list(range(max(1, images // 8))), "image_count": images,
    }


def start_workers(n: int, plugins: Path) -> list[subprocess.Popen]:
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    workers = [subprocess.Popen([str(Path(sys.executable).parent / "fiftyone"), "delegated", "launch"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(n)]
    for w in workers:  # ready when the service says so
        for line in w.stdout:
            if "Delegated operation service running" in line:
                break
    return workers


def _queue_and_wait(name: str, path: Path, shards: int) -> float:
    import fiftyone as fo

    from diffugen.generation.shards import queue_shards, shard_status

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    t = time.perf_counter()
    queue_shards(path, shards)
    while not all(s.state == "completed" for s in shard_status(name)):
        assert not any(s.state == "failed" for s in shard_status(name)), shard_status(name)
        time.sleep(0.2)
    return time.perf_counter() - t


def run(n_workers: int, images: int, shards: int, steps: int, plugins: Path, root: Path) -> float:
    """Seconds for ``images`` images in ``shards`` shards on ``n_workers`` warmed-up workers."""
    import fiftyone as fo

    workers = start_workers(n_workers, plugins)
    try:
        # Warm-up: each worker's first shard imports diffusers and loads the model (once per worker,
        # not per shard); time the steady state, as in a long run.
        warm = f"bench-shards-warmup-{n_workers}w"
        (root / f"{warm}.json").write_text(json.dumps(config(warm, root / warm, 8 * n_workers, 2)))
        _queue_and_wait(warm, root / f"{warm}.json", 2 * n_workers)
        fo.delete_dataset(warm)
        name = f"bench-shards-{n_workers}w-{images}i-{shards}s"
        path = root / f"{name}.json"
        path.write_text(json.dumps(config(name, root / name, images, steps)))
        elapsed = _queue_and_wait(name, path, shards)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert len(fo.load_dataset(name)) == images
    fo.delete_dataset(name)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    global SIZE
    SIZE = args.size

    private_database()
    import fiftyone as fo

    from diffugen.plugin.install import install_plugin

    tmp = Path(tempfile.mkdtemp())
    install_plugin(tmp / "plugins")
    fo.config.plugins_dir = str(tmp / "plugins")
    one = run(1, args.images, args.shards, args.steps, tmp / "plugins", tmp)
    two = run(2, args.images, args.shards, args.steps, tmp / "plugins", tmp)
    print(f"{args.images} builtin:tiny images ({SIZE}x{SIZE}, {args.steps} steps), {args.shards} shards, 1 torch thread per worker")
    print(f"1 worker: {args.images / one:.2f} img/s; 2 workers: {args.images / two:.2f} img/s; "
          f"2 vs 1 = {one / two:.2f}x (goal >= 1.6x)")
    # Per-shard overhead: 8 one-image shards vs 1 eight-image shard, one worker.
    many = run(1, 8, 8, args.steps, tmp / "plugins", tmp)
    single = run(1, 8, 1, args.steps, tmp / "plugins", tmp)
    print(f"per-shard overhead (queue + claim + setup): {(many - single) / 7:.2f} s per shard (goal < 1 s)")


if __name__ == "__main__":
    main()
