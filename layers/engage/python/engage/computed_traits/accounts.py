"""Computed traits on accounts (`"entity": "accounts"`): an aggregation over the events of the account's users.

Every user keeps the trait's per-day state in its own `computed_trait_state` (the profile processor
applies it like a users trait's, keyed by a hash that includes the entity), but shows no value for it.
The account's value is its users' entries combined with the same merge that profile merges use
(`aggregates.merge_state`), so an account's value is exactly what one profile holding all its users'
events would have. It is computed here, not kept incrementally:

- when a user's entry for an account trait changes (the audience evaluator sees it in the user's stream
  images, `changed_keys`), or the user joins an account, the user's accounts are recomputed
  (`recompute`), coalesced per stream batch with the account audiences' work (one lookup of the user's
  accounts, one recompute per account);
- a recompute reads the account (strongly consistent), then its users' entries (one Query of the links,
  BatchGetItem of the users projected to their state), and writes the account's `computed_traits` and
  `computed_traits_due` only when they changed, conditional on the account's version read. Reading the
  account before its users makes the last write the one that read the newest users: a writer that
  read older users either wrote first (and is overwritten) or loses the condition and reads again;
- the sweeper calls `refresh` for a due account when a window moves, which is the same recompute.

So a replayed or out-of-order user record recomputes from the present and writes nothing when nothing
changed. The account's write is a profile change like any other: account audiences on the trait follow
through the profile stream and `Computed Trait Changed` is published for the account.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from engage import clock
from engage.audiences import accounts as account_users
from engage.audiences.aggregates import from_ms, to_ms
from engage.computed_traits import aggregates
from engage.observability import logger, metrics

ACCOUNTS = "accounts"
ATTEMPTS = 3  # recomputes of one account before a lost race fails the caller (its records are retried)
# What a recompute reads from the account and from each user.
ACCOUNT_ATTRIBUTES = ("profile_id", "space_id", "collection", "merged_into", "version", "computed_traits",
                      "computed_traits_due")
USER_ATTRIBUTES = ("profile_id", "collection", "merged_into", "computed_trait_state")


def _entries_by_key(image: dict | None, keys: frozenset[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for trait_id, entry in sorted(((image or {}).get("computed_trait_state") or {}).items()):
        if isinstance(entry, dict) and entry.get("k") in keys:
            out.setdefault(entry["k"], []).append((trait_id, entry))
    return out


def changed_keys(index: aggregates.TraitIndex, old: dict | None, new: dict | None, joined: bool) -> set[str]:
    """The account traits whose value on the user's accounts may have changed with this user image
    change (pure). `joined`: the user's set of accounts changed, so every account trait it holds
    state for counts (its history counts towards a new account, as account audiences read it)."""
    keys = index.account_keys
    if not keys:
        return set()
    before, after = _entries_by_key(old, keys), _entries_by_key(new, keys)
    if joined:
        return set(before) | set(after)
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def account_values(index: aggregates.TraitIndex, user_states: list[dict], current: dict,
                   now: datetime) -> tuple[dict, str | None]:
    """(computed_traits, computed_traits_due) of an account from its users' states (pure).

    Only the account traits are written: a key whose trait no user has state for is absent; keys of
    deleted traits stay until the next write (the Profile API shows live traits only).
    """
    ids = {spec.id for spec in index.account_specs}
    merged: dict = {}
    for state in user_states:
        merged = aggregates.merge_state(merged, {t: e for t, e in (state or {}).items() if t in ids})
    now_ms = to_ms(now)
    computed = {spec.key: aggregates.value_at(spec, merged.get(spec.id), now_ms) for spec in index.account_specs}
    values = aggregates.with_values(current, computed)
    edge = aggregates.next_change_ms(merged, index, now_ms, index.account_specs)
    return values, None if edge is None else clock.iso(from_ms(edge))


def _read_account(space_id: str, account_id: str) -> dict | None:
    return account_users.read_images(space_id, [account_id], ACCOUNT_ATTRIBUTES).get(account_id)


def _user_states(space_id: str, account_id: str) -> list[dict] | None:
    """The account's live users' states, or None when it has more users than an evaluation reads."""
    ids = account_users.user_ids(space_id, account_id)
    if ids is None:
        logger.warning("account has more users than an evaluation reads: its computed traits are left as they are",
                       extra={"space": space_id, "profile_id": account_id, "limit": account_users.MAX_USERS})
        metrics.add_metric(name="AccountUsersOverLimit", unit="Count", value=1)
        return None
    images = account_users.read_images(space_id, ids, USER_ATTRIBUTES) if ids else {}
    return [image.get("computed_trait_state") or {} for _, image in sorted(images.items())
            if not image.get("merged_into") and image.get("collection", "users") == "users"]


def recompute(space_id: str, account_id: str, index: aggregates.TraitIndex, now: datetime | None = None,
              account: dict | None = None) -> tuple[dict | None, datetime | None]:
    """Recompute an account's computed traits from its users and write them if they changed.

    Returns the account image as written (or read) and the next window edge. `account`: an image
    already read (strongly consistent, before the users), e.g. by the sweeper.
    """
    from engage.computed_traits import runtime  # the shared table and the number conversion

    now = now or clock.now()
    for _ in range(ATTEMPTS):
        if account is None:
            account = _read_account(space_id, account_id)  # before the users: see the module docstring
        if not account or account.get("merged_into") or account.get("collection") != ACCOUNTS:
            return None, None
        if not index.account_specs and not account.get("computed_traits"):
            return account, None
        states = _user_states(space_id, account_id)
        if states is None:
            return account, runtime.due_of(account)
        current = account.get("computed_traits") or {}
        values, due = account_values(index, states, current, now)
        if runtime._same(values, current) and due == account.get("computed_traits_due"):
            return account, runtime.due_of({"computed_traits_due": due})
        version = int(account.get("version") or 0)
        table = runtime._table()
        try:
            table.update_item(
                Key={"pk": account_users.profile_pk(space_id, account_id)},
                UpdateExpression="SET computed_traits = :values, computed_traits_due = :due ADD version :one",
                ConditionExpression="version = :read",
                ExpressionAttributeValues={":values": runtime.dynamo_safe(values), ":due": due, ":one": 1,
                                           ":read": version})
        except table.meta.client.exceptions.ConditionalCheckFailedException:
            account = None  # another writer (the processor, another recompute) moved it: read again
            continue
        metrics.add_metric(name="AccountComputedTraitsWritten", unit="Count", value=1)
        return {**account, "computed_traits": values, "computed_traits_due": due, "version": version + 1}, \
            runtime.due_of({"computed_traits_due": due})
    raise RuntimeError(f"account {account_id!r} kept changing while its computed traits were recomputed")


def recompute_for_user(space_id: str, user_id: str, index: aggregates.TraitIndex,
                       now: datetime | None = None) -> int:
    """Recompute every account of a user (no stream batch to coalesce with). Returns the accounts read."""
    account_ids = account_users.of_user(space_id, user_id)
    for account_id in account_ids:
        recompute(space_id, account_id, index, now)
    return len(account_ids)


def user_state_reference(events_by_user: dict[str, list[dict]], index: aggregates.TraitIndex,
                         now: datetime) -> dict[str, Any]:
    """An account's values straight from its users' raw events (preview; tests hold the stream to it)."""
    states = [aggregates.build_state(events, index) for _, events in sorted(events_by_user.items())]
    return account_values(index, states, {}, now)[0]
