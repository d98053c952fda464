"""One step of the audience backfill state machine: a page loop over one scan segment."""
from __future__ import annotations

from engage.audiences import backfill
from engage.observability import logger, tracer

# Hand the segment back to the state machine with this much time left (it calls again).
RESERVE_MS = 30_000


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return backfill.run_page(event, time_left=lambda: context.get_remaining_time_in_millis() > RESERVE_MS)
