"""Test setup: a private FiftyOne database (a real mongod), shared tiny models, small configs."""

import os

from diffugen.testing import start_private_mongod

# Before fiftyone is imported anywhere: a mongod of our own, never a database the user has running.
start_private_mongod("diffugen-test-db-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipe():
    from diffugen.generation.builtin import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's generations: with two, a competing process can stall every OpenMP
    barrier (10× slower seen); with one, they take the same time whether or not the machine is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dataset_name():
    """A fresh dataset name, deleted after the test."""
    import fiftyone as fo

    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def small_config(name: str, root: Path, **overrides) -> dict:
    """A fast builtin:tiny config: 4 prompts × 2 seeds = 8 images of 64×96 px, 3 steps."""
    cfg = {
        "dataset_name": name,
        "output_root": str(root),
        "model": "builtin:tiny",
        "width": 96,
        "height": 64,
        "steps": 3,
        "batch_size": 3,
        "templates": ["a {view} view of a {object} on a road at {time}"],
        "attributes": {"view": ["rear", "front"], "object": ["car", "bus"], "time": ["noon"]},
        "class_words": ["car", "bus"],
        "seeds": [11, 12],
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def write_config(tmp_path):
    def _write(cfg: dict, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(cfg))
        return path

    return _write


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    """A plugins folder holding this checkout, the way `diffugen plugin install` makes it."""
    import fiftyone as fo

    from diffugen.plugin.install import install_plugin

    folder = tmp_path_factory.mktemp("plugins")
    install_plugin(folder)
    before = fo.config.plugins_dir
    fo.config.plugins_dir = str(folder)
    yield folder
    fo.config.plugins_dir = before


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """8 generated builtin:tiny samples with DAAM labels, made once per module; tests work on clones."""
    import fiftyone as fo

    from diffugen.config import parse_config
    from diffugen.generation.runner import generate

    name = f"base-{uuid.uuid4().hex[:8]}"
    generate(parse_config(small_config(name, tmp_path_factory.mktemp("out"))))
    ds = fo.load_dataset(name)
    yield ds
    fo.delete_dataset(name)


@pytest.fixture
def ds(base):
    """A clone of ``base`` for one test."""
    clone = base.clone(f"clone-{uuid.uuid4().hex[:8]}")
    yield clone
    clone.delete()
