"""The HTTP APIs' OpenAPI 3.1 document: route annotations for the handlers, and the document itself.

The handlers (functions/ingest, profile_api, management_api) describe each route where it is
declared, with powertools' own route arguments (`summary`, `tags`, `security`, `responses`,
`openapi_extensions`). The helpers here only build those arguments as plain dicts that name
schemas in `engage.openapi.components`, so a cold start builds no JSON schema and imports
nothing new. `engage openapi` (engage.openapi.build) asks each resolver for its document,
fills in the schemas and the template's routes, and writes `openapi.json` beside this file;
a test checks that the file is what the code generates and that its operations are exactly
template.yaml's routes. `document()` serves that file (GET /openapi.json).
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).with_name("openapi.json")
TRACKING, PROFILES, MANAGEMENT = "Tracking API", "Profile API", "Management API"
# Security scheme names (components.securitySchemes in the document).
WRITE_KEY, ACCESS_TOKEN = "writeKey", "accessToken"
QUERY = "x-engage-query"  # query parameters of a route; the generator moves them into `parameters`
BAD_REQUEST_NOTE = "the message says what was wrong and where (a JSON path)"


@cache
def document() -> str:
    """The generated document, as JSON text (read once per container)."""
    return DOCUMENT.read_text(encoding="utf-8")


def ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def json_content(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(schema)}}


def body(schema: str, *, media_type: str = "application/json", description: str | None = None,
         more: dict[str, str] | None = None) -> dict[str, Any]:
    """`openapi_extensions` for a route with a request body (`more`: other media types -> schema)."""
    content = {media_type: {"schema": ref(schema)}}
    content.update({other: {"schema": ref(name)} for other, name in (more or {}).items()})
    request = {"required": True, "content": content}
    if description:
        request["description"] = description
    return {"requestBody": request}


def query(*parameters: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extensions` for a route's query parameters (see `param`)."""
    return {QUERY: list(parameters)}


def query_models(module: str, attribute: str) -> dict[str, Any]:
    """`openapi_extensions` naming a `{resource: pydantic model}` map of query models (resolved by the
    generator, so a cold start builds no schema)."""
    return {QUERY: {"models": f"{module}:{attribute}"}}


def param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def list_page_params() -> tuple[dict[str, Any], dict[str, Any]]:
    """`limit` and `next` of a management list (engage.listing; numbers kept in step with it)."""
    return (param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                  "items per page (a page also stops before 4 MB of items)"),
            param("next", {"type": "string"}, "`cursor.next` of the previous page"))


def responses(ok: int, ok_schema: str | None, description: str, *errors: int, error_schema: str = "Error",
              ok_media_type: str = "application/json",
              headers: dict[str, Any] | None = None) -> dict[int, Any]:
    """powertools `responses=`: the success answer and each error status in the API's error shape."""
    success: dict[str, Any] = {"description": description}
    if ok_schema is not None:
        success["content"] = {ok_media_type: {"schema": ref(ok_schema)}}
    if headers:
        success["headers"] = headers
    answers = {ok: success}
    for status in errors:
        answers[status] = {"description": ERROR_DESCRIPTIONS[status], "content": json_content(error_schema)}
        if headers:
            answers[status]["headers"] = headers
    return answers


REQUEST_ID = {"Request-Id": {"description": "this request's id (API Gateway's request id): quote it when "
                                            "reporting a problem", "schema": {"type": "string"}}}

ERROR_DESCRIPTIONS = {
    400: f"invalid request: {BAD_REQUEST_NOTE}",
    401: "missing or unknown credentials",
    403: "the credentials belong to another space",
    404: "no such resource (or route)",
    409: "conflicts with the current state (key taken, system audience)",
    413: "the body is larger than the API accepts",
    500: "the export job failed (the body says why); ask again with regenerate=true",
    503: "a service the call needs failed (the body says which): nothing was changed; try again",
}
