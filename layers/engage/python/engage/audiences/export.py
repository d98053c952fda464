"""CSV export of an audience's current members (seed 002 "Download your Audience as a CSV file").

Formats:
  unformatted    profile_id, external_ids (a JSON object: id type -> list of values)
  formatted      the same two columns, then one column per id type; a type with several values
                 gets indexed columns (email, email_1, email_2)
  single_column  one column of the chosen id type (default email), one row per value,
                 SHA-256 hashed unless hash=none (emails are trimmed and lower-cased first)
The export is a snapshot taken while answering; it reads members from the by_audience index and
their ids with BatchGet (100 profiles per call).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass

from engage.audiences import membership, store
from engage.db import key
from engage.errors import ValidationFailed
from engage.profiles_store import ProfileRecord

FORMATS = ("unformatted", "formatted", "single_column")
HASHES = ("sha256", "none")
MAX_MEMBERS = 20_000  # a synchronous answer must fit Lambda's 6 MB response
BATCH_GET = 100


@dataclass(frozen=True)
class Export:
    filename: str
    body: str
    rows: int


def _ids_by_type(profile: ProfileRecord | None) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for item in (profile.external_ids if profile else None) or []:
        item = dict(item)
        id_type, value = item.get("type"), item.get("id")
        if id_type and value is not None and str(value) not in found.setdefault(id_type, []):
            found[id_type].append(str(value))
    return found


def _profiles(space_id: str, profile_ids: list[str]) -> dict[str, ProfileRecord]:
    found: dict[str, ProfileRecord] = {}
    for start in range(0, len(profile_ids), BATCH_GET):
        keys = [key(space_id, pid) for pid in profile_ids[start:start + BATCH_GET]]
        for record in ProfileRecord.batch_get(keys):
            found[record.profile_id] = record
    return found


def _digest(id_type: str, value: str) -> str:
    normalized = value.strip().lower() if id_type == "email" else value
    return hashlib.sha256(normalized.encode()).hexdigest()


def export_csv(space_id: str, audience_key: str, *, fmt: str | None = "unformatted", id_type: str | None = None,
               hash_: str | None = None) -> Export:
    fmt = fmt or "unformatted"
    if fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}", [{"path": "format", "value": fmt}])
    hashing = hash_ or "sha256"
    if hashing not in HASHES:
        raise ValidationFailed(f"hash must be one of {', '.join(HASHES)}", [{"path": "hash", "value": hash_}])
    if fmt != "single_column" and (id_type or hash_):
        raise ValidationFailed("id_type and hash apply to format=single_column only",
                               [{"path": "id_type" if id_type else "hash", "value": id_type or hash_}])
    store.get(space_id, audience_key)  # 404 for unknown or deleted audiences
    member_ids = []
    for record in membership.all_members(space_id, audience_key):
        member_ids.append(record.profile_id)
        if len(member_ids) > MAX_MEMBERS:
            raise ValidationFailed(f"the audience has more than {MAX_MEMBERS} members: too large for a "
                                   "synchronous export; page through GET /members instead",
                                   [{"path": "key", "value": audience_key}])
    profiles = _profiles(space_id, member_ids)
    ids = {pid: _ids_by_type(profiles.get(pid)) for pid in member_ids}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rows = 0
    if fmt == "single_column":
        chosen = id_type or "email"
        column = chosen if hashing == "none" else f"{chosen}_sha256"
        writer.writerow([column])
        for pid in member_ids:
            for value in ids[pid].get(chosen, []):
                writer.writerow([value if hashing == "none" else _digest(chosen, value)])
                rows += 1
    else:
        columns: list[tuple[str, int]] = []  # (id type, index of the value)
        if fmt == "formatted":
            widest: dict[str, int] = {}
            for by_type in ids.values():
                for id_type_, values in by_type.items():
                    widest[id_type_] = max(widest.get(id_type_, 0), len(values))
            columns = [(t, i) for t in sorted(widest) for i in range(widest[t])]
        writer.writerow(["profile_id", "external_ids", *(t if i == 0 else f"{t}_{i}" for t, i in columns)])
        for pid in member_ids:
            by_type = ids[pid]
            cells = [by_type[t][i] if i < len(by_type.get(t, [])) else "" for t, i in columns]
            writer.writerow([pid, json.dumps(by_type, sort_keys=True), *cells])
            rows += 1
    return Export(f"{audience_key}-{fmt}.csv", out.getvalue(), rows)
