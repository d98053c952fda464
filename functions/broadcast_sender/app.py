"""Sends broadcast recipients: SQS messages of up to 25 profile ids (engage.broadcasts.sending). A message
to retry (rate bucket full, a send in flight or the provider unavailable) is reported as a batch item
failure and comes back after the visibility timeout; the rest of the batch is deleted."""
from __future__ import annotations

import json

from engage.broadcasts import sending
from engage.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    failures = []
    for record in event["Records"]:
        try:
            done = sending.process(json.loads(record["body"]))
        except Exception:  # noqa: BLE001 - this message only: the others of the batch are not retried for it
            logger.exception("broadcast message failed", extra={"message_id": record["messageId"]})
            done = False
        if not done:
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
