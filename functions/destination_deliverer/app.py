"""DestinationsQueue (FIFO) -> webhook / Segment / EventBridge deliveries, one change a message.

A message that must wait (a retry's backoff, the rate limit) gets its visibility moved and is
reported as a batch item failure; the FIFO processor then holds the rest of its group (per-profile
order) and lets other groups through. No send outlasts the invocation: each is bounded by the time
left (a batch of ten slow receivers ends with the ones not tried back in the queue at once), and the
changes of a destination whose receiver lately did not answer in time go last in the batch.
"""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
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
_delayed: dict[str, int] = {}  # message group -> the wait its first failing message asked for
_moved: set[str] = set()  # messages whose visibility the handler already moved


class Wait(Exception):
    """The message comes back later (its visibility was moved)."""


def record_handler(record: SQSRecord, lambda_context=None) -> str:
    seconds_left = lambda_context.get_remaining_time_in_millis() / 1000 if lambda_context is not None else None
    result = delivery.handle(json.loads(record.body), _function["name"], seconds_left)
    if result.done:
        metrics.add_metric(name="DestinationMessages", unit=MetricUnit.Count, value=1)
        return result.what
    if result.delay is not None:
        queue.delay(record.receipt_handle, result.delay)
        _delayed[record.attributes.message_group_id or ""] = result.delay
        _moved.add(record.message_id)
    raise Wait(result.what)


def _hold_the_rest_of_their_groups(event: dict, response: dict) -> None:
    """The messages the FIFO processor skipped behind a waiting one come back with it, not after the
    queue's whole visibility timeout (their group stays locked while any of them is in flight)."""
    failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
    for record in event.get("Records", []):
        group = (record.get("attributes") or {}).get("MessageGroupId") or ""
        if record["messageId"] in failed and group in _delayed and record["messageId"] not in _moved:
            queue.delay(record["receiptHandle"], _delayed[group])


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    _function["name"] = getattr(context, "function_name", None) or _function["name"]
    if isinstance(event, dict) and REPLAY_KEY in event:  # `engage replay` of parked deliveries
        return parking.serve(event[REPLAY_KEY], _function["name"])
    store.clear_cache()  # destinations read once per invocation: pauses and connections seen at once
    _delayed.clear()
    _moved.clear()
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        event = {**event, "Records": delivery.slow_last(event["Records"])}
    try:
        response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                            context=context)
        _hold_the_rest_of_their_groups(event, response)
        return response
    finally:
        delivery.flush_status()
