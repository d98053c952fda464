"""Preview an audience before saving it: estimated size and a sample of matching profiles.

How it estimates: it reads a bounded sample of the space's profiles (ProfilesTable pages,
filtered to the space and entity, at most `sample_size` profiles and MAX_SCANNED items read),
evaluates the definition on each from its raw event history (`evaluate_from_scratch` over the
newest HISTORY_LIMIT events of ProfileEventsTable, the same reference the engine is tested
against), and scales the matching share to the space's population (the size of the system
audience `all`). Nothing is written.
"""
from __future__ import annotations

from typing import Any

from engage import clock
from engage.audiences import membership, runtime, store
from engage.audiences.evaluator import evaluate_from_scratch
from engage.audiences.management import validate
from engage.errors import ValidationFailed
from engage.profiles_store import ProfileRecord

DEFAULT_SAMPLE = 200
MAX_SAMPLE = 1000
MAX_SCANNED = 20_000  # items read (across spaces) before the sample is taken as it is
HISTORY_LIMIT = 1000
SHOWN = 20
PREVIEW_KEY = "__preview__"  # a key no saved audience can be compared with by mistake


def sample_profiles(space_id: str, entity: str, size: int) -> tuple[list[ProfileRecord], bool]:
    """Up to `size` profiles of the space; True when the whole space was read (the sample is exact)."""
    found: list[ProfileRecord] = []
    condition = (ProfileRecord.space_id == space_id) & (ProfileRecord.collection == entity)
    pages = ProfileRecord.scan(condition, page_size=500).page_iter
    for page in pages:  # raw pages, so the read budget holds even when a page matches nothing
        for raw in page.get("Items", []):
            record = ProfileRecord.from_raw_data(raw)
            if not record.merged_into:
                found.append(record)
        if len(found) > size or pages.total_scanned_count >= MAX_SCANNED:
            return found[:size], False
    return found, True


def profile_item(record: ProfileRecord) -> dict[str, Any]:
    return record.to_simple_dict()


def preview(space_id: str, body: Any, *, sample_size: int = DEFAULT_SAMPLE) -> dict[str, Any]:
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise ValidationFailed(f"sample must be between 1 and {MAX_SAMPLE}",
                               [{"path": "sample", "value": sample_size}])
    if isinstance(body, dict):
        body = {"key": PREVIEW_KEY, "name": "Preview", **body}
    definition = validate(space_id, body)
    if definition.kind != "dynamic":
        raise ValidationFailed("only dynamic audiences can be previewed", [{"path": "kind"}])
    now = clock.now()
    profiles, exhaustive = sample_profiles(space_id, definition.entity, sample_size)
    matched: list[ProfileRecord] = []
    for record in profiles:
        item = profile_item(record)
        flags = membership.flags(membership.current(space_id, record.profile_id))
        if evaluate_from_scratch(definition, runtime.history(space_id, record.profile_id, HISTORY_LIMIT), item.get("traits") or {}, now,
                                 flags, computed_traits=item.get("computed_traits"),
                                 subscriptions=item.get("subscriptions")):
            matched.append(record)
    population = len(profiles) if exhaustive or definition.entity != "users" else store.size(space_id, store.ALL)
    population = max(population, len(profiles))
    estimate = round(len(matched) / len(profiles) * population) if profiles else 0
    return {
        "estimated_size": estimate,
        "exact": exhaustive,
        "sampled": len(profiles),
        "matched": len(matched),
        "population": population,
        "method": ("every profile of the space evaluated" if exhaustive else
                   f"{len(matched)} of {len(profiles)} sampled profiles match, scaled to {population} profiles"),
        "sample": [{"profile_id": r.profile_id, **_ids(r)} for r in matched[:SHOWN]],
    }


def _ids(record: ProfileRecord) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in record.external_ids or []:
        item = dict(item)
        if item.get("type") in ("user_id", "anonymous_id", "email") and item.get("type") not in found:
            found[item["type"]] = item.get("id")
    return found

