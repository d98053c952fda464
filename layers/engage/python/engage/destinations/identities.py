"""Who a membership change is about, for its payload: the audience's entity and the profile's ids.

Shared by the router (it fills changes before queueing them) and delivery (backfill pages, syncs), and
kept apart from delivery so the routers do not load the senders they never call.
"""
from __future__ import annotations

from engage import lazy
from engage.db import key
from engage.destinations import payloads

# Loaded on first use: changes carry their profile's ids (profiles are read only for items written without
# them), and the audience store brings the whole audience language, needed only once a change is routed.
audience_store = lazy.module("engage.audiences.store")
profiles_store = lazy.module("engage.profiles_store")


def profile_identities(space_id: str, profile_ids: list[str]) -> dict[str, dict[str, str | None]]:
    """user_id, anonymous_id, email and group_id of profiles (first of each), 100 per BatchGetItem."""
    found: dict[str, dict[str, str | None]] = {pid: dict.fromkeys(payloads.IDENTITY_FIELDS) for pid in profile_ids}
    for start in range(0, len(profile_ids), 100):
        chunk = [key(space_id, pid) for pid in profile_ids[start:start + 100]]
        for record in profiles_store.ProfileRecord.batch_get(chunk, attributes_to_get=["pk", "external_ids"]):
            ids = found[record.pk.split("|", 1)[1]]
            for entry in record.external_ids or []:
                entry = dict(entry)
                if entry.get("type") in ids and ids[entry["type"]] is None:
                    ids[entry["type"]] = entry.get("id")
    return found


def entity_of(space_id: str, audience_key: str) -> str:
    for audience in audience_store.cached(space_id):
        if audience.key == audience_key:
            return audience.entity
    return "users"
