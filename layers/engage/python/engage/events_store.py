"""Storage model of ingested events (EventsTable, stream NEW_IMAGE -> profile processor).

pk = space|<u:userId or a:anonymousId>   one partition per identity, so a person's events
                                         share a stream shard and keep their order
sk = messageId                           the dedupe key: a repeated message overwrites the
                                         same item and the processor acts on INSERTs only
"""
from __future__ import annotations

from pynamodb.attributes import NumberAttribute, UnicodeAttribute

from engage.db import EngageModel, TableName


class EventRecord(EngageModel):
    class Meta:
        table_name = TableName("events_table")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    space_id = UnicodeAttribute()
    type = UnicodeAttribute()
    payload = UnicodeAttribute()  # normalized Segment message, JSON text
    received_at = UnicodeAttribute()
    expires_at = NumberAttribute(null=True)  # TTL (epoch seconds)
