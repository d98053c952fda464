"""Modules loaded on first use, for handlers that import a module for one route or one rare path.

    management = lazy.module("engage.audiences.management")   # nothing executed yet
    management.create(...)                                     # executes the module, then calls

A Lambda's cold start is its imports plus its first invocation: a module that only some routes or
some messages use belongs to the invocation that uses it, not to every cold start. This is the
standard library's `importlib.util.LazyLoader`: the module object is in `sys.modules` at once and
runs its code on the first attribute access, so `from x import module`, `mock.patch("x.y")` and
`module.name` keep working. Only for modules whose import has no side effect the caller relies on
(route registration, for one, must stay eager).
"""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """`name` as a module object whose code runs on its first attribute access (at once if loaded)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)  # imports the parent packages, as `import name` would
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, loaded)
    return loaded
