"""ProfileEventsTable stream (track inserts) -> journey waits released, event-entry journeys enrolled."""
from __future__ import annotations

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from engage.failures import handler as failure_handler
from engage.failures.handler import replayable
from engage.journeys import events, store
from engage.observability import logger, metrics, tracer


def record_handler(record: DynamoDBRecord) -> dict:
    return events.on_history_item(record.dynamodb.new_image)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@replayable
def lambda_handler(event, context):
    store.clear_cache()  # journeys are read once per space per batch: a publish counts from the next batch
    return process_partial_response(event=event, record_handler=record_handler,
                                    processor=failure_handler.BatchProcessor(), context=context)
