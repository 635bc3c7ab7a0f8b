"""The database document of a new ``fo.Sample``, as ``Dataset._make_dict`` builds it, without mongoengine's
per-value work.

FiftyOne serializes a sample through mongoengine: every embedded label calls ``to_mongo`` on each of its
fields, and list fields call their item field once per element through a signature inspection, so a
polygon costs several Python calls per point. This module walks the same fields in the same order and
applies the same conversions, but picks each field's conversion once (by the ``to_mongo`` method its
class really uses) and copies lists of plain numbers and strings in one comprehension. A field class,
document class or value type it does not know is handed to FiftyOne's own code, so the result is always
the document FiftyOne would store, byte for byte (``tests/test_store.py`` checks it with ``bson.encode``).
It relies on FiftyOne and mongoengine internals; :func:`sample_document` returns ``ds._make_dict(...)``
itself when they are not the ones it was written against.
"""

from __future__ import annotations

import datetime as _dt
from itertools import chain
from typing import Any, Callable

import fiftyone as fo

try:
    import fiftyone.core.document as _fod
    import fiftyone.core.fields as _fof
    import fiftyone.core.odm.document as _fodoc
    import fiftyone.core.odm.mixins as _fomix
    from bson import ObjectId
    from fiftyone.core.odm.utils import serialize_value
    from mongoengine.base.datastructures import BaseDict, BaseList
    from mongoengine.base.document import BaseDocument
    from mongoengine.base.fields import BaseField, ComplexBaseField
    from mongoengine.document import Document as _MongoDocument
    from mongoengine.document import EmbeddedDocument as _MongoEmbedded
    from mongoengine.fields import BooleanField as _MongoBool
    from mongoengine.fields import DynamicField as _MongoDynamic
    from mongoengine.fields import EmbeddedDocumentField as _MongoEmbeddedField
    from mongoengine.fields import StringField as _MongoString

    _MEDIA_FIELDS = _fomix._MEDIA_IDENTITY_FIELDS
    # The to_mongo chains (most derived first) this module reproduces: FiftyOne's dynamic documents
    # (all labels) and plain embedded documents.
    _DYNAMIC_CHAIN = (_fodoc.DynamicMixin.to_mongo, _MongoEmbedded.to_mongo, BaseDocument.to_mongo)
    _STATIC_CHAIN = (_MongoEmbedded.to_mongo, BaseDocument.to_mongo)
    _SUPPORTED = (
        fo.Dataset._make_dict.__code__.co_varnames[:5] == ("self", "sample", "include_id", "created_at", "last_modified_at")
        and fo.Sample.to_mongo_dict is _fod.Document.to_mongo_dict
    )
except (ImportError, AttributeError):  # another FiftyOne or mongoengine: always take _make_dict
    _SUPPORTED = False

_SCALARS = frozenset({str, int, float, bool, type(None)})
_LISTS = frozenset({list, tuple}) | (frozenset({BaseList}) if _SUPPORTED else frozenset())
_DICTS = frozenset({dict}) | (frozenset({BaseDict}) if _SUPPORTED else frozenset())

Converter = Callable[[Any], Any]


class _Fallback(Exception):
    """A value this module does not reproduce: the enclosing field is serialized by FiftyOne's code."""


def sample_document(ds: fo.Dataset, sample: fo.Sample, now: _dt.datetime) -> dict:
    """``ds._make_dict(sample, created_at=now, last_modified_at=now)``, the same keys, order and values."""
    doc = getattr(sample, "_doc", None)
    if (
        not _SUPPORTED
        or type(sample) is not fo.Sample
        or sample._in_db
        or type(doc).to_dict is not _fomix.NoDatasetMixin.to_dict
    ):
        return ds._make_dict(sample, created_at=now, last_modified_at=now)

    # NoDatasetMixin.to_dict, then _make_dict: no _id, no None values, the dataset id and the dates
    default_fields = doc.default_fields
    d: dict = {}
    for k, v in doc._data.items():
        if k in _MEDIA_FIELDS and v is None:
            continue
        field = default_fields.get(k)
        if isinstance(field, _fof.MediaReferenceField):
            v = field.to_mongo(v)
        if k == "id":
            k = "_id"
        elif isinstance(v, ObjectId) and not k.startswith("_"):
            k = "_" + k
        d[k] = _serialize(v)
    d.pop("_id", None)
    d = {k: v for k, v in d.items() if v is not None}
    d["_dataset_id"] = ds._doc.id
    d["created_at"] = now
    d["last_modified_at"] = now
    return d


def _serialize(v: Any) -> Any:
    """``fiftyone.core.odm.utils.serialize_value(v)``."""
    t = type(v)
    if t in _SCALARS:
        return v
    if t is list or t is tuple:
        return [_serialize(x) for x in v]
    if t is dict:
        return {k: _serialize(x) for k, x in v.items()}
    if isinstance(v, BaseDocument) and t.to_dict is _fodoc.MongoEngineBaseDocument.to_dict:
        return _embedded(v)  # serialize_value calls to_dict, which is to_mongo(use_db_field=True)
    return serialize_value(v)


# --- embedded documents -------------------------------------------------------------------------

class _Layout:
    """How one embedded document class is serialized: ``plan`` 2 (FiftyOne's dynamic documents), 1
    (plain mongoengine embedded documents) or 0 (another ``to_mongo``: call it), and per declared
    field name (field, database key, conversion, whether ``DynamicMixin`` re-serializes the value)."""

    def __init__(self, cls: type):
        methods = tuple(k.__dict__["to_mongo"] for k in cls.__mro__ if "to_mongo" in k.__dict__)
        self.plan = 2 if methods == _DYNAMIC_CHAIN else 1 if methods == _STATIC_CHAIN else 0
        if cls.__iter__ is not BaseDocument.__iter__:
            self.plan = 0
        self.keep_cls = bool(cls._meta.get("allow_inheritance"))
        # DynamicMixin serializes (and may rename) the keys that are no field names, e.g. "_id"
        self.fields = {
            name: (field, field.db_field, _converter(field), self.plan == 2 and field.db_field not in cls._fields)
            for name, field in cls._fields.items()
        } if self.plan else {}


_LAYOUTS: dict[type, _Layout] = {}


def _embedded(doc: Any) -> dict:
    """``doc.to_mongo()`` of an embedded document (mongoengine's ``BaseDocument.to_mongo`` and
    ``EmbeddedDocument.to_mongo``, plus FiftyOne's ``DynamicMixin.to_mongo`` for dynamic documents)."""
    cls = type(doc)
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = _Layout(cls)
    plan = layout.plan
    if plan == 0:
        return doc.to_mongo()
    declared = layout.fields
    data: dict = {"_id": None, "_cls": doc._class_name}
    values = doc._data
    renames = []
    for name in doc._fields_ordered:
        value = values.get(name)
        entry = declared.get(name)
        if entry is not None:
            field, key, conv, reserialize = entry
            if value is not None:
                value = conv(value)
            elif field._auto_gen:
                return doc.to_mongo()  # mongoengine generates the value and stores it
            if reserialize:
                if not isinstance(value, ObjectId):
                    value = serialize_value(value)  # (which leaves ObjectIds as they are)
                elif key != "id" and not key.startswith("_"):
                    renames.append(key)
        else:
            field = doc._dynamic_fields.get(name) if doc._dynamic else None
            if field is None or (value is None and field._auto_gen):
                return doc.to_mongo()  # mongoengine's error, or the value it generates
            key = field.db_field
            if value is not None:
                value = _dynamic_value(field, value) if plan == 2 else field._to_mongo_safe_call(value)
                if plan == 2 and isinstance(value, ObjectId) and key != "id" and not key.startswith("_"):
                    renames.append(key)
        if value is not None or field.null:
            data[key] = value
    if not layout.keep_cls:
        data.pop("_cls")
    if data["_id"] is None:
        del data["_id"]
    for key in renames:  # DynamicMixin stores ObjectIds of dynamic fields under "_" + name, last
        data["_" + key] = data.pop(key)
    return data


def _dynamic_value(field: Any, v: Any) -> Any:
    """``serialize_value(DynamicField.to_mongo(v))``: what ``DynamicMixin`` stores for a dynamic attribute."""
    if type(field).to_mongo is not _MongoDynamic.to_mongo:
        return serialize_value(field._to_mongo_safe_call(v))
    return _dynamic(v)


def _dynamic(v: Any) -> Any:
    t = type(v)
    if t in _SCALARS:
        return v
    if isinstance(v, str):
        return v
    if hasattr(v, "to_mongo"):
        if isinstance(v, _MongoDocument) or not isinstance(v, _MongoEmbedded):
            return serialize_value(_MongoDynamic().to_mongo(v))
        val = _embedded(v)
        val["_cls"] = t.__name__
        return val  # a SON for serialize_value, which leaves it as it is
    if not isinstance(v, (dict, list, tuple)):
        return serialize_value(v)
    if hasattr(v, "items"):
        return {k: _dynamic(x) for k, x in v.items()}
    return [_dynamic(x) for x in v]


# --- field conversions --------------------------------------------------------------------------

_CONVERTERS: dict[int, tuple[Any, Converter]] = {}  # id(declared field) -> (field, conversion)


def _converter(field: Any) -> Converter:
    """A function equal to ``field._to_mongo_safe_call`` (on any value, ``None`` included), or raising
    :class:`_Fallback` for a value it does not reproduce. Declared fields live as long as their
    document classes, so their conversions are kept."""
    hit = _CONVERTERS.get(id(field))
    if hit is not None and hit[0] is field:
        return hit[1]
    conv = _make_converter(field)
    _CONVERTERS[id(field)] = (field, conv)
    return conv


def _to_float(v: Any) -> Any:
    return None if v is None else float(v)


def _to_int(v: Any) -> Any:
    return None if v is None else int(v)


def _to_object_id(v: Any) -> Any:
    # ObjectIdField.to_mongo copies an ObjectId; the copy is equal, and immutable like the original
    return v if type(v) is ObjectId or v is None else ObjectId(v)


def _make_converter(field: Any) -> Converter:
    cls = type(field)
    m = cls.to_mongo
    if m is _fof.FloatField.to_mongo:
        return _to_float
    if m is _fof.IntField.to_mongo:
        return _to_int
    if m is _fof.ObjectIdField.to_mongo:
        return _to_object_id
    if m is BaseField.to_mongo and cls.to_python is _MongoString.to_python:
        return lambda v: v if type(v) is str or v is None else field.to_mongo(v)
    if m is BaseField.to_mongo and cls.to_python is _MongoBool.to_python:
        return lambda v: v if type(v) is bool else field.to_mongo(v)
    if m is _MongoEmbeddedField.to_mongo:
        return lambda v: _embedded_field(field, v)
    if m is ComplexBaseField.to_mongo or m is _fof.DictField.to_mongo:
        return _complex_converter(field, dict_field=m is not ComplexBaseField.to_mongo)
    return lambda v: field._to_mongo_safe_call(v)


def _embedded_field(field: Any, v: Any) -> Any:
    """``EmbeddedDocumentField.to_mongo``: the declared type's ``to_mongo`` on an instance of it."""
    document_type = field.document_type
    if not isinstance(v, document_type):
        return v
    if type(v).to_mongo is not document_type.to_mongo:
        return document_type.to_mongo(v, True, None)
    return _embedded(v)


def _complex_converter(field: Any, dict_field: bool) -> Converter:
    """``ComplexBaseField.to_mongo`` (list, dict fields) and FiftyOne's ``DictField.to_mongo``, which
    serializes untyped dicts with ``serialize_value``."""
    inner = field.field
    if inner is None:
        if dict_field:
            return lambda v: serialize_value(v) if isinstance(v, dict) else field.to_mongo(v)

        def untyped(v: Any) -> Any:
            # each item that is neither a document nor has items is converted by this same
            # method, recursively: plain values come back as they are (they are not iterable).
            # Lists of plain values and lists of such lists (polygon rings) are checked and
            # copied by C loops, not one Python call per point.
            t = type(v)
            if t in _SCALARS:
                return v
            if t not in _LISTS:
                raise _Fallback
            items = _copy(v)
            types = set(map(type, items))
            if types <= _SCALARS:
                return items
            if types <= _LISTS:
                rows = list(map(_copy if tuple in types else list.copy, items))
                if _SCALARS.issuperset(map(type, chain.from_iterable(rows))):
                    return rows
            return [x if type(x) in _SCALARS else _untyped_item(x, untyped) for x in items]

        return _whole(field, untyped)

    item = _converter(inner)
    if item is _to_float:
        def typed(v: Any) -> Any:
            t = type(v)
            if t in _LISTS:
                return [None if x is None else float(x) for x in _items(v)]
            if t in _DICTS:
                return {k: None if x is None else float(x) for k, x in v.items()}
            raise _Fallback
    else:
        def typed(v: Any) -> Any:
            t = type(v)
            if t in _LISTS:
                return [item(x) for x in _items(v)]
            if t in _DICTS:
                return {k: item(x) for k, x in v.items()}
            raise _Fallback

    return _whole(field, typed)


def _items(v: list | tuple) -> Any:
    """The items of a list; a mongoengine ``BaseList`` is read as the plain list it is, skipping its
    generator ``__iter__`` (which yields the same items)."""
    return list.__iter__(v) if type(v) is BaseList else v


def _copy(v: list | tuple) -> list:
    """A plain list of the items of a list or tuple (``list.copy`` reads a ``BaseList`` without its ``__iter__``)."""
    return list(v) if type(v) is tuple else list.copy(v)


def _untyped_item(x: Any, untyped: Converter) -> Any:
    if type(x) in _LISTS:
        return untyped(x)
    raise _Fallback


def _whole(field: Any, conv: Converter) -> Converter:
    """``conv``, or the field's own ``to_mongo`` on the whole value when ``conv`` meets something it
    does not reproduce (an inner fallback would leave the outer list half converted)."""

    def run(v: Any) -> Any:
        if v is None:
            return None
        try:
            return conv(v)
        except _Fallback:
            return field._to_mongo_safe_call(v)

    return run
