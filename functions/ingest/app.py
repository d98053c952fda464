"""Segment HTTP Tracking API: POST /v1/identify|track|page|screen|group|alias|batch|import,
and analytics.js's short paths /v1/t|i|p|s|g|a|b.

Thin handler: read the request, call engage.ingestion.receive, answer. Segment's shapes:
200 {"success": true}; errors {"code", "message"} (400 bad input, 401 bad write key).
"""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from engage import ingestion, openapi
from engage.errors import EngageError
from engage.observability import logger, metrics, tracer

app = APIGatewayHttpResolver()


@app.post("/v1/<call>", summary="Send Segment messages (identify, track, page, screen, group, alias, batch)",
          description="The call is the path's last segment; JSON, optionally gzip (Content-Encoding) or "
                      "text/plain. A batch stores its valid messages even when some are rejected "
                      "(400 lists them).",
          tags=[openapi.TRACKING], security=[{openapi.WRITE_KEY: []}],
          openapi_extensions=openapi.body("SegmentCall", more={"text/plain": "SegmentCall"}),
          responses=openapi.responses(200, "Success", "stored (or already stored: duplicates are ignored)",
                                      400, 401, 404, error_schema="SegmentError"))
def track_api(call: str) -> dict:
    request = app.current_event
    ingestion.receive(
        call, request.body,
        authorization=request.headers.get("authorization"),
        is_base64=bool(request.is_base64_encoded),
        content_encoding=request.headers.get("content-encoding"),
    )
    return {"success": True}


@app.exception_handler(EngageError)
def engage_error(error: EngageError) -> Response:
    metrics.add_metric(name=f"Requests{error.status}", unit=MetricUnit.Count, value=1)
    return Response(status_code=error.status, content_type=content_types.APPLICATION_JSON,
                    body=json.dumps(ingestion.error_body(error)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context) -> dict:
    return app.resolve(event, context)
