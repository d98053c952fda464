"""MembershipsTable stream -> DestinationsQueue (realtime destinations) or change logs (batch, paused)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent, event_source

from engage.audiences.changes import StreamRecord
from engage.destinations import router
from engage.failures.handler import replayable
from engage.observability import logger, metrics, tracer

if TYPE_CHECKING:  # a type only: powertools' batch package loads every event class with it
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@replayable
@event_source(data_class=DynamoDBStreamEvent)
def lambda_handler(event: DynamoDBStreamEvent, context) -> PartialItemFailureResponse:
    records = [StreamRecord(r.dynamodb.sequence_number, r.dynamodb.old_image, r.dynamodb.new_image)
               for r in event.records]
    return {"batchItemFailures": [{"itemIdentifier": s} for s in router.route_batch(records)]}
