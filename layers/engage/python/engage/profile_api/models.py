"""Response models of the Profile API (Segment's shapes, API.md's error body).

`source_id` / `last_source_id` name a Segment source; Engage has none, so they are always null
but present, because Segment clients read them.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializeAsAny, model_serializer


class Cursor(BaseModel):
    url: str
    has_more: bool
    next: str
    limit: int


class VerboseTrait(BaseModel):
    value: Any
    source_id: str | None = None
    updated_at: str | None = None


class TraitsResponse(BaseModel):
    traits: dict[str, Any]  # name -> value, or name -> VerboseTrait with verbose=true
    cursor: Cursor


class ExternalId(BaseModel):
    id: str
    type: str
    source_id: str | None = None
    collection: str
    created_at: str | None = None
    encoding: str = "none"


class VerboseExternalId(ExternalId):
    first_message_id: str | None = None


class ExternalIdsResponse(BaseModel):
    data: list[SerializeAsAny[ExternalId]]
    cursor: Cursor


class EventExternalId(BaseModel):
    collection: str
    type: str
    id: str
    encoding: str = "none"


class ProfileEvent(BaseModel):
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


class EventsResponse(BaseModel):
    data: list[ProfileEvent]
    cursor: Cursor


class Metadata(BaseModel):
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


class MetadataResponse(BaseModel):
    metadata: SerializeAsAny[Metadata]


class Link(BaseModel):
    to_collection: str
    external_ids: list[ExternalId]


class LinksResponse(BaseModel):
    data: list[Link]
    cursor: Cursor


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    error: ErrorDetail
