"""Membership stream -> destinations (DestinationRouterFunction, the stream's second consumer).

Per MembershipsTable stream batch: each record that flips `member` (audiences.changes.change_of,
the same rule the bus publication uses) is a change; the space's destinations are read once per
batch (one Query of ConfigTable per space) and each connected destination gets the change:
- realtime (not paused): a DestinationsQueue message in the group <space>|<destination>|<profile>
  (SendMessageBatch, 10 a call), deduplicated by its delivery id;
- batch, or paused: an entry in the destination's change log (coalesced as it is written).
A record whose sends fail is reported as a batch item failure and retried by the mapping (its
repeats are deduplicated: SQS's 5 minutes, then the deliverer's sequence check, the log's version
condition). The stream keeps one shard's records in order, so a profile's changes are queued in order.

A destination connected while changes flow: the backfill (management) queues current members; a
change written after the connect is routed here (the destinations are read per batch, uncached),
and the sequence check orders the two by membership version.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engage import clock
from engage.audiences.changes import StreamRecord, change_of
from engage.destinations import changelog, identities, payloads, queue, store
from engage.failures import handler as failure_handler
from engage.observability import logger


def route_batch(records: Sequence[StreamRecord]) -> list[str]:
    """Queue or log every change for its connected destinations; the sequence numbers to retry."""
    store.clear_cache()  # destinations read fresh once per batch: a new connection is never missed
    routed: list[tuple[str, dict[str, Any]]] = []
    failed: list[str] = []
    for record in records:
        try:
            change = change_of(record.old, record.new)
        except (KeyError, TypeError, ValueError) as error:
            failure_handler.remember(record.sequence_number, f"unreadable record: {failure_handler.describe(error)}")
            failed.append(record.sequence_number)
            continue
        if change is None:
            continue
        for destination in store.connected(change["space_id"], change["audience_key"]):
            routed.append((record.sequence_number, {**change, "destination": destination.key,
                                                     "incarnation": destination.created_at}))
    if not routed:
        return failed
    _fill_identities([c for _, c in routed])
    by_record: dict[str, list[dict[str, Any]]] = {}
    logged: list[tuple[str, dict[str, Any]]] = []
    for sequence_number, change in routed:
        destination = store.cached(change["space_id"], change["destination"])
        if destination is not None and (destination.definition.mode == "batch" or destination.definition.paused):
            logged.append((sequence_number, change))
        else:
            by_record.setdefault(sequence_number, []).append(change)
    try:
        changelog.append([c for _, c in logged])
    except (BotoCoreError, ClientError) as error:
        for sequence_number in {s for s, _ in logged}:
            failure_handler.remember(sequence_number, f"change log write failed: {error}")
            failed.append(sequence_number)
    messages, owners = [], []
    for sequence_number, changes in by_record.items():
        for change in changes:
            messages.append(queue.change_message(change))
            owners.append(sequence_number)
    try:
        refused = queue.send(messages)
    except (BotoCoreError, ClientError) as error:
        logger.exception("queueing destination changes failed")
        for sequence_number in dict.fromkeys(owners):
            failure_handler.remember(sequence_number, f"SendMessageBatch failed: {error}")
        return sorted(set(failed) | set(owners))
    refused_ids = {m["MessageDeduplicationId"] for m in refused}
    for message, sequence_number in zip(messages, owners, strict=True):
        if message["MessageDeduplicationId"] in refused_ids:
            failure_handler.remember(sequence_number, "SQS refused the destination message")
            failed.append(sequence_number)
    return sorted(set(failed))


def route_trait_changes(details: Sequence[dict[str, Any]]) -> list[int]:
    """`Computed Trait Changed` details (from the bus, through DestinationTraitChangesQueue) -> each destination
    connected to the trait: queued (realtime) or logged (batch, paused). The indexes of details to retry.

    EventBridge does not keep order, so order is the sequence check's: a change carries the profile's
    version, and a destination is never sent a trait value older than one it was sent (final state wins).
    """
    store.clear_cache()
    routed: list[tuple[int, dict[str, Any]]] = []
    failed: set[int] = set()
    for index, detail in enumerate(details):
        try:
            space_id, trait_key, profile_id = detail["space"], detail["computed_trait_key"], detail["profile_id"]
            version = int(detail.get("version") or 0)
        except (KeyError, TypeError, ValueError):
            logger.warning("unreadable Computed Trait Changed detail dropped", extra={"detail": str(detail)[:500]})
            continue
        for destination in store.connected_traits(space_id, trait_key):
            routed.append((index, {
                "type": payloads.TRAIT_CHANGE, "space_id": space_id, "destination": destination.key,
                "incarnation": destination.created_at, "audience_key": payloads.trait_slot(trait_key), "computed_trait_key": trait_key,
                "entity": "users", "profile_id": profile_id, "member": True, "version": version,
                "timestamp": detail.get("timestamp") or clock.iso(),
                "identity": {name: detail.get(name) for name in payloads.IDENTITY_FIELDS},
                "value": detail.get("value"), "previous_value": detail.get("previous_value"), "backfill": False}))
    logged = [(i, c) for i, c in routed if _collecting(c)]
    queued = [(i, c) for i, c in routed if not _collecting(c)]
    try:
        changelog.append([c for _, c in logged])
    except (BotoCoreError, ClientError):
        logger.exception("change log write failed")
        failed |= {i for i, _ in logged}
    try:
        messages = [queue.change_message(c) for _, c in queued]
        refused = {m["MessageDeduplicationId"] for m in queue.send(messages)}
    except (BotoCoreError, ClientError):
        logger.exception("queueing computed trait changes failed")
        return sorted(failed | {i for i, _ in queued})
    failed |= {i for (i, _), m in zip(queued, messages, strict=True) if m["MessageDeduplicationId"] in refused}
    return sorted(failed)


def _collecting(change: dict[str, Any]) -> bool:
    destination = store.cached(change["space_id"], change["destination"])
    return destination is not None and (destination.definition.mode == "batch" or destination.definition.paused)


def _fill_identities(changes: list[dict[str, Any]]) -> None:
    """Each change's ids and entity: the membership's own identity, else the profile's (one BatchGet)."""
    entities: dict[tuple[str, str], str] = {}
    missing: dict[str, set[str]] = {}
    for change in changes:
        slot = (change["space_id"], change["audience_key"])
        if slot not in entities:
            entities[slot] = identities.entity_of(*slot)
        change["entity"] = entities[slot]
        identity = change.get("identity") or {}
        if change["entity"] == "accounts" or not any(identity.values()):
            missing.setdefault(change["space_id"], set()).add(change["profile_id"])
    found = {space: identities.profile_identities(space, sorted(ids)) for space, ids in missing.items()}
    for change in changes:
        identity = dict(change.get("identity") or {})
        extra = found.get(change["space_id"], {}).get(change["profile_id"], {})
        change["identity"] = {name: identity.get(name) or extra.get(name) for name in payloads.IDENTITY_FIELDS}
