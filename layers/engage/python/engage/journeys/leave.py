"""Stop a profile's running journey executions (profile deletion, engage.privacy).

For each journey of the space, the profile's run items (JourneysTable pk = <space>|<key>|<profile>,
sk = run|<entry>) that have not ended are stopped with StopExecution and marked ended with the
reason given. Idempotent: an execution already stopped or finished is not an error, and a run
already marked is skipped. Cost: one Query per journey of the space, one StopExecution and one
UpdateItem per running run.
"""
from __future__ import annotations

from engage import clock
from engage.journeys import enrollment, store
from engage.observability import logger


def stop_profile_runs(space_id: str, profile_id: str, reason: str = "profile_deleted") -> int:
    """Stop and mark every running run of the profile; the number stopped."""
    stopped = 0
    for journey in store.list_all(space_id):
        pk = store.profile_pk(space_id, journey.key, profile_id)
        for run in store.RunRecord.query(pk, store.RunRecord.sk.startswith("run|"), consistent_read=True):
            if run.exited_at:
                continue
            if run.execution_arn:
                try:
                    enrollment._sfn().stop_execution(executionArn=run.execution_arn, error="ProfileDeleted",
                                                     cause="the profile was deleted (data rights request)")
                except Exception as error:  # noqa: BLE001 - finished or gone: nothing left to stop
                    if "ExecutionDoesNotExist" not in type(error).__name__ and \
                            "ExecutionDoesNotExist" not in str(error):
                        logger.info("stop_execution refused", extra={"reason": str(error)[:200]})
            run.update(actions=[store.RunRecord.exited_at.set(clock.iso()),
                                store.RunRecord.exit_reason.set(reason)])
            stopped += 1
    return stopped
