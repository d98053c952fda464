"""Every minute (EventBridge Scheduler): hand the due index's buckets with work to the sweep workers.

One run at a time (reserved concurrency 1): the dispatch alone moves the index's cursor.
"""
from __future__ import annotations

from engage.audiences import sweeper
from engage.observability import logger, metrics, tracer

# Kept for sending what the run found (SweepQueue) and its log line: the dispatch stops with this much left.
RESERVE_MS = 10_000


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    report = sweeper.dispatch(send=sweeper.enqueue, time_left=lambda: context is None
                              or context.get_remaining_time_in_millis() > RESERVE_MS)
    # Every minute, whatever the traffic: the line is kept only when the dispatch stopped for time.
    (logger.debug if report.complete else logger.warning)("sweep dispatched", extra=report.as_dict())
    return report.as_dict()
