"""Audiences: the definition language and its pure, incremental evaluation.

Runtime parts (management, memberships, stream evaluation, sweeper) live in sibling modules
and build on this surface.
"""
from __future__ import annotations

import re
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engage.audiences.aggregates import (
        apply_event,
        build_condition_state,
        drop_unused,
        merge_condition_state,
    )
    from engage.audiences.definition import (
        AudienceDefinition,
        check_references,
        parse_condition,
        parse_definition,
    )
    from engage.audiences.evaluator import ProfileView, evaluate, evaluate_from_scratch, next_change_at
    from engage.audiences.index import AudienceIndex, Dependencies, dependencies

# Values the management API documents, kept here so its routes are declared without loading the modules
# that use them: the preview's sample bounds (engage.audiences.preview), the export's layouts and hashes
# (engage.audiences.export), the members page's largest size (engage.audiences.management).
DEFAULT_SAMPLE = 200
MAX_SAMPLE = 1000
EXPORT_FORMATS = ("unformatted", "formatted", "single_column")
EXPORT_HASHES = ("sha256", "none")
MEMBERS_MAX_PAGE = 1000
# An audience (or computed trait) key: here so the stores check a key without loading the definition language.
KEY_PATTERN = re.compile(r"^[a-z0-9_]{1,64}$")

# Where each name of the surface lives. Loaded on first use, not with the package: most functions import
# one runtime module (membership, store, router...) and must not pay for the whole language with it.
_SURFACE = {
    "aggregates": ("apply_event", "build_condition_state", "drop_unused", "merge_condition_state"),
    "definition": ("AudienceDefinition", "check_references", "parse_condition", "parse_definition"),
    "evaluator": ("ProfileView", "evaluate", "evaluate_from_scratch", "next_change_at"),
    "index": ("AudienceIndex", "Dependencies", "dependencies"),
}
_HOME = {name: module for module, names in _SURFACE.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = globals()[name] = getattr(import_module(f"engage.audiences.{_HOME[name]}"), name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AudienceDefinition",
    "AudienceIndex",
    "Dependencies",
    "ProfileView",
    "apply_event",
    "build_condition_state",
    "check_references",
    "dependencies",
    "drop_unused",
    "evaluate",
    "evaluate_from_scratch",
    "merge_condition_state",
    "next_change_at",
    "parse_condition",
    "parse_definition",
]
