"""One EventBridge Scheduler schedule per batch destination (created, updated, deleted with it).

The schedule invokes DestinationBatchFunction with {"space_id", "destination"} through
DestinationSchedulerRole, which may invoke that one function and nothing else. Names are a digest
of (space, key) under the stack's prefix: at most 64 characters whatever the keys, and unique.
Scheduler bills per invocation ($1.00 per million; 14 million free a month): an hourly schedule is
720 invocations a month.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import boto3
from botocore.exceptions import ClientError

from engage.config import settings
from engage.destinations.definition import DestinationDefinition


@lru_cache(maxsize=1)
def _scheduler():
    return boto3.client("scheduler")


def name_of(space_id: str, destination_key: str) -> str:
    digest = hashlib.sha256(f"{space_id}|{destination_key}".encode()).hexdigest()[:32]
    return f"engage-dst-{digest}"


def _arguments(space_id: str, definition: DestinationDefinition) -> dict:
    config = settings()
    assert definition.schedule is not None
    return {"Name": name_of(space_id, definition.key), "ScheduleExpression": definition.schedule.expression,
            "ScheduleExpressionTimezone": definition.schedule.timezone, "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "DISABLED" if definition.paused else "ENABLED",
            "Description": f"engage destination {space_id}/{definition.key}: batch delivery",
            "Target": {"Arn": config.require("destination_batch_function_arn"),
                       "RoleArn": config.require("destination_scheduler_role_arn"),
                       "Input": json.dumps({"space_id": space_id, "destination": definition.key}),
                       "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600}}}


def put(space_id: str, definition: DestinationDefinition) -> str:
    """Create or update the destination's schedule; its name."""
    arguments = _arguments(space_id, definition)
    try:
        _scheduler().update_schedule(**arguments)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        _scheduler().create_schedule(**arguments)
    return arguments["Name"]


def remove(space_id: str, destination_key: str) -> None:
    try:
        _scheduler().delete_schedule(Name=name_of(space_id, destination_key))
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
