"""SES bounce / complaint events (via the feedback SNS topic) -> suppression list and email unsubscribe."""
from __future__ import annotations

from engage.messaging import feedback
from engage.observability import logger, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    outcomes = feedback.handle_sns_event(event)
    logger.info("feedback applied", extra={"outcomes": outcomes})
    return {"outcomes": outcomes}
