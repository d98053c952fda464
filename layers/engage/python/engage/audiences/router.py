"""Membership changes -> `Audience Entered` / `Audience Exited` on the stack's EventBridge bus.

Reads MembershipsTable stream records (NEW_AND_OLD_IMAGES). A record is a change when `member`
differs between the old and the new image. Publishing is idempotent on (space, profile,
audience, item version) through the powertools idempotency utility (DynamoDB persistence,
TTL), so a replayed or retried stream record never publishes twice.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from engage import clock
from engage.config import settings
from engage.db import key
from engage.observability import logger, metrics
from engage.profiles_store import ProfileRecord

SOURCE = "engage"
ENTERED, EXITED = "Audience Entered", "Audience Exited"
# Stream records live 24 h; remembering a publication for 2 days covers every redelivery.
IDEMPOTENCY_SECONDS = 2 * 24 * 3600


def change_of(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The membership change a stream record carries (plain images), or None when `member` did not flip."""
    if not new:
        return None  # item removed: not a membership change
    was = bool(old.get("member")) if old else False
    now_member = bool(new.get("member"))
    if was == now_member:
        return None
    timestamp = new.get("entered_at") if now_member else new.get("exited_at")
    return {"space_id": new["space_id"], "profile_id": new["profile_id"], "audience_key": new["audience_key"],
            "member": now_member, "version": int(new.get("version") or 0),
            "timestamp": timestamp or new.get("updated_at") or clock.iso()}


def profile_ids(space_id: str, profile_id: str) -> dict[str, Any]:
    """user_id, anonymous_id, email (first of each) and every external id of the profile."""
    try:
        profile = ProfileRecord.get(key(space_id, profile_id))
        external = [dict(x) for x in (profile.external_ids or [])]
    except ProfileRecord.DoesNotExist:
        external = []
    found: dict[str, Any] = {"user_id": None, "anonymous_id": None, "email": None}
    for item in external:
        id_type = item.get("type")
        if id_type in found and found[id_type] is None:
            found[id_type] = item.get("id")
    return found


def detail_of(change: dict[str, Any]) -> dict[str, Any]:
    return {"space": change["space_id"], "audience_key": change["audience_key"],
            "profile_id": change["profile_id"], **profile_ids(change["space_id"], change["profile_id"]),
            "timestamp": change["timestamp"], "version": change["version"]}


@lru_cache(maxsize=1)
def _events_client():
    return boto3.client("events")


def _put(change: dict[str, Any]) -> dict[str, Any]:
    detail_type = ENTERED if change["member"] else EXITED
    entry = {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail_of(change)),
             "EventBusName": settings().require("event_bus_name")}
    result = _events_client().put_events(Entries=[entry])
    if result.get("FailedEntryCount"):
        failed = result["Entries"][0]
        raise RuntimeError(f"EventBridge refused {detail_type}: {failed.get('ErrorCode')} {failed.get('ErrorMessage')}")
    metrics.add_metric(name=detail_type.replace(" ", ""), unit="Count", value=1)
    logger.info("published", extra={"detail_type": detail_type, **change})
    return {"event_id": result["Entries"][0].get("EventId"), "detail_type": detail_type}


@lru_cache(maxsize=1)
def _config() -> IdempotencyConfig:
    return IdempotencyConfig(event_key_jmespath="[space_id, profile_id, audience_key, to_string(version)]",
                             expires_after_seconds=IDEMPOTENCY_SECONDS)


def register_context(context: Any) -> None:
    """Let the idempotency utility know the invocation's deadline (in-progress records expire with it)."""
    _config().register_lambda_context(context)


@lru_cache(maxsize=1)
def _idempotent_put():
    persistence = DynamoDBPersistenceLayer(table_name=settings().require("idempotency_table"))
    config = _config()

    @idempotent_function(data_keyword_argument="change", persistence_store=persistence, config=config)
    def publish(change: dict[str, Any]) -> dict[str, Any]:
        return _put(change)

    return publish


def publish(change: dict[str, Any]) -> dict[str, Any]:
    """Publish one membership change exactly once (a repeat returns the first publication's result)."""
    return _idempotent_put()(change=change)


def route(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    change = change_of(old, new)
    return publish(change) if change else None


def reset() -> None:
    """Drop cached clients (tests build a fresh cloud per test)."""
    _events_client.cache_clear()
    _idempotent_put.cache_clear()
    _config.cache_clear()
