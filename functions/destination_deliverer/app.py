"""DestinationsQueue (FIFO) -> webhook / Segment / EventBridge deliveries, one change a message.

A message that must wait (a retry's backoff, the rate limit) gets its visibility moved and is
reported as a batch item failure; the FIFO processor then holds the rest of its group (per-profile
order) and lets other groups through.
"""
from __future__ import annotations

import json

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.destinations import delivery, parking, queue, store
from engage.failures.handler import REPLAY_KEY
from engage.observability import logger, metrics, tracer

processor = SqsFifoPartialProcessor(skip_group_on_error=True)
# A whole batch waiting (backoff, rate limit) is not an error: the batch item failures say what comes back.
processor.raise_on_entire_batch_failure = False
_function = {"name": "DestinationDelivererFunction"}


class Wait(Exception):
    """The message comes back later (its visibility was moved)."""


def record_handler(record: SQSRecord) -> str:
    receive_count = int(record.attributes.approximate_receive_count or 1)
    result = delivery.handle(json.loads(record.body), receive_count, _function["name"])
    if result.done:
        metrics.add_metric(name="DestinationMessages", unit=MetricUnit.Count, value=1)
        return result.what
    if result.delay is not None:
        queue.delay(record.receipt_handle, result.delay)
    raise Wait(result.what)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    _function["name"] = getattr(context, "function_name", None) or _function["name"]
    if isinstance(event, dict) and REPLAY_KEY in event:  # `engage replay` of parked deliveries
        return parking.serve(event[REPLAY_KEY], _function["name"])
    store.clear_cache()  # destinations read once per invocation: pauses and connections seen at once
    try:
        return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    finally:
        delivery.flush_status()
