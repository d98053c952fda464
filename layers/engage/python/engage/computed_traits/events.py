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

from engage.audiences.bus import entry_size
from engage.audiences.membership import identity_of
from engage.audiences.router import MAX_BYTES_PER_PUT, put_groups  # 10 entries, 256 KB a call
from engage.config import settings
from engage.observability import logger, metrics

SOURCE = "engage"
CHANGED = "Computed Trait Changed"


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
    """PutEvents, at most 10 entries and 256 KB a call; returns how many EventBridge refused (the caller
    retries their records). An entry over 256 KB alone is not sent (see below)."""
    refused = 0
    bus = settings().require("event_bus_name")
    entries = []
    for detail in details:
        entry = {"Source": SOURCE, "DetailType": CHANGED, "Detail": json.dumps(detail), "EventBusName": bus}
        if entry_size(entry) > MAX_BYTES_PER_PUT:
            # AWS refuses it every time: counted as refused, it failed its record (and its batch's others)
            # until parked. Left out, logged with where it came from; the profile API has the value.
            logger.error("Computed Trait Changed over 256 KB not published", extra={
                "space": detail.get("space"), "computed_trait_key": detail.get("computed_trait_key"),
                "profile_id": detail.get("profile_id"), "version": detail.get("version"),
                "bytes": entry_size(entry)})
            metrics.add_metric(name="ComputedTraitEventsTooLarge", unit="Count", value=1)
            continue
        entries.append(entry)
    for group in put_groups(entries):
        response = _events().put_events(Entries=[entries[i] for i in group])
        refused += int(response.get("FailedEntryCount", 0))
    return refused


@lru_cache(maxsize=1)
def _events():
    return boto3.client("events")


def reset() -> None:
    _events.cache_clear()
