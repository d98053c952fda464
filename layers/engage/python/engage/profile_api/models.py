"""Response models of the Profile API (Segment's shapes, API.md's error body).

`source_id` / `last_source_id` name a Segment source; Engage has none, so they are always null
but present, because Segment clients read them.

Every model builds its serializer on first use (`defer_build=True`): a cold start of a function
that imports the Profile API's modules but answers another route pays nothing for the others.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializeAsAny, model_serializer


class Cursor(BaseModel, defer_build=True):
    url: str
    has_more: bool
    next: str
    limit: int


class VerboseTrait(BaseModel, defer_build=True):
    value: Any
    source_id: str | None = None
    updated_at: str | None = None


class TraitsResponse(BaseModel, defer_build=True):
    traits: dict[str, Any]  # name -> value, or name -> VerboseTrait with verbose=true
    cursor: Cursor


class ExternalId(BaseModel, defer_build=True):
    id: str
    type: str
    source_id: str | None = None
    collection: str
    created_at: str | None = None
    encoding: str = "none"


class VerboseExternalId(ExternalId):
    first_message_id: str | None = None


class ExternalIdsResponse(BaseModel, defer_build=True):
    data: list[SerializeAsAny[ExternalId]]
    cursor: Cursor


class EventExternalId(BaseModel, defer_build=True):
    collection: str
    type: str
    id: str
    encoding: str = "none"


class ProfileEvent(BaseModel, defer_build=True):
    """One Segment message as the Profile API shows it (snake_case envelope, spec fields as sent)."""

    type: str
    message_id: str
    timestamp: str
    source_id: str | None = None
    received_at: str | None = None
    external_ids: list[EventExternalId] = []
    context: dict[str, Any] = {}
    # Present only for the message types that carry them (track/page/screen/identify/group/alias).
    event: str | None = None
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    group_id: str | None = None
    previous_id: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        data = handler(self)
        for name in ("event", "name", "category", "properties", "traits", "group_id", "previous_id"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class EventsResponse(BaseModel, defer_build=True):
    data: list[ProfileEvent]
    cursor: Cursor


class Metadata(BaseModel, defer_build=True):
    created_at: str | None
    updated_at: str | None
    expires_at: str | None = None
    first_message_at: str | None
    first_message_id: str | None = None
    first_source_id: str | None = None
    last_message_at: str | None
    last_message_id: str | None = None
    last_source_id: str | None = None
    last_identified_at: str | None


class VerboseMetadata(Metadata):
    profile_id: str
    merged_from: list[str]


class MetadataResponse(BaseModel, defer_build=True):
    metadata: SerializeAsAny[Metadata]


class Link(BaseModel, defer_build=True):
    to_collection: str
    external_ids: list[ExternalId]


class LinksResponse(BaseModel, defer_build=True):
    data: list[Link]
    cursor: Cursor


class ErrorDetail(BaseModel, defer_build=True):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel, defer_build=True):
    error: ErrorDetail
