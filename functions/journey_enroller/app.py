"""JourneyEntryQueue (Audience Entered from the bus) -> one journey execution per enrollment."""
from __future__ import annotations

import json

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.journeys import enrollment, store
from engage.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> int:
    event = json.loads(record.body)  # the EventBridge event the rule delivered
    return sum(1 for outcome in enrollment.on_audience_entered(event["detail"]) if outcome.enrolled)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    # Journeys are read once per space per batch (one Query): a publish or pause takes effect at the next batch.
    store.clear_cache()
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
