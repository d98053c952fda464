"""powertools' BatchProcessor for stream handlers that process records one by one, in order.

Apart from engage.failures.handler (the notes and replays every stream handler wraps itself in) so that
the handlers that report failures themselves (the routers) do not load powertools' batch utility.
"""
from __future__ import annotations

from aws_lambda_powertools.utilities.batch import BatchProcessor as _PowertoolsBatchProcessor
from aws_lambda_powertools.utilities.batch import EventType

from engage.failures.handler import BlockedBehindFailure, describe, remember


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
            remember(sequence_number, describe(exception[1]))
        return super().failure_handler(record, exception)
