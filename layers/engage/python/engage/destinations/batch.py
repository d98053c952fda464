"""A batch destination's scheduled run (DestinationBatchFunction, invoked by its Scheduler schedule).

webhook / segment / eventbridge: the change log (already coalesced: one entry per profile and
audience, its final state) is read a page at a time and sent in requests of `batch_size` changes
(webhook: {"batch": [...]}; segment: /v1/batch of 100 calls; eventbridge: PutEvents of 10); each
request that succeeds deletes its entries (on condition that their version did not move), each
taking one rate-limit token. A request refused for good (a 4xx but 408/409/429) has its changes parked
(the deliverer's, replayable) and the run goes on; the first other failure ends the run, and so does the function's time running
out (a request never outlasts it): what was not delivered stays in the log for the next run (nothing is lost however long the receiver is down; the status shows the error).

s3: a snapshot per connected audience per run, the audience's current members in the audience
export's layouts (CSV: unformatted / formatted / single_column, the same row writer) or JSONL (one
{"profile_id", "external_ids"} object a line), to s3://<bucket>/<prefix><destination>/<audience>/
<run time>.<csv|jsonl>; the change log is not used.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import boto3

from engage import clock, lazy
from engage.config import settings
from engage.destinations import changelog, parking, ratelimit, senders, store
from engage.observability import logger

# Snapshot destinations only (a full member list written with the audience export's layouts): loaded by the
# first snapshot, not by a change-log drain.
export = lazy.module("engage.audiences.export")
# Every run reads its destination's definition (engage.destinations.store loads the definition language on
# first use, for the routers): this function loads it at init, as its first run will.
store.definitions.parse_definition  # noqa: B018

# What a run keeps of its time after a request (the log's deletes, the status); a request with less than
# MIN_SEND_SECONDS left is not started: the rest of the log waits for the next run.
AFTER_SEND_SECONDS, MIN_SEND_SECONDS = 5.0, 1.0
SEGMENT_BATCH = 100  # calls per /v1/batch: well inside 500 KB for membership calls
EVENTBRIDGE_BATCH = 10


def run(space_id: str, destination_key: str, seconds_left: Callable[[], float] | None = None) -> dict[str, Any]:
    """`seconds_left`: the invocation's time left; a drain stops while it can still record what it did."""
    destination = store.find(space_id, destination_key)
    if destination is None:
        return {"delivered": 0, "why": "destination deleted"}
    if destination.definition.paused:
        return {"delivered": 0, "why": "paused"}
    store.note_run(space_id, destination_key)
    if destination.definition.type == "s3":
        return snapshot(destination)
    return drain(destination, seconds_left)


def _chunk_size(destination: store.Destination) -> int:
    kind = destination.definition.type
    if kind == "webhook":
        return int(destination.definition.config.get("batch_size", 100))
    return SEGMENT_BATCH if kind == "segment" else EVENTBRIDGE_BATCH


def drain(destination: store.Destination, seconds_left: Callable[[], float] | None = None) -> dict[str, Any]:
    secrets = store.get_secrets(destination.space_id, destination.key) if destination.secret_hints else {}
    send = senders.SENDERS[destination.definition.type]
    size = _chunk_size(destination)
    delivered = requests = 0
    for page in changelog.pages(destination.space_id, destination.key):
        for start in range(0, len(page), size):
            chunk = page[start:start + size]
            budget = None if seconds_left is None else seconds_left() - AFTER_SEND_SECONDS
            if budget is not None and budget < MIN_SEND_SECONDS:
                _note(destination, delivered)
                return {"delivered": delivered, "requests": requests, "why": "time: the rest next run"}
            if ratelimit.take(destination):  # no token this second: the rest waits for the next run
                return {"delivered": delivered, "requests": requests, "why": "rate limit: the rest next run"}
            outcome = send(destination.definition.config, secrets, chunk, batched=True, seconds_left=budget)
            requests += outcome.requests
            if outcome.status == senders.PERMANENT:
                # Refused for good (a 4xx such as 413): ending the run here ended every run at this chunk, and
                # the log behind it never drained. Parked, as a realtime delivery is; a replay logs them again.
                _park(destination, chunk, outcome.reason)
                continue
            if not outcome.ok:
                _note(destination, delivered)
                store.note_failure(destination.space_id, destination.key, outcome.reason)
                logger.warning("batch delivery failed; the rest waits for the next run",
                               extra={"destination": destination.key, "reason": outcome.reason})
                return {"delivered": delivered, "requests": requests, "why": outcome.reason}
            changelog.remove(chunk)
            delivered += len(chunk)
    _note(destination, delivered)
    return {"delivered": delivered, "requests": requests}


def _park(destination: store.Destination, chunk: list[dict[str, Any]], reason: str) -> None:
    function = settings().destination_deliverer_function or "destination_deliverer"
    for change in chunk:
        parking.park(function, change, reason)
    changelog.remove(chunk)
    store.note_failure(destination.space_id, destination.key, reason, parked=len(chunk))
    logger.warning("batch request refused: its changes parked", extra={"destination": destination.key,
                                                                       "parked": len(chunk), "reason": reason})


def _note(destination: store.Destination, delivered: int) -> None:
    if delivered:
        store.note_success(destination.space_id, destination.key, delivered)


@lru_cache(maxsize=1)
def _s3():
    return boto3.client("s3")


def snapshot(destination: store.Destination) -> dict[str, Any]:
    config = destination.definition.config
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    written = {}
    for audience_key in destination.audiences:
        members = export._with_ids(destination.space_id, export._member_pages(destination.space_id, audience_key))
        sink = io.StringIO()
        if config.get("format", "csv") == "jsonl":
            rows = sum(sink.write(json.dumps({"profile_id": pid, "audience_key": audience_key, "external_ids": ids},
                                             sort_keys=True) + "\n") > 0 for pid, ids in members)
            extension = "jsonl"
        else:
            opts = export.options(config.get("csv_format", "unformatted"), None, None)
            rows = _csv(opts, sink, members)
            extension = "csv"
        object_key = f"{config.get('prefix', '')}{destination.key}/{audience_key}/{stamp}.{extension}"
        _s3().put_object(Bucket=config["bucket"], Key=object_key, Body=sink.getvalue().encode(),
                         ContentType="text/csv" if extension == "csv" else "application/x-ndjson")
        written[audience_key] = {"key": object_key, "rows": rows}
    store.note_success(destination.space_id, destination.key, sum(w["rows"] for w in written.values()))
    return {"objects": written}


def _csv(opts, sink, members) -> int:
    if opts.fmt == "formatted":
        members = list(members)  # formatted sizes its columns over every member first
        widest: dict[str, int] = {}
        for _, ids in members:
            export._widen(widest, ids)
        return export._write_rows(opts, sink, members, widest)
    return export._write_rows(opts, sink, members, {})
