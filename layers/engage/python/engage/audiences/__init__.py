"""Audiences: the definition language and its pure, incremental evaluation.

Runtime parts (management, memberships, stream evaluation, sweeper) live in sibling modules
and build on this surface.
"""
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
from engage.audiences.evaluator import (
    ProfileView,
    evaluate,
    evaluate_from_scratch,
    next_change_at,
)
from engage.audiences.index import AudienceIndex, Dependencies, dependencies

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
