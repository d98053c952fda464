"""Suppressed ids: stored hashed (no personal data kept), in IdentityTable beside the id pointers.

pk = <space>|suppressed|<sha256 of "<collection>|<type>:<value>">   one item per suppressed id
A suppressed id's new events are still answered 200 by ingestion (Segment's behaviour); the profile
processor drops them (`suppressed_among`: one BatchGetItem per stream batch for the batch's ids).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pynamodb.attributes import UnicodeAttribute

from engage import clock
from engage.db import EngageModel, TableName, key


class SuppressionRecord(EngageModel):
    class Meta:
        table_name = TableName("identity_table")

    pk = UnicodeAttribute(hash_key=True)
    space_id = UnicodeAttribute()
    created_at = UnicodeAttribute()
    job_id = UnicodeAttribute(null=True)  # the deletion that suppressed it


def id_hash(collection: str, id_type: str, value: str) -> str:
    return hashlib.sha256(f"{collection}|{id_type}:{value}".encode()).hexdigest()


def suppression_pk(space_id: str, collection: str, id_type: str, value: str) -> str:
    return key(space_id, "suppressed", id_hash(collection, id_type, value))


def suppress(space_id: str, ids: Iterable[tuple[str, str, str]], job_id: str | None = None) -> int:
    """Suppress (collection, type, value) ids; idempotent (a put of the same key)."""
    count = 0
    with SuppressionRecord.batch_write() as batch:
        for collection, id_type, value in dict.fromkeys(ids):
            batch.save(SuppressionRecord(suppression_pk(space_id, collection, id_type, value), space_id=space_id,
                                         created_at=clock.iso(), job_id=job_id))
            count += 1
    return count


def unsuppress(space_id: str, collection: str, id_type: str, value: str) -> bool:
    """Lift one id's suppression; False when it was not suppressed."""
    try:
        record = SuppressionRecord.get(suppression_pk(space_id, collection, id_type, value), consistent_read=True)
    except SuppressionRecord.DoesNotExist:
        return False
    record.delete()
    return True


def suppressed_among(space_id: str, ids: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Which of these (collection, type, value) ids are suppressed (one BatchGetItem per 100 ids)."""
    by_pk = {suppression_pk(space_id, *i): i for i in dict.fromkeys(ids)}
    if not by_pk:
        return set()
    return {by_pk[record.pk] for record in SuppressionRecord.batch_get(list(by_pk))}
