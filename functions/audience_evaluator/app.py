"""ProfilesTable stream -> audience memberships (only the audiences whose inputs changed), and
`Computed Trait Changed` for the computed traits whose values changed."""
from __future__ import annotations

from functools import partial

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from engage.audiences import runtime
from engage.computed_traits import events as computed_events
from engage.failures.handler import BatchProcessor, remember, replayable
from engage.observability import logger, metrics, tracer

processor = BatchProcessor()  # remembers each failed record's exception for its parked failure


def record_handler(record: DynamoDBRecord, backlog: runtime.AccountBacklog, changed: dict[str, list]) -> int:
    old, new = record.dynamodb.old_image, record.dynamodb.new_image
    details = computed_events.changes(old, new)
    if details:
        changed[record.dynamodb.sequence_number] = details
    return len(runtime.on_profile_change(old, new, backlog=backlog, owner=record.dynamodb.sequence_number))


def publish_computed(changed: dict[str, list]) -> set[str]:
    """Publish the batch's computed trait changes; the records to retry when that failed."""
    if not changed:
        return set()
    try:
        if computed_events.publish([d for details in changed.values() for d in details]) == 0:
            return set()
    except Exception:  # noqa: BLE001 - reported as record failures below, retried with them
        logger.exception("publishing Computed Trait Changed failed")
    return set(changed)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@replayable
def lambda_handler(event, context):
    runtime.begin_batch()  # an audience created before this batch is evaluated in it
    backlog = runtime.AccountBacklog()  # accounts owed by this batch's users: each evaluated once
    changed: dict[str, list] = {}  # sequence number -> its Computed Trait Changed details
    response = process_partial_response(event=event, record_handler=partial(record_handler, backlog=backlog,
                                                                            changed=changed),
                                        processor=processor, context=context)
    _, failed = backlog.flush()
    for owner in publish_computed(changed):
        failed.add(owner)
    reported = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
    for owner in failed - reported:
        remember(owner, "the accounts of this record's user could not be re-evaluated (see the logs)")
    response.setdefault("batchItemFailures", []).extend(
        {"itemIdentifier": owner} for owner in sorted(failed - reported))
    return response
