"""`Computed Trait Changed` on the project's bus, from the profile stream (API.md "Events on the bus").

The audience evaluator hands each ProfilesTable stream record's images to `changes`, and publishes
a batch's changes once the batch is evaluated. Delivery is at least once: a redelivered record
publishes again, with the same `version` (the profile's), which a consumer can dedupe on.
"""
from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Any

import boto3

from engage.audiences.membership import identity_of
from engage.config import settings

SOURCE = "engage"
CHANGED = "Computed Trait Changed"
MAX_ENTRIES_PER_PUT = 10


def changes(old: dict | None, new: dict | None) -> list[dict[str, Any]]:
    """The details of every computed trait whose value differs between the images (pure)."""
    if not new or new.get("merged_into") or "space_id" not in new:
        return []
    before, after = (old or {}).get("computed_traits") or {}, new.get("computed_traits") or {}
    ids = identity_of(new.get("external_ids"))
    out = []
    for trait_key in sorted(before.keys() | after.keys()):
        if trait_key in after and trait_key in before and _plain(after[trait_key]) == _plain(before[trait_key]):
            continue
        out.append({"space": new["space_id"], "computed_trait_key": trait_key, "profile_id": new["profile_id"],
                    **ids, "value": _plain(after.get(trait_key)), "previous_value": _plain(before.get(trait_key)),
                    "timestamp": new.get("updated_at"), "version": int(new.get("version") or 0)})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def publish(details: list[dict[str, Any]]) -> int:
    """PutEvents, 10 a call; returns how many EventBridge refused (the caller retries their records)."""
    refused = 0
    bus = settings().require("event_bus_name")
    for start in range(0, len(details), MAX_ENTRIES_PER_PUT):
        entries = [{"Source": SOURCE, "DetailType": CHANGED, "Detail": json.dumps(d), "EventBusName": bus}
                   for d in details[start:start + MAX_ENTRIES_PER_PUT]]
        refused += int(_events().put_events(Entries=entries).get("FailedEntryCount", 0))
    return refused


@lru_cache(maxsize=1)
def _events():
    return boto3.client("events")


def reset() -> None:
    _events.cache_clear()
