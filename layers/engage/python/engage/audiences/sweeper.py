"""Time passing: re-evaluate only the profiles whose memberships are due to change with time.

Every evaluation records the profile's next time edge in the due index (`engage.audiences.due`),
in a (day, shard) bucket. Two functions work it:

- `dispatch`, every minute (EventBridge Scheduler, one at a time: it alone moves the cursor), asks
  each open (day, shard) bucket, from the cursor to today, whether anything in it is due (a Query
  for one item) and hands each bucket that has work to a worker (one SweepQueue message). A past
  day whose buckets are all empty is closed: the cursor moves past it, oldest day first.
- `sweep_shard`, the worker (SweepQueue, FIFO: one message group per bucket, so a bucket is swept
  by one worker at a time while buckets are swept in parallel), Queries its bucket a page at a
  time, reads the page's profiles in one BatchGetItem, re-evaluates each one's time-based audiences
  and moves its due item to its next edge (or drops it). When its time runs short it stops; what
  is left is still due, and the next minute's dispatch hands the bucket out again.

Work is what is due, never a scan; the index, not the queue, holds what is left to do, so a lost,
repeated or late message costs at most a minute. A profile swept twice (a message redelivered
while its first worker was still running) is re-evaluated twice: membership writes and due moves
are conditional (docs/audiences.md), so nothing is counted or moved twice.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from engage import clock, lazy
from engage.audiences import due
from engage.config import settings
from engage.observability import logger, metrics

# The workers re-evaluate profiles; the dispatch only reads the index and must not load the audience engine.
runtime = lazy.module("engage.audiences.runtime")

# A profile whose re-evaluation fails is looked at again this much later (it must not hold
# the cursor back forever, nor be dropped).
RETRY_AFTER = timedelta(minutes=15)
# Due items a worker takes per Query, and profiles per BatchGetItem (at most 100; 25 profiles of
# DynamoDB's 400 KB item limit stay under BatchGetItem's 16 MB response).
PAGE = 25


@dataclass(frozen=True)
class Bucket:
    """One (day, shard) of the due index: a worker's unit of work."""
    day: str
    shard: int

    @classmethod
    def parse(cls, body: dict) -> Bucket:
        """A SweepQueue message body; a clear error says what is wrong with it."""
        body = body if isinstance(body, dict) else {}
        day, shard = body.get("day"), body.get("shard")
        try:
            clock.parse(f"{day}T00:00:00Z")
        except (TypeError, ValueError):
            raise ValueError(f"a sweep message needs `day` as YYYY-MM-DD, got {day!r}") from None
        if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < due.MAX_SHARDS:
            raise ValueError(f"a sweep message needs `shard` in 0..{due.MAX_SHARDS - 1}, got {shard!r}")
        return cls(day, shard)

    def as_dict(self) -> dict:
        return {"day": self.day, "shard": self.shard}


@dataclass
class DispatchReport:
    days_open: int = 0
    days_closed: int = 0
    buckets: list[Bucket] = field(default_factory=list)  # handed to workers
    complete: bool = True  # False: stopped for time before the last open day

    def as_dict(self) -> dict:
        return {"days_open": self.days_open, "days_closed": self.days_closed, "buckets": len(self.buckets),
                "complete": self.complete}


@dataclass
class SweepReport:
    profiles: int = 0
    entered: int = 0
    exited: int = 0
    failed: int = 0
    complete: bool = True

    def add(self, other: SweepReport) -> None:
        self.profiles += other.profiles
        self.entered += other.entered
        self.exited += other.exited
        self.failed += other.failed
        self.complete = self.complete and other.complete

    def as_dict(self) -> dict:
        return asdict(self)


def dispatch(now: datetime | None = None, *, send: Callable[[list[Bucket]], None],
             time_left: Callable[[], bool] = lambda: True) -> DispatchReport:
    """Hand every open bucket that has something due to `send`; close the past days that are empty.

    Stops at the first day it has no time for (`time_left()` False; complete=False): after a long gap (the
    schedule off for months, the local clock moved years) the days from the cursor are thousands of Queries,
    and a run cut off by its timeout sent nothing it had found. The next run goes on from the cursor.
    """
    now = now or clock.now()
    report = DispatchReport()
    contiguous = True  # the cursor only moves past days that are done, oldest first
    plan = due.plan(now)
    for day in plan.days:
        if not time_left():
            report.complete = False
            break
        report.days_open += 1
        busy = [Bucket(day, shard) for shard in plan.shards if due.has_due(day, shard, now)]
        report.buckets += busy
        if not busy and contiguous and due.close_day(day, now, plan.shards):
            report.days_closed += 1
        else:
            contiguous = False
    if report.buckets:
        send(report.buckets)
    metrics.add_metric(name="AudienceSweepBuckets", unit="Count", value=len(report.buckets))
    return report


def enqueue(buckets: list[Bucket], now: datetime | None = None) -> None:
    """SweepQueue messages for `buckets` (SendMessageBatch, 10 a request). The group is the bucket, so
    one worker sweeps a bucket at a time; the deduplication id adds the minute, so a dispatch repeated
    within a minute sends nothing new, and every minute's dispatch can hand a bucket out again."""
    minute = clock.iso(now or clock.now())[:16]
    entries = [{"Id": str(n), "MessageBody": json.dumps(bucket.as_dict(), sort_keys=True),
                "MessageGroupId": f"{bucket.day}|{bucket.shard}",
                "MessageDeduplicationId": f"{bucket.day}|{bucket.shard}|{minute}"} for n, bucket in enumerate(buckets)]
    url = settings().require("sweep_queue_url")
    for start in range(0, len(entries), 10):
        response = _sqs().send_message_batch(QueueUrl=url, Entries=entries[start:start + 10])
        if response.get("Failed"):  # the run fails; the next minute's dispatch sends them again
            raise RuntimeError(f"SweepQueue refused {len(response['Failed'])} messages: {response['Failed'][0]}")


@lru_cache(maxsize=1)
def _sqs():
    import boto3  # the worker, which imports this module too, never sends
    return boto3.client("sqs")


def sweep_shard(bucket: Bucket, now: datetime | None = None, *,
                time_left: Callable[[], bool] = lambda: True) -> SweepReport:
    """Re-evaluate what is due in one bucket at `now`; stop early (complete=False) when `time_left()` says so."""
    now = now or clock.now()
    runtime.begin_batch()
    report = SweepReport()
    for page in due.due_in_shard(bucket.day, bucket.shard, now, PAGE):
        if not time_left():
            report.complete = False
            break
        images = runtime.profile_images([item.pk for item in page])
        for item in page:
            if not time_left():
                report.complete = False
                break
            _sweep_profile(item, images.get(item.pk), now, report)
        if not report.complete:
            break
    metrics.add_metric(name="AudienceSweepProfiles", unit="Count", value=report.profiles)
    return report


def _sweep_profile(item: due.DueRecord, image: dict | None, now: datetime, report: SweepReport) -> None:
    report.profiles += 1
    try:
        changes, next_due = runtime.reevaluate(item.space_id, item.profile_id, now, image=image)
    except Exception:  # noqa: BLE001 - one bad profile must not stop the sweep
        logger.exception("sweep failed for a profile", extra={"space": item.space_id, "profile_id": item.profile_id})
        report.failed += 1
        due.reschedule(item, now + RETRY_AFTER)
        return
    report.entered += sum(1 for c in changes if c.member)
    report.exited += sum(1 for c in changes if not c.member)
    due.reschedule(item, next_due)
