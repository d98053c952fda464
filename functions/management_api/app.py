"""Management API (API.md): audiences. Token auth, JSON in and out, errors in one shape."""
from __future__ import annotations

import json
from urllib.parse import urlencode

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths

from engage import json_body, spaces
from engage.audiences import export, management, manual, preview
from engage.errors import EngageError, ValidationFailed
from engage.observability import logger, tracer
from engage.profile_api.params import token_from_authorization

app = APIGatewayHttpResolver()


def _space() -> str:
    return spaces.authenticate(token_from_authorization(app.current_event.headers.get("authorization")),
                               spaces.ACCESS_TOKEN)


def _json_body():
    try:
        text = app.current_event.decoded_body
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationFailed(f"the body is not valid UTF-8: {error}", [{"path": "$", "message": str(error)}]) from error
    return json_body.loads(text)


def _query(name: str, default: str | None = None) -> str | None:
    return app.current_event.get_query_string_value(name, default)


def _int_query(name: str, default: int) -> int:
    text = _query(name)
    try:
        return default if text is None else int(text)
    except ValueError as error:
        raise ValidationFailed(f"{name} must be an integer", [{"path": name, "value": text}]) from error


def _bool_query(name: str) -> bool:
    text = _query(name)
    if text is None or text.lower() in ("false", "0", ""):
        return False
    if text.lower() in ("true", "1"):
        return True
    raise ValidationFailed(f"{name} must be true or false", [{"path": name, "value": text}])


@app.post("/v1/audiences")
def create_audience():
    return Response(201, "application/json", json.dumps(management.create(_space(), _json_body())))


@app.get("/v1/audiences")
def list_audiences():
    return management.list_audiences(_space())


@app.post("/v1/audiences:preview")
def preview_audience():
    return preview.preview(_space(), _json_body(), sample_size=_int_query("sample", preview.DEFAULT_SAMPLE))


@app.get("/v1/audiences/<key>")
def get_audience(key: str):
    return management.get(_space(), key)


@app.put("/v1/audiences/<key>")
def replace_audience(key: str):
    return management.replace(_space(), key, _json_body())


@app.delete("/v1/audiences/<key>")
def delete_audience(key: str):
    management.delete(_space(), key)
    return Response(204, "application/json", "")


@app.get("/v1/audiences/<key>/members")
def list_members(key: str):
    return management.members(_space(), key, _int_query("limit", 100), _query("next"))


@app.post("/v1/audiences/<key>/members")
def edit_members(key: str):
    return manual.edit_members(_space(), key, _json_body())


@app.post("/v1/audiences/<key>/members:import")
def import_members(key: str):
    return manual.import_csv(_space(), key, app.current_event.decoded_body or "", _query("mode", "add"))


@app.get("/v1/audiences/<key>/export")
def export_audience(key: str):
    space_id = _space()
    result = export.request(space_id, key, fmt=_query("format", "unformatted"), id_type=_query("id_type"),
                            hash_=_query("hash"), regenerate=_bool_query("regenerate"))
    if isinstance(result, export.Export):
        return Response(200, "text/csv", result.body,
                        headers={"Content-Disposition": f'attachment; filename="{result.filename}"'})
    body = json.dumps(result.view())
    if result.status == export.READY:
        return Response(303, "application/json", body, headers={"Location": result.url})
    if result.status == export.FAILED:
        return Response(500, "application/json", body)
    # Location: where to poll. Without `regenerate`, so a client polling it gets the file this job
    # makes instead of starting another one each time the last is ready.
    return Response(202, "application/json", body, headers={"Retry-After": str(result.retry_after_seconds),
                                                            "Location": _without_query("regenerate")})


def _without_query(name: str) -> str:
    event = app.current_event
    kept = {k: v for k, v in (event.query_string_parameters or {}).items() if k != name}
    return event.path + (f"?{urlencode(kept)}" if kept else "")


@app.exception_handler(EngageError)
def engage_error(error: EngageError):
    return Response(error.status, "application/json",
                    json.dumps({"error": {"code": error.code, "message": error.message, "details": error.details}}))


@app.not_found
def not_found(_error):
    message = f"no route {app.current_event.http_method} {app.current_event.path}"
    return Response(404, "application/json", json.dumps({"error": {"code": "not_found", "message": message,
                                                                    "details": []}}))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return app.resolve(event, context)
