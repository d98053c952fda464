"""Starts broadcasts: Scheduler invocations ({"action": "start" | "send_zone", ...}) and the work queue's
continuations (snapshot pages, fan-out). engage.broadcasts.engine holds the logic and its guarantees."""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from engage.broadcasts import engine
from engage.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def _work(record) -> None:
    logger.info("broadcast work", extra=engine.handle(json.loads(record.body)))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    if isinstance(event, dict) and "Records" in event:
        return process_partial_response(event=event, record_handler=_work, processor=processor, context=context)
    result = engine.handle(event)  # EventBridge Scheduler's Input
    logger.info("broadcast work", extra=result)
    return result
