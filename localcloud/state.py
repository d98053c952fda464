"""--state-dir: keep the local cloud's data across restarts.

moto can reset its state but not export it, and pickling its backends drags along threads
and locks, so the snapshot is data, keyed by the template's logical ids (physical names
change on every deploy): every table's items, every queue's waiting messages, and the
virtual clock's offset. On start the stack is deployed fresh and the snapshot written
back with stream records suppressed (restoring is not new activity: nothing is
re-processed). Step Functions executions, EventBridge archives and Lambda logs are not kept.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path

from localcloud import aws

log = logging.getLogger("localcloud.state")
SNAPSHOT = "snapshot.json"
VERSION = 1


def save(state_dir: Path, cloud: aws.MotoCloud, deployment: aws.Deployment, clock_offset: timedelta) -> Path:
    dynamodb = cloud.client("dynamodb")
    tables = {}
    for logical_id, name in deployment.of_type("AWS::DynamoDB::Table").items():
        items = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=name):
            items.extend(page["Items"])
        tables[logical_id] = items
    queues = {}
    for logical_id, url in deployment.of_type("AWS::SQS::Queue").items():
        queues[logical_id] = [{"Body": m.body} for m in _queue_messages(cloud, url)]
    snapshot = {"version": VERSION, "clock_offset_seconds": clock_offset.total_seconds(),
                "tables": tables, "queues": queues}
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SNAPSHOT
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(snapshot))
    os.replace(partial, path)  # never leave half a snapshot behind
    return path


def restore(state_dir: Path, cloud: aws.MotoCloud, deployment: aws.Deployment) -> timedelta | None:
    """Write a saved snapshot back; returns the clock offset to restore, or None if there was none."""
    path = state_dir / SNAPSHOT
    if not path.exists():
        return None
    try:
        snapshot = json.loads(path.read_text())
    except ValueError as error:
        raise RuntimeError(f"{path} is not a readable snapshot ({error}): move it away to start empty") from error
    if snapshot.get("version") != VERSION:
        raise RuntimeError(f"{path} was written by another version of the local cloud: move it away")
    dynamodb = cloud.client("dynamodb")
    tables = deployment.of_type("AWS::DynamoDB::Table")
    with aws.streams_suppressed():
        for logical_id, items in snapshot["tables"].items():
            if logical_id not in tables:
                log.warning("snapshot table %s is no longer in the template: skipped", logical_id)
                continue
            for start in range(0, len(items), 25):
                requests = [{"PutRequest": {"Item": item}} for item in items[start:start + 25]]
                try:
                    dynamodb.batch_write_item(RequestItems={tables[logical_id]: requests})
                except Exception as error:
                    raise RuntimeError(f"{path}: items of {logical_id} no longer fit the table the template "
                                       f"declares ({error}): move the snapshot away to start empty") from error
    sqs = cloud.client("sqs")
    queues = deployment.of_type("AWS::SQS::Queue")
    for logical_id, messages in snapshot.get("queues", {}).items():
        for message in messages:
            if logical_id in queues:
                sqs.send_message(QueueUrl=queues[logical_id], MessageBody=message["Body"])
    return timedelta(seconds=snapshot.get("clock_offset_seconds", 0))


def _queue_messages(cloud: aws.MotoCloud, url: str) -> list:
    # Reading through the API would change receive counts and visibility: read moto's queue instead.
    from moto.sqs.models import sqs_backends

    backend = sqs_backends[aws.ACCOUNT_ID][cloud.region]
    queue = backend.queues.get(url.rsplit("/", 1)[-1])
    return list(queue._messages) if queue is not None else []
