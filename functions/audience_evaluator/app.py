"""ProfilesTable stream -> audience memberships (only the audiences whose inputs changed)."""
from __future__ import annotations

from functools import partial

from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from engage.audiences import runtime
from engage.failures.handler import BatchProcessor, remember, replayable
from engage.observability import logger, metrics, tracer

processor = BatchProcessor()  # remembers each failed record's exception for its parked failure


def record_handler(record: DynamoDBRecord, backlog: runtime.AccountBacklog) -> int:
    return len(runtime.on_profile_change(record.dynamodb.old_image, record.dynamodb.new_image,
                                         backlog=backlog, owner=record.dynamodb.sequence_number))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@replayable
def lambda_handler(event, context):
    runtime.begin_batch()  # an audience created before this batch is evaluated in it
    backlog = runtime.AccountBacklog()  # accounts owed by this batch's users: each evaluated once
    response = process_partial_response(event=event, record_handler=partial(record_handler, backlog=backlog),
                                        processor=processor, context=context)
    _, failed = backlog.flush()
    reported = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
    for owner in failed - reported:
        remember(owner, "the accounts of this record's user could not be re-evaluated (see the logs)")
    response.setdefault("batchItemFailures", []).extend(
        {"itemIdentifier": owner} for owner in sorted(failed - reported))
    return response
