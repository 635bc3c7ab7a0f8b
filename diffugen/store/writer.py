"""Batched inserts of complete samples into a dataset."""

from __future__ import annotations

import datetime as _dt
import time

import fiftyone as fo
from pymongo.errors import BulkWriteError

from diffugen.store.documents import sample_document

_DUPLICATE_KEY = 11000


class SampleWriter:
    """Buffers samples and inserts them ``batch_size`` at a time (one database round-trip per batch).

    A sample is inserted whole, with all its labels, after its files exist: a run killed at any
    point leaves either a complete sample or none (whose files the next run rewrites). A sample
    whose key another run inserted first is skipped (the dataset's unique key index refuses it),
    and counted in ``duplicates``.
    """

    def __init__(self, ds: fo.Dataset, batch_size: int = 64):
        self.ds = ds
        self.batch_size = batch_size
        self.pending: list[fo.Sample] = []
        self.written = 0
        self.duplicates = 0
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
        inserted = self._insert_documents() if fields <= self._schema else None
        if inserted is None:  # new fields: FiftyOne's public path, which also extends the schema
            inserted = self._add_samples()
            self._schema = set(self.ds.get_field_schema())
        self.written += inserted
        self.duplicates += len(self.pending) - inserted
        self.pending = []
        self.flush_seconds += time.perf_counter() - t0

    def _insert_documents(self) -> int | None:
        """Insert the samples' documents in one unordered ``insert_many``, without attaching the Sample
        objects; returns how many went in (the rest had keys already there), or ``None``.

        ``add_samples`` rebuilds every inserted sample from its document afterwards (walking each
        polygon point), which costs ~3× the insert itself; we never use the objects again. The
        documents are ``Dataset._make_dict``'s, built by :func:`~diffugen.store.documents.sample_document`
        without mongoengine's per-value calls. This uses FiftyOne internals (``_sample_collection``):
        if they change, return ``None`` and the caller takes the public path.
        """
        try:
            now = _dt.datetime.utcnow()
            docs = [self._document(s, now) for s in self.pending]
            collection = self.ds._sample_collection
        except AttributeError:
            return None
        try:
            collection.insert_many(docs, ordered=False)
        except BulkWriteError as err:
            return len(docs) - _duplicates(err)
        return len(docs)

    def _document(self, sample: fo.Sample, now: _dt.datetime) -> dict:
        """The database document of ``sample`` (the benchmark's reference writer overrides it)."""
        return sample_document(self.ds, sample, now)

    def _add_samples(self) -> int:
        pending = self.pending
        while True:
            have = set(self.ds.match(fo.ViewField("key").is_in([s["key"] for s in pending])).values("key"))
            pending = [s for s in pending if s["key"] not in have]
            if not pending:
                return 0
            try:
                self.ds.add_samples(pending, expand_schema=True, validate=False, progress=False)
                return len(pending)
            except BulkWriteError as err:  # another run inserted some of these keys meanwhile
                _duplicates(err)

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def _duplicates(err: BulkWriteError) -> int:
    """How many inserts a bulk write refused for a duplicate key; any other error is raised."""
    errors = err.details.get("writeErrors", [])
    if any(e.get("code") != _DUPLICATE_KEY for e in errors) or err.details.get("writeConcernErrors"):
        raise err
    return len(errors)
