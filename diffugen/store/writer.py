"""Batched inserts of complete samples into a dataset."""

from __future__ import annotations

import datetime as _dt
import time

import fiftyone as fo


class SampleWriter:
    """Buffers samples and inserts them ``batch_size`` at a time (one database round-trip per batch).

    A sample is inserted whole, with all its labels, after its files exist: a run killed at any
    point leaves either a complete sample or none (whose files the next run rewrites).
    """

    def __init__(self, ds: fo.Dataset, batch_size: int = 64):
        self.ds = ds
        self.batch_size = batch_size
        self.pending: list[fo.Sample] = []
        self.written = 0
        self.flush_seconds = 0.0  # time spent inserting, for the benchmarks
        self._schema = set(ds.get_field_schema())

    def add(self, sample: fo.Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        fields = set().union(*(s.field_names for s in self.pending))
        if fields <= self._schema and self._insert_documents():
            pass
        else:  # new fields: FiftyOne's public path, which also extends the schema
            self.ds.add_samples(self.pending, expand_schema=True, validate=False, progress=False)
            self._schema = set(self.ds.get_field_schema())
        self.written += len(self.pending)
        self.pending = []
        self.flush_seconds += time.perf_counter() - t0

    def _insert_documents(self) -> bool:
        """Insert the samples' documents in one ``insert_many``, without attaching the Sample objects.

        ``add_samples`` rebuilds every inserted sample from its document afterwards (walking each
        polygon point), which costs ~3× the insert itself; we never use the objects again. This
        uses FiftyOne internals (``_make_dict``, ``_sample_collection``): if they change, return
        False and the caller takes the public path.
        """
        try:
            now = _dt.datetime.utcnow()
            docs = [self.ds._make_dict(s, created_at=now, last_modified_at=now) for s in self.pending]
            self.ds._sample_collection.insert_many(docs)
        except AttributeError:
            return False
        return True

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
