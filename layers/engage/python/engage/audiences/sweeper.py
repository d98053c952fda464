"""Time passing: re-evaluate only the profiles whose memberships are due to change with time.

Every evaluation records the profile's next time edge in the due index (`engage.audiences.due`);
the sweeper, run every minute by EventBridge Scheduler, Queries the due day buckets from its
cursor to now, re-evaluates each due profile's time-based audiences, and moves the profile's
due item to its next edge (or drops it). Work per run is what is due, never a scan.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from engage import clock
from engage.audiences import due, runtime
from engage.observability import logger, metrics

# A profile whose re-evaluation fails is looked at again this much later (it must not hold
# the cursor back forever, nor be dropped).
RETRY_AFTER = timedelta(minutes=15)


@dataclass
class SweepReport:
    profiles: int = 0
    entered: int = 0
    exited: int = 0
    failed: int = 0
    days_closed: int = 0
    complete: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def sweep(now: datetime | None = None, *, time_left: Callable[[], bool] = lambda: True) -> SweepReport:
    """Process everything due at `now`; stop early (complete=False) when `time_left()` says so."""
    now = now or clock.now()
    runtime.begin_batch()
    report = SweepReport()
    contiguous = True  # the cursor only moves past days that are done, oldest first
    for day in due.days_to_sweep(now):
        for item in due.due_in_day(day, now):
            if not time_left():
                report.complete = False
                return report
            report.profiles += 1
            try:
                changes, next_due = runtime.reevaluate(item.space_id, item.profile_id, now)
            except Exception:  # noqa: BLE001 - one bad profile must not stop the sweep
                logger.exception("sweep failed for a profile", extra={"space": item.space_id,
                                                                       "profile_id": item.profile_id})
                report.failed += 1
                due.reschedule(item, now + RETRY_AFTER)
                continue
            report.entered += sum(1 for c in changes if c.member)
            report.exited += sum(1 for c in changes if not c.member)
            due.reschedule(item, next_due)
        if contiguous and due.close_day(day, now):
            report.days_closed += 1
        else:
            contiguous = False
    metrics.add_metric(name="AudienceSweepProfiles", unit="Count", value=report.profiles)
    return report
