"""AudienceExportFunction: one audience CSV export job (invoked asynchronously by the management API)."""
from __future__ import annotations

from engage.audiences import export
from engage.observability import logger, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return export.generate(event)
