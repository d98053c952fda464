"""The stream handlers' side of parked failures: note why records fail, and serve replays.

`replayable` wraps a stream function's lambda_handler (innermost but for powertools' event_source):

- on a stream batch, it runs the handler and, for each record the handler reported in
  batchItemFailures (or every record, when the handler raised), notes the reason in FailuresTable:
  the exception the record raised when known (`BatchProcessor` below remembers it), else a
  description. At most NOTES_PER_INVOCATION notes a call: a whole batch failing on throttling costs
  a bounded number of writes, and bisection isolates the real culprits into small batches that are
  then noted in full. A note that cannot be written is logged, never fails the batch;
- on `{"replayParked": {"ids": [...]}}` (sent by `engage replay` or FailureReplayFunction), it
  rebuilds the parked records (`replay.rebuild`), runs the handler on them as one batch and marks
  each item replayed or failed again; it answers {"replayed": [...], "failed": [...], "skipped": [...]}.
"""
from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor as _PowertoolsBatchProcessor
from aws_lambda_powertools.utilities.batch import EventType

from engage.failures import store
from engage.observability import logger

REPLAY_KEY = "replayParked"
NOTES_PER_INVOCATION = 25

# Sequence number -> why the record failed, filled while the handler runs (one invocation at a time).
_errors: dict[str, str] = {}


def describe(error: BaseException) -> str:
    """`Type: message` and the innermost frame: enough to find the cause without the logs."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


class BlockedBehindFailure(Exception):
    """A stream record not attempted because an earlier record of its batch failed."""


class BatchProcessor(_PowertoolsBatchProcessor):
    """powertools' BatchProcessor for a stream, in order: once a record fails, the records after it are
    not attempted and are reported failed too; it also remembers each failed record's exception.

    powertools goes on with the records after a failure, but Lambda retries a stream batch *from* the
    first reported record, so those records come again anyway: applying them now only applied a
    profile's later messages before its earlier failed one (found by the fault-injection harness:
    a profile's `applied` log, and which message creates a profile, depended on where a fault hit).
    """

    def __init__(self, event_type: EventType = EventType.DynamoDBStreams, **kwargs):
        super().__init__(event_type=event_type, **kwargs)
        self._failed_at: str | None = None

    def _prepare(self):
        super()._prepare()
        self._failed_at = None

    def _process_record(self, record: dict):
        if self._failed_at is not None:
            blocked = BlockedBehindFailure(f"not attempted: record {self._failed_at} before it in the batch "
                                           "failed, and Lambda retries the batch from there")
            return self.failure_handler(self._to_batch_type(record, self.event_type, self.model),
                                        (type(blocked), blocked, None))
        outcome = super()._process_record(record)
        if outcome[0] == "fail":
            self._failed_at = str((record.get("dynamodb") or {}).get("SequenceNumber") or "?")
        return outcome

    def failure_handler(self, record, exception):
        sequence_number = getattr(getattr(record, "dynamodb", None), "sequence_number", None)
        if sequence_number and exception[1] is not None:
            _errors[sequence_number] = describe(exception[1])
        return super().failure_handler(record, exception)


def remember(sequence_number: str, reason: str) -> None:
    """For handlers without a BatchProcessor (the router): why this record is reported failed."""
    _errors[sequence_number] = reason


def replayable(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(handler)
    def wrapper(event, context):
        if isinstance(event, dict) and REPLAY_KEY in event:
            from engage.failures import replay

            return replay.serve(handler, event[REPLAY_KEY], context)
        _errors.clear()
        try:
            response = handler(event, context)
        except Exception as error:
            _note(_sequence_numbers(event), f"the invocation failed: {describe(error)}", context)
            raise
        failed = [f.get("itemIdentifier") for f in (response or {}).get("batchItemFailures", [])
                  if isinstance(f, dict)]
        if failed:
            _note([s for s in failed if s], "reported failed by the handler (no exception: see its logs)", context)
        return response

    return wrapper


def _sequence_numbers(event) -> list[str]:
    records = event.get("Records", []) if isinstance(event, dict) else []
    return [r["dynamodb"]["SequenceNumber"] for r in records
            if isinstance(r, dict) and isinstance(r.get("dynamodb"), dict) and r["dynamodb"].get("SequenceNumber")]


def _note(sequence_numbers: list[str], default: str, context) -> None:
    function = getattr(context, "function_name", None)
    if not function:
        return
    request_id = getattr(context, "aws_request_id", None)
    for sequence_number in sequence_numbers[:NOTES_PER_INVOCATION]:
        try:
            store.note(function, sequence_number, _errors.get(sequence_number, default), request_id)
        except Exception:  # noqa: BLE001 - a note is a diagnosis aid; the retry must go on regardless
            logger.exception("could not note a failed stream record", extra={"sequence_number": sequence_number})
    _errors.clear()
