"""The shapes of membership changes on the stack's bus (API.md "Events on the bus"), pure: the router
builds them, the journey enroller reads them. No AWS here, so the enroller imports it cheaply.

Two groupings, chosen by the template parameter `AudienceEventGrouping` (env AUDIENCE_EVENT_GROUPING):
- `change` (the default, the public contract): one `Audience Entered` / `Audience Exited` entry per
  membership change, detail `{space, audience_key, profile_id, user_id, anonymous_id, email, timestamp,
  version}`;
- `evaluation` (opt-in): one `Audience Memberships Changed` entry per profile evaluation (the changes one
  evaluator or sweeper write made from one profile image: same space, profile and profile version),
  detail `{space, profile_id, user_id, anonymous_id, email, profile_version, timestamp, entered: [...],
  exited: [...]}`, each element `{audience_key, version, timestamp}`. EventBridge bills an entry per
  64 KB, so an entry stays under 64 KB: an evaluation too large for one is split into several entries.
  Changes without a profile version (manual edits, imports) are one entry each, in the same shape.

An entry of either shape names each change by (space, profile_id, audience_key, version), the key a
consumer deduplicates on: publication is at least once, and a redelivered evaluation entry may carry
only the changes of it that were not yet recorded as published (docs/audiences.md, "The router").
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

SOURCE = "engage"
ENTERED, EXITED = "Audience Entered", "Audience Exited"
# "Audience ..." like the per-change types (a rule on the prefix "Audience " sees every shape); plural
# because one entry carries several changes, "Changed" like `Computed Trait Changed`.
CHANGED = "Audience Memberships Changed"
CHANGE, EVALUATION = "change", "evaluation"
GROUPINGS = (CHANGE, EVALUATION)
IDS = ("user_id", "anonymous_id", "email")
# EventBridge bills each 64 KB chunk of an entry as one event: a grouped entry stays within one chunk.
MAX_BYTES_PER_ENTRY = 64 * 1024


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it (Source, DetailType, Detail; this router sets no Resources/Time)."""
    return sum(len(entry[name].encode()) for name in ("Source", "DetailType", "Detail"))


def change_detail(change: Mapping[str, Any], ids: Mapping[str, Any]) -> dict[str, Any]:
    """The detail of `Audience Entered` / `Audience Exited` for one change (API.md)."""
    return {"space": change["space_id"], "audience_key": change["audience_key"],
            "profile_id": change["profile_id"], **{name: ids.get(name) for name in IDS},
            "timestamp": change["timestamp"], "version": change["version"]}


def change_entry(change: Mapping[str, Any], ids: Mapping[str, Any], bus_name: str) -> dict[str, Any]:
    return {"Source": SOURCE, "DetailType": ENTERED if change["member"] else EXITED,
            "Detail": json.dumps(change_detail(change, ids)), "EventBusName": bus_name}


def _element(change: Mapping[str, Any]) -> dict[str, Any]:
    return {"audience_key": change["audience_key"], "version": change["version"], "timestamp": change["timestamp"]}


def evaluation_entries(changes: Sequence[Mapping[str, Any]], ids: Mapping[str, Any],
                       bus_name: str) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """`Audience Memberships Changed` entries for the changes of ONE profile evaluation (same space, profile,
    profile version), each with the indexes of the changes it carries: as few entries as fit under 64 KB,
    changes in their given order. `timestamp` is the latest of the entry's changes (pure)."""
    if not changes:
        return
    first = changes[0]
    base = {"space": first["space_id"], "profile_id": first["profile_id"], **{name: ids.get(name) for name in IDS},
            "profile_version": first["profile_version"]}
    fixed = len(SOURCE.encode()) + len(CHANGED.encode())

    def entry(indexes: list[int]) -> dict[str, Any]:
        carried = [changes[i] for i in indexes]
        detail = {**base, "timestamp": max(c["timestamp"] for c in carried),
                  "entered": [_element(c) for c in carried if c["member"]],
                  "exited": [_element(c) for c in carried if not c["member"]]}
        return {"Source": SOURCE, "DetailType": CHANGED, "Detail": json.dumps(detail), "EventBusName": bus_name}

    # Sizes add up exactly: json.dumps joins list items with ", "; the timestamp is at most as long as
    # the longest change timestamp (all ISO strings of one length in practice, measured anyway).
    longest_stamp = max(len(json.dumps(c["timestamp"]).encode()) for c in changes)
    empty = len(json.dumps({**base, "timestamp": "", "entered": [], "exited": []}).encode()) - 2 + longest_stamp
    indexes: list[int] = []
    size = {True: 0, False: 0}  # bytes of each list's items and separators
    for index, change in enumerate(changes):
        added = len(json.dumps(_element(change)).encode())
        member = bool(change["member"])
        grown = size[member] + added + (2 if size[member] else 0)
        if indexes and fixed + empty + grown + size[not member] > MAX_BYTES_PER_ENTRY:
            yield entry(indexes), indexes
            indexes, size = [], {True: 0, False: 0}
            grown = added
        indexes.append(index)
        size[member] = grown
    yield entry(indexes), indexes


def per_change(detail_type: str, detail: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A bus event of either shape as the per-change events it stands for: `Audience Memberships Changed`
    unpacks into one `Audience Entered` per element of `entered` and one `Audience Exited` per element of
    `exited` (entered first), each with the per-change detail; the per-change types come back as they are."""
    if detail_type != CHANGED:
        return [(detail_type, dict(detail))]
    common = {"space": detail["space"], "profile_id": detail["profile_id"], **{name: detail.get(name) for name in IDS}}
    return [(kind, {**common, "audience_key": element["audience_key"], "timestamp": element.get("timestamp"),
                    "version": element.get("version", 0)})
            for kind, elements in ((ENTERED, detail.get("entered") or []), (EXITED, detail.get("exited") or []))
            for element in elements]
