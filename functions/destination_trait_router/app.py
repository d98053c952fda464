"""DestinationTraitChangesQueue (Computed Trait Changed from the bus) -> DestinationsQueue or change logs."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from engage.destinations import router
from engage.observability import logger, metrics, tracer

if TYPE_CHECKING:  # a type only: powertools' batch package loads every event class with it
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context) -> PartialItemFailureResponse:
    records = event.get("Records") or []
    details = [json.loads(r["body"]).get("detail") or {} for r in records]  # the EventBridge events the rule sent
    failed = router.route_trait_changes(details)
    return {"batchItemFailures": [{"itemIdentifier": records[i]["messageId"]} for i in failed]}
