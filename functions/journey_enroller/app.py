"""JourneyEntryQueue (from the bus) -> one journey execution per enrollment; goals met between Tasks.

`Audience Entered` enrolls (and checks goals reading that audience); `Audience Exited` and
`Computed Trait Changed` check the goals that read them (engage.journeys.goals); `Audience Memberships
Changed` (AudienceEventGrouping=evaluation) is read as the per-change events it carries. A profile leaving
the system audience `all` because it was merged into another leaves its journeys (engage.journeys.leave).
Everything past parsing is engage.journeys.audience_events."""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.journeys import audience_events, store
from engage.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> int:
    event = json.loads(record.body)  # the EventBridge event the rule delivered
    return audience_events.handle(event.get("detail-type"), event["detail"])


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    # Journeys are read once per space per batch (one Query): a publish or pause takes effect at the next batch.
    store.clear_cache()
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
