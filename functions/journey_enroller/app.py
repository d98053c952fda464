"""JourneyEntryQueue (from the bus) -> one journey execution per enrollment; goals met between Tasks.

`Audience Entered` enrolls (and checks goals reading that audience); `Audience Exited` and
`Computed Trait Changed` check the goals that read them (engage.journeys.goals). A profile leaving the
system audience `all` because it was merged into another leaves its journeys (engage.journeys.leave)."""
from __future__ import annotations

import json

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.journeys import enrollment, goals, leave, store
from engage.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> int:
    event = json.loads(record.body)  # the EventBridge event the rule delivered
    detail, kind = event["detail"], event.get("detail-type")
    if kind == "Computed Trait Changed":
        return goals.on_computed_trait(detail["space"], detail["profile_id"], detail["computed_trait_key"])
    goals.on_audience(detail["space"], detail["profile_id"], detail["audience_key"])
    if kind == "Audience Exited":
        return leave.on_audience_exited(detail["space"], detail["profile_id"], detail["audience_key"])
    return sum(1 for outcome in enrollment.on_audience_entered(detail) if outcome.enrolled)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    # Journeys are read once per space per batch (one Query): a publish or pause takes effect at the next batch.
    store.clear_cache()
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
