"""Broadcasts: one-time email/SMS/push/webhook campaigns to an audience (API.md, docs/broadcasts.md).

    definition   the definition's shape and time rules (pure)
    management   create, read, list, preview, cancel (the management API)
    schedule     EventBridge Scheduler one-time schedules (start, per zone group, audience waits)
    engine       start, snapshot once, fan out to SQS (BroadcastStarterFunction)
    sending      send each recipient once, count exactly, honour the rate limit (BroadcastSenderFunction)
    store        BroadcastsTable: broadcasts, recipients, stats shards, rate buckets
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engage.broadcasts.definition import BroadcastDefinition, parse_definition

__all__ = ["BroadcastDefinition", "parse_definition"]


# Loaded on first use: the definition is pydantic models, and importing a submodule (the management API's
# routes, the sender's store) runs this file; only parsing a definition needs them.
def __getattr__(name: str) -> Any:
    if name in __all__:
        from engage.broadcasts import definition

        return getattr(definition, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
