"""The sender as a function: a Step Functions task's SendRequest -> Delivery, or an SQS batch of them.

Direct invoke (journeys' `send` steps): the payload is a SendRequest's fields; the answer is the Delivery.
`SendInProgress` / `ProviderUnavailable` are raised so the task's Retry comes back later (same key: at
most one send). SQS (broadcast fan-out): each record's body is a SendRequest; those to retry are
reported as batch item failures.
"""
from __future__ import annotations

import json

from engage.messaging import ProviderUnavailable, SendInProgress, SendRequest, send_message
from engage.observability import logger, metrics, tracer

FIELDS = ("space_id", "profile_id", "channel", "template", "idempotency_key", "source", "event", "transactional",
          "ignore_subscription", "extra_scope")


def request_of(payload: dict) -> SendRequest:
    unknown = set(payload) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown SendRequest field(s): {sorted(unknown)}")
    return SendRequest(**payload)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    if isinstance(event, dict) and "Records" in event:
        failures = []
        for record in event["Records"]:
            try:
                send_message(request_of(json.loads(record["body"])))
            except (SendInProgress, ProviderUnavailable) as error:
                logger.warning("send to retry", extra={"message_id": record["messageId"], "reason": str(error)})
                failures.append({"itemIdentifier": record["messageId"]})
            except Exception:  # noqa: BLE001 - this record only: a malformed body failed the whole batch, so the
                # requests after it were never sent and went to the DLQ with it once the retries ran out
                logger.exception("send request failed", extra={"message_id": record["messageId"]})
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}
    return send_message(request_of(event)).to_dict()
