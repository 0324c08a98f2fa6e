"""How results are stored: model instances (a list of them, or one) as plain
tuples, anything else pickled.

A list of model instances is the common result, and unpickling it is most of a
hit's cost: pickle rebuilds each instance through ``model_unpickle``, which looks
the model up in the app registry and runs ``__setstate__``, for every instance
and every ``select_related`` object. Here each instance is stored as
``(model, attribute names, values, db, related)`` and rebuilt with
``Model.__new__`` and one ``__dict__`` assignment, the way ``Model.from_db``
would without running ``__init__`` (so no ``pre_init``/``post_init`` signals,
as with pickle). Names tuples are shared between rows, so pickle stores them
once. Results with prefetched querysets or memoryviews fall back to pickle.
"""

from __future__ import annotations

import pickle
from typing import Any

from django.apps import apps
from django.db.models import Model
from django.db.models.base import ModelState

__all__ = ["dumps", "loads"]

_ROWS = b"R"
_ROW = b"O"
_PICKLE = b"P"
_classes: dict[tuple[str, str], type[Model]] = {}


class _Fallback(Exception):
    pass


def dumps(value: Any) -> bytes:
    """Serialise a result (raises what pickle raises for what it cannot store)."""
    if type(value) is list and value and all(isinstance(obj, Model) for obj in value):
        try:
            names: dict[tuple[str, ...], tuple[str, ...]] = {}
            rows = [_encode(obj, names) for obj in value]
        except _Fallback:
            pass
        else:
            return _ROWS + pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    elif isinstance(value, Model):  # one instance: get()'s, a cached function's value
        try:
            row = _encode(value, {})
        except _Fallback:
            pass
        else:
            return _ROW + pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
    return _PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    kind, body = data[:1], data[1:]
    if kind == _ROWS:
        return [_decode(row) for row in pickle.loads(body)]
    if kind == _ROW:
        return _decode(pickle.loads(body))
    if kind == _PICKLE:
        return pickle.loads(body)
    raise ValueError("not a perfkit cache payload")


def _encode(obj: Model, names: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[Any, ...]:
    state = obj.__dict__
    if "_prefetched_objects_cache" in state:
        raise _Fallback
    keys = tuple(key for key in state if key != "_state")
    keys = names.setdefault(keys, keys)
    values = tuple(state[key] for key in keys)
    if any(type(v) is memoryview for v in values):
        raise _Fallback
    model_state = obj._state
    related = None
    cache = model_state.fields_cache
    if cache:
        related = {
            name: None if rel is None else _encode(rel, names) for name, rel in cache.items()
        }
    meta = obj._meta
    return (meta.app_label, meta.object_name, keys, values, model_state.db, related)


def _decode(row: tuple[Any, ...]) -> Any:
    app_label, object_name, keys, values, db, related = row
    cls: Any = _classes.get((app_label, object_name))
    if cls is None:
        cls = _classes[(app_label, object_name)] = apps.get_model(app_label, object_name)
    obj = cls.__new__(cls)
    state = dict(zip(keys, values, strict=True))
    model_state = ModelState()
    model_state.db = db
    model_state.adding = False
    if related:
        model_state.fields_cache = {
            name: None if rel is None else _decode(rel) for name, rel in related.items()
        }
    state["_state"] = model_state
    obj.__dict__ = state
    return obj
