"""Storage models of profiles, identity pointers and per-profile event history.

Shapes (owned by engage.profiles / engage.identity; read by the Profile API and the
audience engine straight from stream images, so keep them plain maps and lists):

ProfilesTable  pk = space|profile_id            one item per profile (stream NEW_AND_OLD_IMAGES)
IdentityTable  pk = space|<collection>|type:value  -> profile_id   (who is `user_id:42`?)
ProfileEventsTable pk = space|profile_id, sk = <iso timestamp>|<messageId>   event history
"""
from __future__ import annotations

from pynamodb.attributes import (
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)

from engage.db import EngageModel, TableName


class ProfileRecord(EngageModel):
    class Meta:
        table_name = TableName("profiles_table")

    pk = UnicodeAttribute(hash_key=True)
    space_id = UnicodeAttribute()
    profile_id = UnicodeAttribute()
    collection = UnicodeAttribute(default="users")  # users | accounts
    # Custom traits, and for each trait the timestamp of the event that set it
    # (last writer by event time wins, so out-of-order and replayed events converge).
    traits = MapAttribute(default=dict)
    trait_times = MapAttribute(default=dict)
    # External ids: [{"type": "email", "id": "a@b.c", "created_at": iso, "source": message_id}]
    external_ids = ListAttribute(default=list)
    # Windowed aggregates for the audience engine: event name -> {"YYYYMMDD": count}
    daily_counts = MapAttribute(default=dict)
    # event name -> {"first": iso, "last": iso, "total": n}
    event_stats = MapAttribute(default=dict)
    # message ids already applied (bounded): makes a redelivered stream batch a no-op
    applied = ListAttribute(default=list)
    merged_into = UnicodeAttribute(null=True)
    merged_from = ListAttribute(default=list)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    first_message_at = UnicodeAttribute(null=True)
    last_message_at = UnicodeAttribute(null=True)
    last_identified_at = UnicodeAttribute(null=True)
    # When time alone could next change an audience membership (audience engine)
    next_evaluation_at = UnicodeAttribute(null=True)
    version = VersionAttribute()


class IdentityRecord(EngageModel):
    class Meta:
        table_name = TableName("identity_table")

    pk = UnicodeAttribute(hash_key=True)
    space_id = UnicodeAttribute()
    profile_id = UnicodeAttribute()
    created_at = UnicodeAttribute()


class ProfileEventRecord(EngageModel):
    class Meta:
        table_name = TableName("profile_events_table")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    message_id = UnicodeAttribute()
    type = UnicodeAttribute()
    event = UnicodeAttribute(null=True)
    timestamp = UnicodeAttribute()
    payload = UnicodeAttribute()  # the normalized Segment message as JSON
    expires_at = NumberAttribute(null=True)  # TTL (epoch seconds)
