"""Broadcasts: one-time email/SMS/push/webhook campaigns to an audience (API.md, docs/broadcasts.md).

    definition   the definition's shape and time rules (pure)
    management   create, read, list, preview, cancel (the management API)
    schedule     EventBridge Scheduler one-time schedules (start, per zone group, audience waits)
    engine       start, snapshot once, fan out to SQS (BroadcastStarterFunction)
    sending      send each recipient once, count exactly, honour the rate limit (BroadcastSenderFunction)
    store        BroadcastsTable: broadcasts, recipients, stats shards, rate buckets
"""
from engage.broadcasts.definition import BroadcastDefinition, parse_definition

__all__ = ["BroadcastDefinition", "parse_definition"]
