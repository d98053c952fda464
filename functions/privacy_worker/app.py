"""PrivacyJobsQueue -> advance a deletion job (engage.privacy.jobs.run: resumable, idempotent).

A message redelivered after a crash, or after the job finished, continues it or changes nothing.
A step that keeps failing returns the message until the queue's maxReceiveCount parks it in
PrivacyJobsDeadLetterQueue (alarmed); the job shows `running` with its `error`."""
from __future__ import annotations

import json

import engage  # noqa: F401 - before powertools: its event classes and resolvers then load per name

# isort: split
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from engage.journeys import store as journeys_store
from engage.observability import logger, metrics, tracer
from engage.privacy import jobs
from engage.privacy.erase import Person  # noqa: F401 (every job erases: loaded at init, lazy elsewhere)

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> str:
    message = json.loads(record.body)
    job = jobs.view(jobs.run(message["space_id"], message["job_id"]))  # raises to be retried by SQS
    logger.info("deletion job advanced", extra={"job": job["id"], "status": job["status"], "erased": job["erased"]})
    return job["status"]


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    journeys_store.clear_cache()  # the space's journeys as they are now (their run items are erased)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
