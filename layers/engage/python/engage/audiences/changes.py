"""What a MembershipsTable stream record says: the membership change it carries, if any.

Shared by the stream's two consumers, the audience router (engage.audiences.router) and the destination
router (engage.destinations.router), and kept apart from the first so the second does not load the
publication log, the bus and the audience store with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engage import clock
from engage.audiences.membership import IDENTITY_FIELDS


@dataclass(frozen=True)
class StreamRecord:
    """One MembershipsTable stream record: its sequence number (the batch item id) and plain images."""

    sequence_number: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


def change_of(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The membership change a stream record carries (plain images), or None when `member` did not flip.

    `identity` is the profile ids the membership item carries, or None for items without them;
    `profile_version` the profile image the writer decided from (None for manual edits);
    `counted` whether the router counts it in the audience's size (engage.audiences.router, "Per batch" step 4).
    """
    if not new:
        return None  # item removed: not a membership change
    was = bool(old.get("member")) if old else False
    now_member = bool(new.get("member"))
    if was == now_member:
        return None
    timestamp = new.get("entered_at") if now_member else new.get("exited_at")
    identity = new.get("identity")
    profile_version = new.get("profile_version")
    return {"space_id": new["space_id"], "profile_id": new["profile_id"], "audience_key": new["audience_key"],
            "member": now_member, "version": int(new.get("version") or 0),
            "timestamp": timestamp or new.get("updated_at") or clock.iso(),
            "identity": {name: identity.get(name) for name in IDENTITY_FIELDS} if isinstance(identity, dict) else None,
            "profile_version": int(profile_version) if profile_version is not None else None,
            "counted": bool(new.get("router_counts"))}
