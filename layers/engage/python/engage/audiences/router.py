"""Membership changes -> `Audience Entered` / `Audience Exited` on the stack's EventBridge bus (or, opted in,
one `Audience Memberships Changed` per profile evaluation: engage.audiences.bus), and the audiences' size counters.

Reads MembershipsTable stream records (NEW_AND_OLD_IMAGES) a batch at a time. A record is a
change when `member` differs between the old and the new image. Per batch:

1. the publication log (IdempotencyTable) is read, one item per profile evaluation (space,
   profile, profile version: every change one evaluation wrote shares it; a change without a
   profile version is its own item), BatchGetItem per 100: it holds the changes already
   published as `<audience>#<membership version>` in a string set;
2. the rest are built from the stream image: the profile's ids come from the membership's
   `identity` (written by the evaluator from the profile image it decided from); only items
   without it (written before it existed, manual edits, merges) read the profile, all such
   profiles in one BatchGetItem per 100. With `AUDIENCE_EVENT_GROUPING=change` (the default) each
   change is one entry; with `evaluation` the batch's changes that share a log item are one entry
   (several if they would exceed 64 KB, EventBridge's billing unit);
3. PutEvents sends up to 10 entries (and 256 KB) per call; each entry's result is checked:
   a refused entry (or a call that fails) makes the records of all of its changes batch item
   failures, retried by the event source mapping;
4. the accepted changes are committed: their elements are added to their log items and each
   audience's size counter moves by the batch's net count of them (+1 an entry, -1 an exit). The
   counters of a space's audiences are packed in pages (engage.audiences.store: a page item holds
   many audiences' counters within one write unit), so a commit writes one item per page it moves,
   a shard item picked at random to spread a hot page; all in one TransactWriteItems
   whose log updates are conditioned on the elements being absent. A count therefore moves
   exactly when its change is first recorded: a replay, a retried transaction whose answer was
   lost, or a regrouped batch counts nothing twice. Changes written before the router counted
   (no `router_counts` on the image) are recorded but not counted: their writer counted them.
   A commit that fails makes its records batch item failures (their counts must not be lost).
   Steps 1 and 4 are the same in both groupings: the log is per change, whatever carried it.

Guarantee: sizes exact, each change counted once; publication at least once, and exactly once
unless the invocation dies (or the commit fails) between PutEvents accepting an entry and its
commit; then a redelivery publishes that change again (and counts it then, once); with grouping,
the redelivered entry carries only the evaluation's changes not yet recorded. Consumers can drop
such a duplicate by (space, profile_id, audience_key, version), which identifies one change in
either shape. No lock is written: a stream shard is processed by one invocation at a time, and all
of a profile's memberships share a partition key, so nothing else publishes the same change meanwhile.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from engage import clock
from engage.audiences import bus, store
from engage.audiences.changes import StreamRecord, change_of
from engage.audiences.membership import identity_of
from engage.config import settings
from engage.db import back_off as _back_off  # its own name: tests skip the waits
from engage.db import consistent_batch_get, key
from engage.failures import handler as failure_handler
from engage.observability import logger, metrics
from engage.profiles_store import ProfileRecord

SOURCE = bus.SOURCE
ENTERED, EXITED, CHANGED = bus.ENTERED, bus.EXITED, bus.CHANGED
# Stream records live 24 h; remembering a publication for 2 days covers every redelivery.
IDEMPOTENCY_SECONDS = 2 * 24 * 3600
# EventBridge PutEvents: at most 10 entries and 256 KB per call.
MAX_ENTRIES_PER_PUT = 10
MAX_BYTES_PER_PUT = 256 * 1024
# DynamoDB: BatchGetItem reads up to 100 keys; TransactWriteItems writes up to 100 items.
MAX_ITEMS_PER_TRANSACTION = 100
# Commit as soon as this many accepted changes are pending: a crash re-publishes at most this many - 1 plus
# the changes of one PutEvents call (10 entries: 10 changes, or 10 evaluations' with grouping).
COMMIT_EVERY = 50
# Unprocessed keys (throttling) and conflicting transactions are retried this many times, backing off.
BATCH_ATTEMPTS = 5
LOG_PREFIX = "engage.audiences.router.published"
# The key prefix the previous routers gave their per-change powertools idempotency records.
LEGACY_KEY_PREFIX = "engage.audiences.router._idempotent_put.<locals>.publish"


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
    return bus.change_detail(change, ids)


def entry_of(change: dict[str, Any], identity: dict[str, Any] | None = None) -> dict[str, Any]:
    ids = change.get("identity") or identity or profile_ids(change["space_id"], change["profile_id"])
    return bus.change_entry(change, ids, settings().require("event_bus_name"))


entry_size = bus.entry_size


def grouping() -> str:
    """`change` (one entry per change, the default) or `evaluation` (one per profile evaluation): the
    AudienceEventGrouping template parameter."""
    mode = settings().audience_event_grouping or bus.CHANGE
    if mode not in bus.GROUPINGS:
        raise RuntimeError(f"AUDIENCE_EVENT_GROUPING is {mode!r}: it must be one of {', '.join(bus.GROUPINGS)} "
                           "(template.yaml's AudienceEventGrouping parameter)")
    return mode


def entries_of(changes: Sequence[dict[str, Any]], mode: str, identities: dict[tuple[str, str], dict[str, Any]],
               bus_name: str) -> list[tuple[dict[str, Any], list[int]]]:
    """The PutEvents entries that publish `changes` in `mode`, each with the indexes of the changes it
    carries, in the changes' order (pure). `evaluation` groups the changes that share a publication log
    item (one profile evaluation; a change without a profile version is alone in its item). A change's
    ids are its own, else `identities[(space, profile)]`, else none."""
    blank = identity_of(None)

    def ids(change: dict[str, Any]) -> dict[str, Any]:
        return change["identity"] or identities.get((change["space_id"], change["profile_id"])) or blank

    if mode == bus.CHANGE:
        return [(bus.change_entry(change, ids(change), bus_name), [index]) for index, change in enumerate(changes)]
    evaluations: dict[str, list[int]] = {}
    for index, change in enumerate(changes):
        evaluations.setdefault(log_id(change), []).append(index)
    out: list[tuple[dict[str, Any], list[int]]] = []
    for indexes in evaluations.values():
        members = [changes[i] for i in indexes]
        known = next((c for c in members if c["identity"]), members[0])
        for entry, carried in bus.evaluation_entries(members, ids(known), bus_name):
            out.append((entry, [indexes[i] for i in carried]))
    return out


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
def log_id(change: dict[str, Any]) -> str:
    """The log item a change is recorded in: one per profile evaluation (hashed: no ids in the key)."""
    if change["profile_version"] is not None:
        parts = [change["space_id"], change["profile_id"], "v", change["profile_version"]]
    else:
        parts = [change["space_id"], change["profile_id"], change["audience_key"], change["version"]]
    return f"{LOG_PREFIX}#{hashlib.sha256(json.dumps(parts).encode()).hexdigest()}"


def element_of(change: dict[str, Any]) -> str:
    return f"{change['audience_key']}#{change['version']}"


class PublicationLog:
    """Published changes in IdempotencyTable (`id`, TTL `expiration`), read and committed a batch at a time."""

    def __init__(self, table_name: str, config_table: str):
        self.table_name, self.config_table = table_name, config_table
        self.client = boto3.client("dynamodb")

    def published(self, ids: Iterable[str]) -> tuple[dict[str, set[str]], set[str]]:
        """(log id -> elements recorded, for live items; ids whose read stayed unprocessed)."""
        found: dict[str, set[str]] = {}
        now = int(clock.now().timestamp())
        items, unprocessed = consistent_batch_get(self.client, self.table_name,
                                                   [{"id": {"S": i}} for i in dict.fromkeys(ids)],
                                                   attempts=BATCH_ATTEMPTS,
                                                   ProjectionExpression="id, published, expiration")
        for item in items:
            if int(item.get("expiration", {}).get("N", "0")) > now:  # expired, not yet removed: forgotten
                found[item["id"]["S"]] = set(item.get("published", {}).get("SS", []))
        return found, {k["id"]["S"] for k in unprocessed}

    def commit(self, changes: Sequence[dict[str, Any]]) -> None:
        """Record `changes` as published and count the counted ones, each exactly once (see the module)."""
        # The page count of each space read once: the chunks and their transactions name the same items.
        layout = {space_id: _pages(space_id) for space_id in {c["space_id"] for c in changes if c["counted"]}}
        for chunk in _chunks(changes, layout):
            self._commit_chunk(chunk, layout)

    def _commit_chunk(self, chunk: list[dict[str, Any]], layout: dict[str, int]) -> None:
        for attempt in range(BATCH_ATTEMPTS):
            if not chunk:
                return
            items = self._transaction(chunk, layout)
            try:
                if any(i["Update"]["TableName"] == self.config_table for i in items):
                    self.client.transact_write_items(TransactItems=items)
                else:  # nothing to count: each log update is safe alone, at half a transaction's price
                    for item in items:
                        self.client.update_item(**item["Update"])
                return
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                reasons = [r.get("Code") for r in error.response.get("CancellationReasons", [])]
                if code == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in reasons:
                    # Some were recorded meanwhile (a retried commit whose answer was lost): keep the others.
                    recorded, _ = self.published({log_id(c) for c in chunk})
                    chunk = [c for c in chunk if element_of(c) not in recorded.get(log_id(c), set())]
                    continue
                if code == "TransactionCanceledException" and "TransactionConflict" in reasons or \
                        code in ("TransactionConflictException", "ProvisionedThroughputExceededException",
                                 "ThrottlingException"):
                    _back_off(attempt)
                    continue
                raise
        raise RuntimeError(f"committing {len(chunk)} published changes kept conflicting")

    def _transaction(self, chunk: list[dict[str, Any]], layout: dict[str, int]) -> list[dict[str, Any]]:
        elements: dict[str, list[str]] = {}
        deltas: dict[tuple[str, int], dict[str, int]] = {}  # (space, page) -> audience -> net count
        for change in chunk:
            elements.setdefault(log_id(change), []).append(element_of(change))
            if change["counted"]:
                counters = deltas.setdefault(_page_of(change, layout), {})
                counters[change["audience_key"]] = counters.get(change["audience_key"], 0) + \
                    (1 if change["member"] else -1)
        expiry = str(int(clock.now().timestamp()) + IDEMPOTENCY_SECONDS)
        items: list[dict[str, Any]] = []
        for item_id, recorded in elements.items():
            values = {f":e{i}": {"S": e} for i, e in enumerate(recorded)}
            items.append({"Update": {
                "TableName": self.table_name, "Key": {"id": {"S": item_id}},
                "UpdateExpression": "ADD published :published SET expiration = :expiry",
                "ConditionExpression": " AND ".join(f"NOT contains(published, {v})" for v in values),
                "ExpressionAttributeValues": {**values, ":published": {"SS": recorded}, ":expiry": {"N": expiry}}}})
        for (space_id, page), counters in deltas.items():
            moved = [(audience_key, delta) for audience_key, delta in sorted(counters.items()) if delta]
            if not moved:
                continue
            # One item for the page's audiences (a shard picked at random, spreading a hot page).
            page_key = store.size_page_key(space_id, page, random.randrange(store.SIZE_SHARDS))
            items.append({"Update": {
                "TableName": self.config_table, "Key": page_key,
                "UpdateExpression": "ADD " + ", ".join(f"#c{i} :d{i}" for i in range(len(moved))),
                "ExpressionAttributeNames": {f"#c{i}": store.counter_name(k) for i, (k, _) in enumerate(moved)},
                "ExpressionAttributeValues": {f":d{i}": {"N": str(d)} for i, (_, d) in enumerate(moved)}}})
        return items


# ---------------------------------------------------------------- size counter pages
# space -> (monotonic time the page count expires, page count). A stale count is harmless (sizes sum every
# page), so each warm container re-reads the space's audience keys at most this often.
_layouts: dict[str, tuple[float, int]] = {}
LAYOUT_SECONDS = 300.0


def _pages(space_id: str) -> int:
    hit = _layouts.get(space_id)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    pages = store.size_pages(audience.key for audience in store.list_all(space_id))
    _layouts[space_id] = (time.monotonic() + LAYOUT_SECONDS, pages)
    return pages


def _page_of(change: dict[str, Any], layout: dict[str, int]) -> tuple[str, int]:
    """The counter page a counted change moves: its space and its page of the space's `layout` count."""
    return change["space_id"], store.size_page(change["audience_key"], layout[change["space_id"]])


@lru_cache(maxsize=1)
def _legacy_log():
    """The previous routers' log, read only for changes written before the router counted sizes: its module
    brings powertools' idempotency utility, which the router's cold start otherwise never pays for."""
    from engage.audiences import router_legacy

    return router_legacy.log()


def _chunks(changes: Sequence[dict[str, Any]], layout: dict[str, int]) -> Iterator[list[dict[str, Any]]]:
    """`changes` in groups whose log items and counters fit one transaction (each item named once)."""
    chunk: list[dict[str, Any]] = []
    named: set = set()
    for change in changes:
        adds = {log_id(change)} | ({_page_of(change, layout)} if change["counted"] else set())
        if len(named | adds) > MAX_ITEMS_PER_TRANSACTION:
            yield chunk
            chunk, named = [], set()
        chunk.append(change)
        named |= adds
    if chunk:
        yield chunk


@lru_cache(maxsize=1)
def _log() -> PublicationLog:
    return PublicationLog(settings().require("idempotency_table"), settings().require("config_table"))


@lru_cache(maxsize=1)
def _events_client():
    return boto3.client("events")


# ---------------------------------------------------------------- routing a batch
@dataclass
class _Pending:
    change: dict[str, Any]
    sequence_numbers: list[str] = field(default_factory=list)


def route_batch(records: Sequence[StreamRecord]) -> list[str]:
    """Publish and count every membership change of a stream batch once; return the sequence numbers to retry."""
    failed: list[str] = []
    by_key: dict[tuple[str, str], _Pending] = {}
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
        pending = by_key.setdefault((log_id(change), element_of(change)), _Pending(change))
        pending.sequence_numbers.append(record.sequence_number)  # a repeat in one batch publishes once

    recorded, unknown = log.published({item_id for item_id, _ in by_key}) if by_key else ({}, set())
    done = {k for k in by_key if k[1] in recorded.get(k[0], set())}
    unknown_keys = {k for k in by_key if k[0] in unknown}
    earlier = [p.change for k, p in by_key.items() if not p.change["counted"] and k not in done | unknown_keys]
    if earlier:
        legacy_done, legacy_unknown = _legacy_log().published(earlier)
        done |= legacy_done
        unknown_keys |= legacy_unknown
    todo = {k: p for k, p in by_key.items() if k not in done and k not in unknown_keys}
    for k, pending in by_key.items():
        if k in unknown_keys:  # cannot tell whether it was published: retry rather than risk a duplicate
            for sequence_number in pending.sequence_numbers:
                failure_handler.remember(sequence_number, "the publication log could not be read: retried rather "
                                                          "than risk publishing twice")
            failed.extend(pending.sequence_numbers)

    published: dict = {}
    refused: list = []
    uncommitted: list = []
    to_commit: list = []
    for accepted, refused_now in _publish(todo):
        published |= accepted
        refused += refused_now
        to_commit += list(accepted)
        if len(to_commit) >= COMMIT_EVERY:
            uncommitted += _commit(log, to_commit, todo)
            to_commit = []
    uncommitted += _commit(log, to_commit, todo)
    for k in refused:
        for sequence_number in todo[k].sequence_numbers:
            failure_handler.remember(sequence_number, "EventBridge refused the entry or PutEvents failed (see logs)")
        failed.extend(todo[k].sequence_numbers)
    for k in uncommitted:
        for sequence_number in todo[k].sequence_numbers:
            failure_handler.remember(sequence_number, "published, but recording and counting it failed (see logs)")
        failed.extend(todo[k].sequence_numbers)
    _report(len(by_key), len(done), published, refused, uncommitted, todo)
    return failed


def _commit(log: PublicationLog, keys: list, todo: dict) -> list:
    """Commit accepted changes; the keys whose commit failed (retried: their counts must not be lost)."""
    if not keys:
        return []
    try:
        log.commit([todo[k].change for k in keys])
    except (BotoCoreError, ClientError, RuntimeError):
        logger.exception("recording and counting published changes failed; they will be retried",
                         extra={"changes": len(keys)})
        return keys
    return []


def _publish(todo: dict[Any, _Pending]) -> Iterator[tuple[dict[Any, dict[str, Any]], list[Any]]]:
    """PutEvents for every pending change (one entry each, or one per profile evaluation: `grouping()`),
    10 entries a call; per call (key -> publication of accepted changes, keys of refused changes). An
    entry's changes share its fate: all accepted, or all refused."""
    keys = list(todo)
    changes = [todo[k].change for k in keys]
    without_ids = {(c["space_id"], c["profile_id"]) for c in changes if c["identity"] is None}
    identities = profile_identities(without_ids) if without_ids else {}
    units = entries_of(changes, grouping(), identities, settings().require("event_bus_name"))
    entries = [entry for entry, _ in units]
    for group in put_groups(entries):
        try:
            result = _events_client().put_events(Entries=[entries[i] for i in group])
        except (BotoCoreError, ClientError):
            logger.exception("PutEvents failed; its changes will be retried", extra={"entries": len(group)})
            yield {}, [keys[c] for i in group for c in units[i][1]]
            continue
        accepted: dict[Any, dict[str, Any]] = {}
        refused: list[Any] = []
        for index, outcome in zip(group, result["Entries"], strict=True):
            carried = [keys[c] for c in units[index][1]]
            if outcome.get("EventId") and not outcome.get("ErrorCode"):
                for k in carried:
                    accepted[k] = {"event_id": outcome["EventId"], "member": todo[k].change["member"]}
            else:
                first = todo[carried[0]].change
                logger.warning("EventBridge refused an entry; its records will be retried",
                               extra={"error_code": outcome.get("ErrorCode"), "error": outcome.get("ErrorMessage"),
                                      "changes": len(carried), "detail_type": entries[index]["DetailType"],
                                      **{f: first[f] for f in ("space_id", "profile_id", "audience_key", "version")}})
                refused += carried
        yield accepted, refused


def _report(changes: int, already: int, published: dict, refused: list, uncommitted: list,
            todo: dict[Any, _Pending]) -> None:
    for detail_type, member in ((ENTERED, True), (EXITED, False)):  # changes published, whatever the grouping
        count = sum(1 for p in published.values() if p["member"] == member)
        if count:
            metrics.add_metric(name=detail_type.replace(" ", ""), unit="Count", value=count)
    if refused:
        metrics.add_metric(name="AudienceEventsRefused", unit="Count", value=len(refused))
    if uncommitted:
        # Published but not recorded: their redelivery publishes them again (and counts them, once).
        metrics.add_metric(name="AudienceEventsUncommitted", unit="Count", value=len(uncommitted))
    # A line per batch was a third of the router's log bytes: the counts are metrics above; the line is a
    # warning when something was refused or left uncommitted, else DEBUG.
    log = logger.warning if refused or uncommitted else logger.debug
    log("routed", extra={"changes": changes, "already_published": already, "published": len(published),
                         "entries": len({p["event_id"] for p in published.values()}),
                         "refused": len(refused), "uncommitted": len(uncommitted)})


def reset() -> None:
    """Drop cached clients (tests build a fresh cloud per test)."""
    _events_client.cache_clear()
    _log.cache_clear()
    _legacy_log.cache_clear()
    _layouts.clear()
