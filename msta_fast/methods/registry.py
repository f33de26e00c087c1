"""Method name -> :class:`~msta_fast.methods.base.Method`: what ``msta_fast.patch(model, name)`` and
``recipes/train.py --methods a,b`` look up. Add your own with :func:`register_method`."""

from __future__ import annotations

from msta_fast.methods import adaptformer, full, lora, m2clip, msta, zero
from msta_fast.methods.base import Method

_METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (msta, lora, adaptformer, full, zero, m2clip)}


def register_method(method: Method, *, replace: bool = False) -> Method:
    if method.name in _METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)
