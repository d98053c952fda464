"""The schemas the OpenAPI document names (components.schemas), from the models the code answers with.

Profile API responses are its own response models; Tracking API bodies are ingestion's message
models. The management API builds its answers as dicts in the domain, so its wire shapes are
written down here as models, around the domain's own AudienceDefinition (the condition grammar).
Imported only by the generator, never on a request path.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engage.audiences import definition
from engage.destinations import definition as destination_definition
from engage.ingestion import messages
from engage.profile_api import models as profile_models

REF_TEMPLATE = "#/components/schemas/{model}"


# ---------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    code: str = Field(description="authentication_error, forbidden, not_found, validation_error, "
                                  "invalid_request_error, conflict")
    message: str = Field(description="what was wrong and where")
    details: list[dict[str, Any]] = Field(description="one entry per problem, each with its `path`")


class Error(BaseModel):
    """The error shape of the Profile and management APIs (API.md)."""

    error: ErrorDetail


class SegmentError(BaseModel):
    """The Tracking API's error shape (Segment's)."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    accepted: int | None = Field(None, description="messages of a batch stored despite the rejected ones")


class Success(BaseModel):
    success: Literal[True]


# ---------------------------------------------------------------- tracking API bodies
class Batch(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[dict[str, Any]] = Field(description="messages, each with its `type`; up to 2,500 per request")
    context: dict[str, Any] | None = Field(None, description="merged into each message")
    integrations: dict[str, Any] | None = Field(None, description="merged into each message")
    writeKey: str | None = Field(None, description="the write key, when not sent as Basic auth")


# ---------------------------------------------------------------- management API
class Audience(definition.AudienceDefinition):
    """An audience as stored, with its state (`all` is the system audience of every users profile)."""

    status: Literal["computing", "ready", "failed"]
    size: int
    revision: int
    system: bool
    created_at: str | None
    updated_at: str | None


class AudienceList(BaseModel):
    audiences: list[Audience]


class Preview(BaseModel):
    model_config = ConfigDict(extra="allow")

    estimated_size: int
    exact: bool
    sampled: int
    matched: int
    population: int
    method: str


class Member(BaseModel):
    profile_id: str
    entered_at: str | None


class MembersCursor(BaseModel):
    has_more: bool
    next: str
    limit: int


class Members(BaseModel):
    members: list[Member]
    cursor: MembersCursor


class MemberEdit(BaseModel):
    add: list[str] = Field([], description="profile ids `<id_type>:<value>`")
    remove: list[str] = Field([], description="profile ids `<id_type>:<value>`")


class MemberEditResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    added: int
    removed: int
    unchanged: int
    unknown: list[Any]
    invalid: list[Any]


class ExportJob(BaseModel):
    """A large export being generated (202), ready (303, Location is the file) or failed (500)."""

    status: Literal["generating", "ready", "failed"]
    started_at: str | None = None
    retry_after_seconds: int | None = None
    rows: int | None = None
    generated_at: str | None = None
    url: str | None = None
    url_expires_in_seconds: int | None = None
    filename: str | None = None
    message: str | None = None


# ---------------------------------------------------------------- destinations
class DestinationStatus(BaseModel):
    delivered: int = Field(description="changes delivered")
    failures: int = Field(description="failed attempts (each retried or parked)")
    dlq_depth: int = Field(description="parked deliveries waiting for POST /v1/destinations/{key}/replay")
    backlog: int | None = Field(None, description="changes waiting in the change log (batch or paused; counted "
                                                  "up to 1,000)")
    last_success_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    last_run_at: str | None = Field(None, description="last scheduled run (batch)")


class Destination(destination_definition.DestinationDefinition):
    """A destination as stored: secret config fields show as {"set": true, "hint": "…abcd"}, never their value."""

    revision: int
    created_at: str
    updated_at: str
    status: DestinationStatus
    parked: list[dict[str, Any]] | None = Field(None, description="the oldest parked deliveries (GET of one)")


class DestinationList(BaseModel):
    destinations: list[Destination]


class DestinationReplay(BaseModel):
    replayed: int
    remaining: int = Field(description="parked deliveries the queue refused (still parked)")
    delivery_ids: list[str]


def _csv() -> dict[str, Any]:
    return {"type": "string", "description": "CSV text"}


def _openapi_document() -> dict[str, Any]:
    return {"type": "object", "description": "this document (OpenAPI 3.1)",
            "required": ["openapi", "info", "paths"]}


PROFILE_RESOURCES = (profile_models.TraitsResponse, profile_models.ExternalIdsResponse,
                     profile_models.EventsResponse, profile_models.MetadataResponse,
                     profile_models.LinksResponse)
REQUESTS: tuple[type[BaseModel], ...] = (Batch, definition.AudienceDefinition, MemberEdit,
                                         destination_definition.DestinationDefinition)
RESPONSES: tuple[type[BaseModel], ...] = (
    Error, SegmentError, Success, Audience, AudienceList, Preview, Members, MemberEditResult, ExportJob,
    *PROFILE_RESOURCES, Destination, DestinationList, DestinationReplay)


def schemas() -> dict[str, Any]:
    """Every named schema, each model's nested models under their own names."""
    found: dict[str, Any] = {}
    for models, mode in ((REQUESTS, "validation"), (RESPONSES, "serialization")):
        for model in models:
            schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
            found.update(schema.pop("$defs", {}))
            found[model.__name__] = schema
    calls = []
    for model in messages.MODELS.values():
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
        calls.append({"$ref": REF_TEMPLATE.format(model=model.__name__)})
    found["SegmentMessage"] = {
        "description": "One Segment message; its type is the one the path names (or `type` in a batch).",
        "anyOf": calls}
    found["SegmentCall"] = {"description": "A message, or a batch for /v1/batch and /v1/import",
                            "anyOf": [{"$ref": REF_TEMPLATE.format(model="SegmentMessage")},
                                      {"$ref": REF_TEMPLATE.format(model="Batch")}]}
    preview = dict(found["AudienceDefinition"])
    preview["required"] = [name for name in preview.get("required", []) if name not in ("key", "name")]
    preview["title"] = "AudiencePreviewRequest"
    found["AudiencePreviewRequest"] = preview
    found["ProfileResource"] = {
        "description": "the answer of the resource the path names",
        "anyOf": [{"$ref": REF_TEMPLATE.format(model=model.__name__)} for model in PROFILE_RESOURCES]}
    found["Csv"] = _csv()
    found["OpenApiDocument"] = _openapi_document()
    return dict(sorted(found.items()))
