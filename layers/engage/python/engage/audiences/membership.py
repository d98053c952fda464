"""Writing and reading audience memberships (MembershipsTable): the one place that changes them.

Every writer (stream evaluator, sweeper, backfill, manual edits, CSV import) goes through
`set_member`, which writes only when the stored `member` differs from the wanted one, with the
item's version as the condition and the audience's size counter in the same transaction.
A replayed batch therefore finds nothing to change: no duplicate stream record, no double count,
no duplicate `Audience Entered` downstream. Writers that hold the profile image pass its
`identity_of` so the router can publish from the membership's stream image alone.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import QueryError, TransactWriteError
from pynamodb.transactions import TransactWrite

from engage import clock
from engage.audiences import store
from engage.db import key
from engage.errors import ValidationFailed
from engage.memberships_store import MembershipRecord


@dataclass(frozen=True)
class Change:
    space_id: str
    profile_id: str
    audience_key: str
    member: bool
    version: int


# The profile ids an `Audience Entered/Exited` event names (API.md "Events on the bus").
IDENTITY_FIELDS = ("user_id", "anonymous_id", "email")


def identity_of(external_ids: Iterable[Mapping[str, Any]] | None) -> dict[str, str | None]:
    """The first user_id, anonymous_id and email among a profile's external ids (None when it has none)."""
    found: dict[str, str | None] = dict.fromkeys(IDENTITY_FIELDS)
    for entry in external_ids or ():
        id_type = entry.get("type")
        if id_type in found and found[id_type] is None:
            found[id_type] = entry.get("id")
    return found


def current(space_id: str, profile_id: str) -> dict[str, MembershipRecord]:
    """All of a profile's membership items (entered and exited), one Query."""
    return {r.sk: r for r in MembershipRecord.query(key(space_id, profile_id), consistent_read=True)}


def flags(records: dict[str, MembershipRecord]) -> dict[str, bool]:
    return {audience_key: bool(r.member) for audience_key, r in records.items()}


def is_stale(existing: MembershipRecord | None, profile_version: int | None) -> bool:
    """True when the stored membership was decided from a newer profile image than this one."""
    if existing is None or profile_version is None or existing.profile_version is None:
        return False
    return int(existing.profile_version) > profile_version


def set_member(space_id: str, profile_id: str, audience_key: str, member: bool,
               existing: MembershipRecord | None, *, profile_version: int | None = None,
               identity: Mapping[str, str | None] | None = None, attempts: int = 3) -> Change | None:
    """Make the stored membership equal `member`; return the change written, or None if none was needed.

    `existing` is what the caller read (None = no item). On a lost race the item is read again and
    the decision retaken, so two concurrent writers cannot both count an entry. `profile_version`
    is the version of the profile image the decision came from: an older image than the one the
    stored membership was decided from changes nothing (replayed stream records). `identity`
    (`identity_of` the same image) is stored for the router; without it any stored identity is
    dropped, so the router reads the profile's current ids instead of publishing stale ones.
    """
    for _ in range(attempts):
        stored = bool(existing.member) if existing is not None else False
        if stored == member or is_stale(existing, profile_version):
            return None
        now = clock.iso()
        record = existing if existing is not None else MembershipRecord(
            key(space_id, profile_id), audience_key, audience_pk=key(space_id, audience_key),
            space_id=space_id, profile_id=profile_id, audience_key=audience_key, member=False, updated_at=now)
        record.member = member
        record.updated_at = now
        record.profile_version = profile_version
        record.identity = {name: identity.get(name) for name in IDENTITY_FIELDS} if identity is not None else None
        if member:
            record.entered_at, record.exited_at = now, None
        else:
            record.exited_at = now
        counter = store.size_shard(space_id, audience_key, profile_id)
        try:
            with TransactWrite(connection=MembershipRecord._get_connection().connection) as transaction:
                transaction.save(record)  # conditioned on the version we read
                transaction.update(counter, actions=[type(counter).count.add(1 if member else -1)])
        except TransactWriteError as error:
            reasons = error.cancellation_reasons or []
            if not any(r is not None and r.code == "ConditionalCheckFailed" for r in reasons):
                raise
            existing = current_one(space_id, profile_id, audience_key)
            continue
        return Change(space_id, profile_id, audience_key, member, int(record.version or 0))
    raise RuntimeError(f"membership {space_id}/{profile_id}/{audience_key} kept changing under us; retry")


def current_one(space_id: str, profile_id: str, audience_key: str) -> MembershipRecord | None:
    try:
        return MembershipRecord.get(key(space_id, profile_id), audience_key, consistent_read=True)
    except MembershipRecord.DoesNotExist:
        return None


def members(space_id: str, audience_key: str, limit: int = 100, cursor: str | None = None
            ) -> tuple[list[MembershipRecord], str | None]:
    """One page of an audience's current members (GSI by_audience) and the cursor of the next page."""
    start = _decode_cursor(cursor) if cursor else None
    found: list[MembershipRecord] = []
    last = start
    # A filter can empty a page (exited members): keep reading until the page is full or the end.
    while len(found) < limit:
        page = MembershipRecord.by_audience.query(key(space_id, audience_key), limit=limit - len(found),
                                                  filter_condition=MembershipRecord.member == True,
                                                  last_evaluated_key=last)
        try:
            found.extend(page)
        except QueryError as error:  # a cursor of another audience (or space) names keys outside this query
            raise ValidationFailed("invalid `next` cursor: pass the value of cursor.next unchanged",
                                   [{"path": "next", "value": cursor}]) from error
        last = page.last_evaluated_key
        if not last:
            break
    return found, _encode_cursor(last) if last else None


def all_members(space_id: str, audience_key: str):
    """Iterate every current member (pages of the GSI; used by CSV replace and export)."""
    cursor = None
    while True:
        page, cursor = members(space_id, audience_key, 500, cursor)
        yield from page
        if not cursor:
            return


def _encode_cursor(last: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(last, sort_keys=True).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict:
    problem = ValidationFailed("invalid `next` cursor: pass the value of cursor.next unchanged",
                               [{"path": "next", "value": cursor}])
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        last = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except ValueError as error:
        raise problem from error
    if not isinstance(last, dict):
        raise problem
    return last
