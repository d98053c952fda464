"""SweepQueue (FIFO, one group per due bucket) -> re-evaluate what is due in one (day, shard) bucket.

A bucket left unfinished when time runs short is not an error: its items stay due, and the next
minute's dispatch hands it out again. A message that keeps failing (a malformed body, DynamoDB
refusing for minutes) goes to SweepDeadLetterQueue after its receives (alarmed); the index still
holds the work, so nothing due is lost with it.
"""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.audiences import sweeper
from engage.observability import logger, metrics, tracer

# Stop taking new profiles when less than this is left.
RESERVE_MS = 15_000

# Buckets are independent: a failing one must not hold back the others of a batch (their own groups).
processor = SqsFifoPartialProcessor(skip_group_on_error=True)


def record_handler(record: SQSRecord, lambda_context=None) -> dict:
    try:
        bucket = sweeper.Bucket.parse(json.loads(record.body))
    except ValueError as error:  # it comes back, then goes to the dead-letter queue: say why
        logger.error(f"unreadable sweep message: {error}", extra={"message_id": record.message_id})
        raise
    report = sweeper.sweep_shard(bucket, time_left=lambda: lambda_context is None
                                 or lambda_context.get_remaining_time_in_millis() > RESERVE_MS)
    # One line per bucket is most of this function's log bytes (CloudWatch bills each): counts go to the
    # metrics, and the line is logged at WARNING only for a sweep cut short (the next dispatch resumes it).
    log = logger.debug if report.complete else logger.warning
    log("bucket swept", extra={**bucket.as_dict(), **report.as_dict()})
    return report.as_dict()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
