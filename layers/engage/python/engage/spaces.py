"""Spaces (tenants) and their credentials: write keys for ingestion, access tokens for APIs.

Secrets are random 256-bit strings shown once and stored only as SHA-256 digests (a fast
hash is right for high-entropy secrets; there is nothing to brute-force). Lookups are
cached in the warm container so the ingestion path costs no read per request.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from pynamodb.attributes import UnicodeAttribute
from pynamodb.exceptions import PutError

from engage import clock
from engage.config import settings
from engage.db import EngageModel, TableName, key
from engage.errors import AuthenticationFailed, Conflict, ValidationFailed

SPACE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WRITE_KEY = "write_key"
ACCESS_TOKEN = "access_token"


class SpaceRecord(EngageModel):
    class Meta:
        table_name = TableName("config_table")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True, default="space")
    space_id = UnicodeAttribute()
    name = UnicodeAttribute()
    created_at = UnicodeAttribute()


class CredentialRecord(EngageModel):
    class Meta:
        table_name = TableName("config_table")

    pk = UnicodeAttribute(hash_key=True)  # cred|<sha256 hex>
    sk = UnicodeAttribute(range_key=True, default="credential")
    space_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    created_at = UnicodeAttribute()


@dataclass(frozen=True)
class CreatedSpace:
    space_id: str
    name: str
    write_key: str
    access_token: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_space(space_id: str, name: str | None = None, *, write_key: str | None = None,
                 access_token: str | None = None) -> CreatedSpace:
    """Create a space with one write key and one access token; the secrets are returned once."""
    if not SPACE_ID.match(space_id):
        raise ValidationFailed(f"space id {space_id!r} must match {SPACE_ID.pattern}")
    created_at = clock.iso()
    record = SpaceRecord(key("space", space_id), space_id=space_id, name=name or space_id, created_at=created_at)
    try:
        record.save(condition=SpaceRecord.pk.does_not_exist())
    except PutError as error:
        if _conditional_failed(error):
            raise Conflict(f"space {space_id!r} already exists") from error
        raise
    write_key = write_key or "wk_" + secrets.token_urlsafe(32)
    access_token = access_token or "at_" + secrets.token_urlsafe(32)
    add_credential(space_id, WRITE_KEY, write_key)
    add_credential(space_id, ACCESS_TOKEN, access_token)
    return CreatedSpace(space_id, record.name, write_key, access_token)


def add_credential(space_id: str, kind: str, secret: str) -> None:
    if kind not in (WRITE_KEY, ACCESS_TOKEN):
        raise ValidationFailed(f"credential kind must be {WRITE_KEY} or {ACCESS_TOKEN}, not {kind!r}")
    CredentialRecord(key("cred", digest(secret)), space_id=space_id, kind=kind,
                     created_at=clock.iso()).save(condition=CredentialRecord.pk.does_not_exist())


def get_space(space_id: str) -> SpaceRecord | None:
    try:
        return SpaceRecord.get(key("space", space_id), "space")
    except SpaceRecord.DoesNotExist:
        return None


_cache: dict[tuple[str, str], tuple[float, str | None]] = {}


def authenticate(secret: str | None, kind: str) -> str:
    """Return the space id the secret belongs to, or raise AuthenticationFailed."""
    if not secret:
        what = "write key" if kind == WRITE_KEY else "access token"
        raise AuthenticationFailed(f"no {what} given: send it as the HTTP Basic auth username")
    cache_key = (kind, digest(secret))
    hit = _cache.get(cache_key)
    if hit and hit[0] > time.monotonic():
        space_id = hit[1]
    else:
        try:
            record = CredentialRecord.get(key("cred", cache_key[1]), "credential")
            space_id = record.space_id if record.kind == kind else None
        except CredentialRecord.DoesNotExist:
            space_id = None
        _cache[cache_key] = (time.monotonic() + settings().credential_cache_seconds, space_id)
    if space_id is None:
        what = "write key" if kind == WRITE_KEY else "access token"
        raise AuthenticationFailed(f"invalid {what}")
    return space_id


def clear_cache() -> None:
    _cache.clear()


def _conditional_failed(error: Exception) -> bool:
    cause = getattr(error, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException"
