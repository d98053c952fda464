"""AudienceImportQueue -> one chunk of a manual audience's CSV import job, or one step of its removals
(engage.audiences.imports.run: a redelivered message writes and counts nothing twice).

A message that keeps failing comes back until the queue's maxReceiveCount parks it in
AudienceImportDeadLetterQueue (alarmed); its job then stops making progress and is reported failed.
"""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.audiences import imports
from engage.observability import logger, metrics, tracer

# A removal step stops taking pages when less than this is left, and queues the next step.
RESERVE_MS = imports.RESERVE_MS

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord, lambda_context=None) -> str:
    message = json.loads(record.body)
    outcome = imports.run(message, time_left=lambda: lambda_context is None
                          or lambda_context.get_remaining_time_in_millis() > RESERVE_MS)
    logger.info("import chunk", extra={"job_id": message.get("job_id"), "step": message.get("step"),
                                       "n": message.get("n"), "outcome": outcome})
    return outcome


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
