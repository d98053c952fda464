"""The users of an account, read for account audiences with `users` conditions.

`{"users": "any" | "all" | "none", "condition": C}` evaluates C on each of the account's users.
Who they are is LinksTable (a group call writes the link in both directions in the same
transaction as the profiles; a merge moves it to the survivor: engage.profile_processor).
Loading an account's users for one evaluation costs:
- one strongly consistent Query of the account's `users|` links, stopped after MAX_USERS + 1;
- BatchGetItem of the user profiles, 100 keys a request, strongly consistent, projected to what
  the evaluator reads (the account's own item rides along when the caller needs it too);
- only when an inner condition references audiences: BatchGetItem of those memberships of the
  users (MembershipsTable, 100 keys a request).
An account with more than MAX_USERS users is not loaded (`over_limit`): the runtime then leaves
its `users` audiences as they are rather than decide from part of its users.

A user's accounts are the `accounts|` side of the user's links: one Query, at most
MAX_ACCOUNTS_PER_USER of them re-evaluated per change.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from engage.audiences.evaluator import ProfileView
from engage.db import consistent_batch_get_all, key
from engage.memberships_store import MembershipRecord
from engage.observability import logger, metrics
from engage.profiles_store import ACCOUNTS, USERS, LinkRecord, ProfileRecord, link_sk, profile_pk

# Users read to evaluate one account: one Query page and at most 10 BatchGetItems.
MAX_USERS = 1000
# Accounts of one user re-evaluated after a change of that user.
MAX_ACCOUNTS_PER_USER = 100
# What the evaluator reads from a profile item (ProfileView), what tells a live user, and the ids
# a membership written from the image carries.
READ_ATTRIBUTES = ("profile_id", "space_id", "collection", "merged_into", "version", "traits",
                   "computed_traits", "daily_counts", "event_stats", "subscriptions", "condition_state",
                   "external_ids")


@dataclass
class AccountUsers:
    """An account's users as the evaluator reads them (`views`, None when over the limit)."""

    user_ids: list[str]
    views: list[ProfileView] | None
    images: dict[str, dict] = field(default_factory=dict)  # user id -> plain profile image
    memberships: dict[str, dict[str, bool]] = field(default_factory=dict)  # user id -> audiences read
    account: dict | None = None  # the account's own image, when asked for

    @property
    def over_limit(self) -> bool:
        return self.views is None


# ---------------------------------------------------------------- links
def user_ids(space_id: str, account_id: str, limit: int | None = None) -> list[str] | None:
    """The account's users (profile ids, sorted), or None when it has more than `limit` (MAX_USERS)."""
    limit = MAX_USERS if limit is None else limit
    links = LinkRecord.query(profile_pk(space_id, account_id), LinkRecord.sk.startswith(link_sk(USERS, "")),
                             consistent_read=True, limit=limit + 1)
    found = [link.to_profile_id for link in links]
    return None if len(found) > limit else found


def of_user(space_id: str, user_id: str, limit: int | None = None) -> list[str]:
    """The accounts a user belongs to (profile ids, sorted), at most `limit` (MAX_ACCOUNTS_PER_USER;
    the rest is logged)."""
    limit = MAX_ACCOUNTS_PER_USER if limit is None else limit
    links = LinkRecord.query(profile_pk(space_id, user_id), LinkRecord.sk.startswith(link_sk(ACCOUNTS, "")),
                             consistent_read=True, limit=limit + 1)
    found = [link.to_profile_id for link in links]
    if len(found) > limit:
        logger.warning("user belongs to more accounts than are re-evaluated per change",
                       extra={"space": space_id, "profile_id": user_id, "limit": limit})
        metrics.add_metric(name="UserAccountsOverLimit", unit="Count", value=1)
    return found[:limit]


# ---------------------------------------------------------------- batch reads
_deserializer = TypeDeserializer()


def read_images(space_id: str, profile_ids: Iterable[str],
                attributes: Iterable[str] = READ_ATTRIBUTES) -> dict[str, dict[str, Any]]:
    """profile id -> plain profile image (`attributes` only: READ_ATTRIBUTES) for those that exist.
    Keys left unread by throttling are asked again with back-off; still unread after engage.db.BATCH_GET_ATTEMPTS (8)
    rounds, it raises (the caller's record is retried) rather than evaluate an account without them."""
    names = {f"#a{i}": name for i, name in enumerate(attributes)}
    keys = [{"pk": {"S": profile_pk(space_id, p)}} for p in dict.fromkeys(profile_ids)]
    items = consistent_batch_get_all(ProfileRecord.client(), ProfileRecord.Meta.table_name,
                                     keys, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
    images = ({k: _deserializer.deserialize(v) for k, v in raw.items()} for raw in items)
    return {image["profile_id"]: image for image in images}


def memberships_of(space_id: str, profile_ids: Iterable[str], audience_keys: Iterable[str]
                   ) -> dict[str, dict[str, bool]]:
    """profile id -> {audience key: member} for the given audiences (absent = never a member)."""
    wanted = [(key(space_id, p), a) for p in dict.fromkeys(profile_ids) for a in sorted(set(audience_keys))]
    found: dict[str, dict[str, bool]] = {}
    if wanted:
        for record in MembershipRecord.batch_get(wanted, consistent_read=True):
            found.setdefault(record.profile_id, {})[record.audience_key] = bool(record.member)
    return found


# ---------------------------------------------------------------- views
def user_views(images: dict[str, dict], memberships: dict[str, dict[str, bool]] | None = None
               ) -> list[ProfileView]:
    """The evaluator's views of the live users among `images`, in profile id order.

    A merged user is skipped: its links moved to the survivor, which is read under its own id.
    """
    memberships = memberships or {}
    return [ProfileView.from_item(image, memberships=memberships.get(profile_id, {}))
            for profile_id, image in sorted(images.items())
            if image and not image.get("merged_into") and image.get("collection", USERS) == USERS]


def load(space_id: str, account_id: str, audience_refs: Iterable[str] = (), *,
         with_account: bool = False) -> AccountUsers:
    """The account's users (and, with `with_account`, the account's image from the same reads)."""
    ids = user_ids(space_id, account_id)
    if ids is None:
        logger.warning("account has more users than an evaluation reads: its `users` audiences are left as "
                       "they are", extra={"space": space_id, "profile_id": account_id, "limit": MAX_USERS})
        metrics.add_metric(name="AccountUsersOverLimit", unit="Count", value=1)
        account = read_images(space_id, [account_id]).get(account_id) if with_account else None
        return AccountUsers([], None, account=account)
    images = read_images(space_id, [account_id, *ids] if with_account else ids)
    account = images.pop(account_id, None) if with_account else None
    images = {p: images[p] for p in ids if p in images}
    refs = set(audience_refs)
    memberships = memberships_of(space_id, images, refs) if refs and images else {}
    return AccountUsers(ids, user_views(images, memberships), images, memberships, account)
