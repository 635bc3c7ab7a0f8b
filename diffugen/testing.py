"""A private MongoDB for tests and benchmarks, so they never write into a user's database.

FiftyOne joins any database service already running on its default port, whatever
``FIFTYONE_DATABASE_DIR`` says; so the tests and benchmarks start a mongod of their own (the one
``fiftyone-db`` ships) on a free port in a temporary folder and point ``FIFTYONE_DATABASE_URI`` at it.
Call :func:`start_private_mongod` before FiftyOne is imported.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongod_binary() -> str:
    # fiftyone-db installs bin/mongod inside the fiftyone package's db folder; found without importing
    # fiftyone (importing it would read FiftyOne's config before FIFTYONE_DATABASE_URI is set).
    spec = importlib.util.find_spec("fiftyone")
    candidates = [Path(p) / "db" / "bin" / "mongod" for p in (spec.submodule_search_locations or [])] if spec else []
    found = shutil.which("mongod")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file():
            return str(c)
    raise RuntimeError("no mongod found: install the db extra (pip install -e '.[db]') or put mongod on PATH")


def start_private_mongod(prefix: str = "diffugen-db-") -> str:
    """Start a mongod on a free local port with its data in a new temporary folder; returns its URI.

    Raises:
        RuntimeError: FiftyOne was imported already (it would keep the database it found then).

    Sets ``FIFTYONE_DATABASE_URI`` (and turns FiftyOne's version check off: the bundled mongod is
    older than the versions it calls supported). The server and its folder go when the process exits.
    """
    import sys

    if "fiftyone" in sys.modules:
        raise RuntimeError("start_private_mongod() must run before fiftyone is imported")
    folder = tempfile.mkdtemp(prefix=prefix)
    port = _free_port()
    proc = subprocess.Popen(
        [_mongod_binary(), "--dbpath", folder, "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
         "--quiet", "--logpath", os.path.join(folder, "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def _stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(_stop)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = Path(folder, "mongod.log")
                raise RuntimeError(f"private mongod did not start: {log.read_text()[-2000:] if log.is_file() else ''}")
            time.sleep(0.1)
    uri = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_URI"] = uri
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    return uri
