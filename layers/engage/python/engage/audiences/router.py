"""Membership changes -> `Audience Entered` / `Audience Exited` on the stack's EventBridge bus.

Reads MembershipsTable stream records (NEW_AND_OLD_IMAGES) a batch at a time. A record is a
change when `member` differs between the old and the new image. Per batch:

1. one BatchGetItem on IdempotencyTable (per 100 changes) finds the changes already published;
2. the rest are built from the stream image: the profile's ids come from the membership's
   `identity` (written by the evaluator from the profile image it decided from); only items
   without it (written before it existed, manual edits, merges) read the profile, all such
   profiles in one BatchGetItem per 100;
3. PutEvents sends up to 10 entries (and 256 KB) per call; each entry's result is checked:
   a refused entry (or a call that fails) makes its record a batch item failure, retried
   by the event source mapping;
4. each published change is recorded as a COMPLETED powertools idempotency record (same table,
   key, format and expiry as the `idempotent_function` decorator), 25 per BatchWriteItem,
   written only after EventBridge accepted the entry, as soon as 25 are pending.

Guarantee: at least once, and exactly once unless the invocation dies (or the recording write
fails) between PutEvents accepting an entry and its record being written; then a redelivery
publishes that change again. A replayed or regrouped batch whose changes were recorded
publishes nothing. Consumers can drop such a duplicate by (space, profile_id, audience_key,
version), which identifies one change. No INPROGRESS lock is written: a stream shard is
processed by one invocation at a time, so nothing else can publish the same change meanwhile.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.shared.json_encoder import Encoder
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS
from botocore.exceptions import BotoCoreError, ClientError

from engage import clock
from engage.audiences.membership import IDENTITY_FIELDS, identity_of
from engage.config import settings
from engage.db import key
from engage.failures import handler as failure_handler
from engage.observability import logger, metrics
from engage.profiles_store import ProfileRecord

SOURCE = "engage"
ENTERED, EXITED = "Audience Entered", "Audience Exited"
# Stream records live 24 h; remembering a publication for 2 days covers every redelivery.
IDEMPOTENCY_SECONDS = 2 * 24 * 3600
# EventBridge PutEvents: at most 10 entries and 256 KB per call.
MAX_ENTRIES_PER_PUT = 10
MAX_BYTES_PER_PUT = 256 * 1024
# DynamoDB: BatchGetItem reads up to 100 keys, BatchWriteItem writes up to 25 items.
MAX_KEYS_PER_READ, MAX_ITEMS_PER_WRITE = 100, 25
# Unprocessed keys/items (throttling) are retried this many times, backing off, before giving up.
BATCH_ATTEMPTS = 5
# The key prefix the `idempotent_function` decorator gave these records before publishing was
# batched: records written by the previous router version keep deduplicating across a deploy.
KEY_PREFIX_FUNCTION = "engage.audiences.router._idempotent_put.<locals>.publish"


def change_of(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The membership change a stream record carries (plain images), or None when `member` did not flip.

    `identity` is the profile ids the membership item carries, or None for items without them.
    """
    if not new:
        return None  # item removed: not a membership change
    was = bool(old.get("member")) if old else False
    now_member = bool(new.get("member"))
    if was == now_member:
        return None
    timestamp = new.get("entered_at") if now_member else new.get("exited_at")
    identity = new.get("identity")
    return {"space_id": new["space_id"], "profile_id": new["profile_id"], "audience_key": new["audience_key"],
            "member": now_member, "version": int(new.get("version") or 0),
            "timestamp": timestamp or new.get("updated_at") or clock.iso(),
            "identity": {name: identity.get(name) for name in IDENTITY_FIELDS} if isinstance(identity, dict) else None}


def profile_ids(space_id: str, profile_id: str) -> dict[str, Any]:
    """user_id, anonymous_id, email (first of each) of a stored profile (the fallback read)."""
    return profile_identities([(space_id, profile_id)])[(space_id, profile_id)]


def profile_identities(profiles: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ids of stored profiles, 100 per BatchGetItem; a profile that is gone has none."""
    wanted = {key(space_id, profile_id): (space_id, profile_id) for space_id, profile_id in profiles}
    found = {pair: identity_of(None) for pair in wanted.values()}
    for profile in ProfileRecord.batch_get(list(wanted), attributes_to_get=["pk", "external_ids"]):
        found[wanted[profile.pk]] = identity_of(dict(x) for x in (profile.external_ids or []))
    return found


def detail_of(change: dict[str, Any], identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event's detail (API.md): the ids are the change's own, else `identity`, else read from the profile."""
    ids = change.get("identity") or identity or profile_ids(change["space_id"], change["profile_id"])
    return {"space": change["space_id"], "audience_key": change["audience_key"],
            "profile_id": change["profile_id"], **ids,
            "timestamp": change["timestamp"], "version": change["version"]}


def entry_of(change: dict[str, Any], identity: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Source": SOURCE, "DetailType": ENTERED if change["member"] else EXITED,
            "Detail": json.dumps(detail_of(change, identity)), "EventBusName": settings().require("event_bus_name")}


def entry_size(entry: dict[str, Any]) -> int:
    """An entry's size as EventBridge counts it against the 256 KB per call (Source, DetailType, Detail)."""
    return sum(len(entry[name].encode()) for name in ("Source", "DetailType", "Detail"))


def put_groups(entries: Sequence[dict[str, Any]]) -> Iterator[list[int]]:
    """Indexes of `entries` grouped into PutEvents calls (at most 10 entries and 256 KB each)."""
    group: list[int] = []
    size = 0
    for index, entry in enumerate(entries):
        grown = size + entry_size(entry)
        if group and (len(group) == MAX_ENTRIES_PER_PUT or grown > MAX_BYTES_PER_PUT):
            yield group
            group, grown = [], entry_size(entry)
        group.append(index)
        size = grown
    if group:
        yield group


# ---------------------------------------------------------------- the publication log
class PublicationLog(DynamoDBPersistenceLayer):
    """Powertools idempotency records of published changes, read and written a batch at a time.

    Keys, item format and expiry are the persistence layer's own (`event_key_jmespath` over the
    change); only COMPLETED records are written, once EventBridge accepted the change.
    """

    def key_of(self, change: dict[str, Any]) -> str:
        return self._get_hashed_idempotency_key(change)

    def completed(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """(keys with a live COMPLETED record, keys whose lookup stayed unprocessed)."""
        pending = [self._get_key(k) for k in dict.fromkeys(keys)]
        done: set[str] = set()
        for attempt in range(BATCH_ATTEMPTS):
            unprocessed = []
            for start in range(0, len(pending), MAX_KEYS_PER_READ):
                request = {self.table_name: {"Keys": pending[start:start + MAX_KEYS_PER_READ], "ConsistentRead": True}}
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    # INPROGRESS (left by a crashed invocation of the decorator era) or expired: publish again
                    if self._item_to_data_record(item).status == STATUS_CONSTANTS["COMPLETED"]:
                        done.add(self._item_to_key(item))
                unprocessed += response.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
            pending = unprocessed
            if not pending or attempt == BATCH_ATTEMPTS - 1:
                break
            _back_off(attempt)
        return done, {self._item_to_key(k) for k in pending}

    def record(self, results: dict[str, dict[str, Any]]) -> set[str]:
        """Write a COMPLETED record per key (value = the publication); return the keys left unwritten."""
        expiry = str(self._get_expiry_timestamp())
        pending = [{"PutRequest": {"Item": {
            **self._get_key(k), self.expiry_attr: {"N": expiry},
            self.status_attr: {"S": STATUS_CONSTANTS["COMPLETED"]},
            self.data_attr: {"S": json.dumps(result, cls=Encoder, sort_keys=True)}}}} for k, result in results.items()]
        for attempt in range(BATCH_ATTEMPTS):
            unprocessed = []
            for start in range(0, len(pending), MAX_ITEMS_PER_WRITE):
                response = self.client.batch_write_item(
                    RequestItems={self.table_name: pending[start:start + MAX_ITEMS_PER_WRITE]})
                unprocessed += response.get("UnprocessedItems", {}).get(self.table_name, [])
            pending = unprocessed
            if not pending or attempt == BATCH_ATTEMPTS - 1:
                break
            _back_off(attempt)
        return {self._item_to_key(request["PutRequest"]["Item"]) for request in pending}

    def _item_to_key(self, item: dict[str, Any]) -> str:
        return item[self.sort_key_attr or self.key_attr]["S"]


def _back_off(attempt: int) -> None:
    time.sleep(0.05 * 2 ** attempt)  # unprocessed items mean throttling: give the table a moment


@lru_cache(maxsize=1)
def _log() -> PublicationLog:
    log = PublicationLog(table_name=settings().require("idempotency_table"))
    log.configure(IdempotencyConfig(event_key_jmespath="[space_id, profile_id, audience_key, to_string(version)]",
                                    expires_after_seconds=IDEMPOTENCY_SECONDS), KEY_PREFIX_FUNCTION)
    return log


@lru_cache(maxsize=1)
def _events_client():
    return boto3.client("events")


# ---------------------------------------------------------------- routing a batch
@dataclass(frozen=True)
class StreamRecord:
    """One MembershipsTable stream record: its sequence number (the batch item id) and plain images."""

    sequence_number: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass
class _Pending:
    change: dict[str, Any]
    sequence_numbers: list[str]


def route_batch(records: Sequence[StreamRecord]) -> list[str]:
    """Publish every membership change of a stream batch once; return the sequence numbers to retry."""
    failed: list[str] = []
    by_key: dict[str, _Pending] = {}
    log = _log()
    for record in records:
        try:
            change = change_of(record.old, record.new)
        except (KeyError, TypeError, ValueError) as error:
            logger.exception("unreadable membership stream record", extra={"sequence_number": record.sequence_number})
            failure_handler.remember(record.sequence_number, f"unreadable record: {failure_handler.describe(error)}")
            failed.append(record.sequence_number)
            continue
        if change is None:
            continue
        pending = by_key.setdefault(log.key_of(change), _Pending(change, []))
        pending.sequence_numbers.append(record.sequence_number)  # a repeat in one batch publishes once

    done, unknown = log.completed(by_key) if by_key else (set(), set())
    todo = {k: p for k, p in by_key.items() if k not in done and k not in unknown}
    for k in unknown:  # cannot tell whether it was published: retry rather than risk a duplicate
        for sequence_number in by_key[k].sequence_numbers:
            failure_handler.remember(sequence_number, "the publication log could not be read: retried rather "
                                                      "than risk publishing twice")
        failed.extend(by_key[k].sequence_numbers)

    published: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    unrecorded: set[str] = set()
    to_record: dict[str, dict[str, Any]] = {}
    for accepted, refused_now in _publish(todo):
        published |= accepted
        refused += refused_now
        to_record |= accepted
        # Record as soon as a full BatchWriteItem is pending: a crash re-publishes at most 24 + 10.
        while len(to_record) >= MAX_ITEMS_PER_WRITE:
            full = dict(list(to_record.items())[:MAX_ITEMS_PER_WRITE])
            to_record = {k: v for k, v in to_record.items() if k not in full}
            unrecorded |= _record(log, full)
    unrecorded |= _record(log, to_record)
    for k in refused:
        for sequence_number in todo[k].sequence_numbers:
            failure_handler.remember(sequence_number, "EventBridge refused the entry or PutEvents failed (see logs)")
        failed.extend(todo[k].sequence_numbers)
    _report(len(by_key), len(done), published, refused, unrecorded, todo)
    return failed


def _record(log: PublicationLog, accepted: dict[str, dict[str, Any]]) -> set[str]:
    """Record accepted changes as published; the keys that could not be recorded."""
    if not accepted:
        return set()
    try:
        return log.record(accepted)
    except (BotoCoreError, ClientError):  # already on the bus: failing their records would re-publish them now
        logger.exception("recording published changes failed")
        return set(accepted)


def _publish(todo: dict[str, _Pending]) -> Iterator[tuple[dict[str, dict[str, Any]], list[str]]]:
    """PutEvents for every pending change, 10 a call; per call (key -> publication of accepted ones, keys refused)."""
    keys = list(todo)
    without_ids = {(p.change["space_id"], p.change["profile_id"]) for p in todo.values() if p.change["identity"] is None}
    identities = profile_identities(without_ids) if without_ids else {}
    entries = [entry_of(todo[k].change, identities.get((todo[k].change["space_id"], todo[k].change["profile_id"])))
               for k in keys]
    for group in put_groups(entries):
        try:
            result = _events_client().put_events(Entries=[entries[i] for i in group])
        except (BotoCoreError, ClientError):
            logger.exception("PutEvents failed; its changes will be retried", extra={"entries": len(group)})
            yield {}, [keys[i] for i in group]
            continue
        accepted: dict[str, dict[str, Any]] = {}
        refused: list[str] = []
        for index, outcome in zip(group, result["Entries"], strict=True):
            if outcome.get("EventId") and not outcome.get("ErrorCode"):
                accepted[keys[index]] = {"event_id": outcome["EventId"], "detail_type": entries[index]["DetailType"]}
            else:
                logger.warning("EventBridge refused an entry; its record will be retried",
                               extra={"error_code": outcome.get("ErrorCode"), "error": outcome.get("ErrorMessage"),
                                      **{f: todo[keys[index]].change[f] for f in ("space_id", "profile_id",
                                                                                  "audience_key", "version")}})
                refused.append(keys[index])
        yield accepted, refused


def _report(changes: int, already: int, published: dict[str, dict[str, Any]], refused: list[str],
            unrecorded: set[str], todo: dict[str, _Pending]) -> None:
    for detail_type in (ENTERED, EXITED):
        count = sum(1 for p in published.values() if p["detail_type"] == detail_type)
        if count:
            metrics.add_metric(name=detail_type.replace(" ", ""), unit="Count", value=count)
    if refused:
        metrics.add_metric(name="AudienceEventsRefused", unit="Count", value=len(refused))
    if unrecorded:
        # Published but not remembered: a later redelivery of these records publishes them again.
        metrics.add_metric(name="AudienceEventsUnrecorded", unit="Count", value=len(unrecorded))
        logger.error("published changes could not be recorded; a redelivery would publish them again",
                     extra={"changes": [{f: todo[k].change[f] for f in ("space_id", "profile_id", "audience_key",
                                                                        "version")} for k in unrecorded]})
    logger.info("routed", extra={"changes": changes, "already_published": already, "published": len(published),
                                 "refused": len(refused)})


def reset() -> None:
    """Drop cached clients (tests build a fresh cloud per test)."""
    _events_client.cache_clear()
    _log.cache_clear()
