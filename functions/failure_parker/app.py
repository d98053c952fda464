"""StreamFailureQueue -> FailuresTable: each stream record a function gave up on, parked with its payload."""
from __future__ import annotations

import json
from functools import lru_cache

import boto3

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.failures import parker
from engage.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


@lru_cache(maxsize=1)
def _streams():
    """Made on the first message, as every function makes its clients (a client's service model is most of
    this module's import otherwise): the first invocation pays it, warm ones reuse it."""
    return boto3.client("dynamodbstreams")


def record_handler(record: SQSRecord) -> int:
    parked = parker.park_message(json.loads(record.body), _streams())
    metrics.add_metric(name="ParkedRecords", unit=MetricUnit.Count, value=parked)
    return parked


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
