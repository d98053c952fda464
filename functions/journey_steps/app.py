"""One Task of a journey execution (every step type; the compiled state machine passes `step_type`)."""
from __future__ import annotations

from engage.journeys import steps
from engage.observability import logger, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return steps.handle(event)
