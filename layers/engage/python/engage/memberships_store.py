"""Storage model of audience memberships (MembershipsTable, stream -> router).

pk = space|profile_id, sk = audience key         all of a profile's memberships in one Query
audience_pk = space|audience key (GSI by_audience_keys)  every profile that ever entered an audience
`member` stays on the item after exit (False), so the Profile API can answer `false`
for "was a member, left" and omit audiences the profile never entered (API.md).
The index projects keys only, so DynamoDB writes it once, when a profile first enters an audience:
later flips of `member` change no indexed attribute and cost the table write alone. Readers page the
index's keys and read the items (engage.audiences.membership.members).
`identity` carries the profile's ids the bus events name, so the router builds
`Audience Entered/Exited` from the stream image alone (no profile read per change).
"""
from __future__ import annotations

from pynamodb.attributes import (
    BooleanAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)

from engage.db import EngageModel, TableName

# GSI on (audience_pk, pk), Projection KEYS_ONLY (template.yaml); queried through the client, which can
# fall back to the legacy index by name.
MEMBER_INDEX = "by_audience_keys"
# The index of stacks created before by_audience_keys (Projection ALL: written on every flip). Read only
# while an upgrading stack builds by_audience_keys (docs/audiences.md, "The members index").
LEGACY_MEMBER_INDEX = "by_audience"


class MembershipRecord(EngageModel):
    class Meta:
        table_name = TableName("memberships_table")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)  # audience key
    audience_pk = UnicodeAttribute()
    space_id = UnicodeAttribute()
    profile_id = UnicodeAttribute()
    audience_key = UnicodeAttribute()
    member = BooleanAttribute()
    entered_at = UnicodeAttribute(null=True)
    exited_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute()
    # The profile item version the last evaluation read (None for manual edits): a replayed,
    # older stream image must not undo what a newer one decided.
    profile_version = NumberAttribute(null=True)
    # {"user_id", "anonymous_id", "email"} (each a string or None) of the profile image the write was
    # decided from. Absent on items written before it existed or by writers without an image
    # (manual edits, merges): the router then reads the profile.
    identity = MapAttribute(null=True)
    # True on every change written since sizes are counted by the router from the stream: the
    # router counts exactly the changes whose new image carries it. Changes written before were
    # counted by their writer's transaction, so a deploy never counts one change twice.
    router_counts = BooleanAttribute(null=True)
    version = VersionAttribute()
