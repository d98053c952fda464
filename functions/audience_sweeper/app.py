"""Every minute (EventBridge Scheduler): re-evaluate the profiles that time alone may move."""
from __future__ import annotations

from engage.audiences import sweeper
from engage.observability import logger, metrics, tracer

# Stop taking new profiles when less than this is left; the next run continues from the cursor.
RESERVE_MS = 15_000


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    report = sweeper.sweep(time_left=lambda: context.get_remaining_time_in_millis() > RESERVE_MS)
    logger.info("sweep", extra=report.as_dict())
    return report.as_dict()
