"""EventsTable stream -> profiles (identity, merges, traits, aggregates, history).

The event source mapping reports partial failures (ReportBatchItemFailures): a record that
cannot be applied is returned in batchItemFailures, so only it is retried, bisected and
finally sent to the on-failure queue (then parked with its payload: engage.failures);
the rest of the batch is kept.
"""
from __future__ import annotations

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.typing import LambdaContext

from engage import profile_processor
from engage.failures.handler import replayable
from engage.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@replayable
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return profile_processor.process_stream_batch(event, context)
