"""Which journeys name a template or a destination: a delete of either answers 409 listing them.

The same mechanism audiences and computed traits use for their references (issue 15): the referrers
are computed from the live definitions when a delete is asked (one Query of the space's journeys), not
kept as a reverse index. A journey that is not archived counts, draft or published: its draft (what
would publish next) and its published version (what runs now) are both read.
"""
from __future__ import annotations

from engage.journeys import store

FIELDS = {"send": "template", "sync": "destination"}


def referrers(space_id: str, step_type: str, target_key: str) -> list[dict[str, str]]:
    """[{"type": "journey", "key", "path"}] of the space's journeys whose `step_type` steps name `target_key`."""
    field = FIELDS[step_type]
    found: list[dict[str, str]] = []
    for journey in store.list_all(space_id):
        paths: dict[str, None] = {}
        for definition in (journey.definition, journey.published_definition or {}):
            for step_id, step in (definition.get("steps") or {}).items():
                if isinstance(step, dict) and step.get("type") == step_type and step.get(field) == target_key:
                    paths[f"steps.{step_id}.{field}"] = None
        found += [{"type": "journey", "key": journey.key, "path": path} for path in paths]
    return found


def refuse_if_referenced(space_id: str, what: str, step_type: str, target_key: str) -> None:
    """409 naming each journey (and step) that uses `target_key`."""
    from engage.errors import Conflict

    found = referrers(space_id, step_type, target_key)
    if found:
        raise Conflict(f"{what} {target_key!r} is referenced by {len(found)} journey step(s): "
                       + ", ".join(f"journey {r['key']!r} at {r['path']}" for r in found)
                       + "; change or delete them first", found)

