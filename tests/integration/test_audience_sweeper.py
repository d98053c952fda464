"""Time passing: the scheduled sweeper re-evaluates only due profiles, and windowed audiences move."""
from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest

from engage import clock
from engage.audiences import due
from engage.db import key
from engage.memberships_store import MembershipRecord
from tests.integration.audience_support import (
    LambdaContext,
    StreamReader,
    audience_engine,  # noqa: F401 - the `engine` fixture
    call_api,
    dispatch_sweep,
    handler,
    make_profile,
    sweep,
)

LAPSED = {"key": "lapsed", "name": "Lapsed", "backfill": False, "condition": {"all": [
    {"event": "Login", "window": {"between_days": [30, 90]}},
    {"event": "Login", "count": {"op": "eq", "value": 0}, "window": {"within_days": 30}}]}}


def logged_in(days_ago: int) -> dict:
    moment = clock.now() - timedelta(days=days_ago)
    return {"daily_counts": {"Login": {moment.strftime("%Y%m%d"): 1}},
            "event_stats": {"Login": {"first": clock.iso(moment), "last": clock.iso(moment), "total": 1}}}


def member(profile_id: str, audience_key: str = "lapsed") -> bool | None:
    try:
        return MembershipRecord.get(key("acme", profile_id), audience_key).member
    except MembershipRecord.DoesNotExist:
        return None


@pytest.fixture
def lapsing(engine, space):
    assert call_api("POST", "/v1/audiences", LAPSED)[0] == 201
    profiles = StreamReader(engine, "ProfilesTable")
    make_profile("old", **logged_in(40))      # active 30-90 days ago, quiet since: a member
    make_profile("recent", **logged_in(10))   # active 10 days ago: not yet lapsed
    make_profile("never")                     # never active: never lapsed, nothing due
    assert handler("audience_evaluator")(profiles.batch(), LambdaContext()) == {"batchItemFailures": []}
    return engine


def test_windowed_audience_members_enter_and_leave_as_time_passes(lapsing):
    assert (member("old"), member("recent"), member("never")) == (True, None, None)
    # Nothing is due yet: the sweeper reads nothing
    assert sweep()["profiles"] == 0
    # When 21 days pass, the recent login is 31 days old: that profile (only) is due and enters
    clock.advance(timedelta(days=21))
    report = sweep()
    assert (report["profiles"], report["entered"], report["exited"]) == (1, 1, 0)
    assert (member("old"), member("recent")) == (True, True)
    # When 51 days have passed, the old login is 91 days old: that profile leaves
    clock.advance(timedelta(days=30))
    report = sweep()
    assert (report["profiles"], report["entered"], report["exited"]) == (1, 0, 1)
    assert (member("old"), member("recent")) == (False, True)
    # And a sweep right after finds nothing more due
    assert sweep()["profiles"] == 0


def test_the_due_index_holds_only_profiles_with_a_time_edge(lapsing):
    items = {i.profile_id: i for i in due.DueRecord.scan() if i.profile_id}
    assert set(items) == {"old", "recent"}
    # due at the first moment the answer can flip: midnight UTC when the login turns 90 / 30 days old
    login_old = (clock.now() - timedelta(days=40)).date()
    assert items["old"].due_at.startswith((login_old + timedelta(days=90)).isoformat())
    login_recent = (clock.now() - timedelta(days=10)).date()
    assert items["recent"].due_at.startswith((login_recent + timedelta(days=30)).isoformat())


# ---------------------------------------------------------------- the fan-out: dispatch -> SweepQueue -> workers
MANY = 40  # profiles that enter `lapsed` on the same day, spread over the day's shards


@pytest.fixture
def crowd(engine, space):
    """MANY profiles whose login turns 30 days old tomorrow: all due then, in several buckets."""
    assert call_api("POST", "/v1/audiences", LAPSED)[0] == 201
    profiles = StreamReader(engine, "ProfilesTable")
    for n in range(MANY):
        make_profile(f"p{n:02d}", **logged_in(29))
    assert handler("audience_evaluator")(profiles.batch(), LambdaContext()) == {"batchItemFailures": []}
    clock.advance(timedelta(days=2))
    return engine


def dispatched() -> list[dict]:
    """Run the scheduled dispatch; the SweepQueue messages it sent."""
    report, messages = dispatch_sweep()
    assert report["buckets"] == len(messages)
    return messages


def worker_event(*bodies: dict | str) -> dict:
    return {"Records": [{"messageId": f"m{n}", "receiptHandle": f"r{n}", "md5OfBody": "", "eventSource": "aws:sqs",
                         "body": body if isinstance(body, str) else json.dumps(body), "messageAttributes": {},
                         "attributes": {"MessageGroupId": f"g{n}", "ApproximateReceiveCount": "1"},
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:SweepQueue.fifo", "awsRegion": "us-east-1"}
                        for n, body in enumerate(bodies)]}


def flips(memberships: StreamReader) -> Counter:
    """Membership stream records whose `member` flipped, by (profile, audience): what the router counts."""
    out = Counter()
    for record in memberships.batch()["Records"]:
        old, new = record["dynamodb"].get("OldImage") or {}, record["dynamodb"].get("NewImage") or {}
        if new and old.get("member", {}).get("BOOL") != new.get("member", {}).get("BOOL"):
            out[(new["profile_id"]["S"], new["audience_key"]["S"])] += 1
    return out


def test_the_dispatch_hands_out_one_message_per_bucket_with_work_and_the_workers_sweep_them_all(crowd, monkeypatch):
    from engage.audiences import sweeper

    monkeypatch.setattr(sweeper, "PAGE", 3)  # buckets of more than one page
    memberships = StreamReader(crowd, "MembershipsTable")
    flips(memberships)
    messages = dispatched()
    buckets = {json.loads(m["Body"])["shard"] for m in messages}
    expected = {int(i.bucket.split("|")[1]) for i in due.DueRecord.scan() if i.profile_id}
    # One message per bucket with a profile due, in its own FIFO group (one worker per bucket at a time)
    assert len(messages) == len(buckets) == len(expected) > 1 and buckets == expected
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {f"{json.loads(m['Body'])['day']}|"
                                                                     f"{json.loads(m['Body'])['shard']}" for m in messages}
    # When the worker handles them (in reverse order: buckets are independent)
    bodies = [json.loads(m["Body"]) for m in reversed(messages)]
    assert handler("audience_sweep_worker")(worker_event(*bodies), LambdaContext()) == {"batchItemFailures": []}
    # Then every profile entered once, and nothing is due any more
    assert all(member(f"p{n:02d}") for n in range(MANY))
    assert flips(memberships) == Counter({(f"p{n:02d}", "lapsed"): 1 for n in range(MANY)})
    assert dispatched() == []


def test_a_dispatch_years_behind_sends_what_it_found_before_its_time_runs_out(crowd):
    # The schedule off for years (or the local clock moved years on): the days from the cursor are 16 Queries
    # each. The run used to scan them all before sending anything: cut off by its 60 s timeout every minute,
    # it never handed out the buckets it had found, and the audience never changed again.
    import boto3

    from engage.config import settings

    clock.advance(timedelta(days=3 * 365))

    class Shrinking(LambdaContext):
        left = 60_000

        def get_remaining_time_in_millis(self) -> int:
            self.left -= 2_000  # 2 s a day of Queries: 25 days, then the reserve
            return self.left

    report = handler("audience_sweeper")({"source": "aws.scheduler"}, Shrinking())
    assert report["complete"] is False and 0 < report["days_open"] <= 25 and report["buckets"] > 0
    sqs, url = boto3.client("sqs"), settings().sweep_queue_url
    sent = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(sent) == min(10, report["buckets"])  # what it found is handed out


def test_a_bucket_redelivered_or_swept_by_two_workers_at_once_changes_each_membership_once(crowd, monkeypatch):
    from engage.audiences import runtime

    memberships = StreamReader(crowd, "MembershipsTable")
    flips(memberships)
    bodies = [json.loads(m["Body"]) for m in dispatched()]
    # Given a second worker that sweeps the same bucket while the first is between its decision and its writes
    original, inside = runtime.reevaluate, []

    def racing(space_id, profile_id, now=None, **read):
        decided = original(space_id, profile_id, now, **read)
        if not inside:
            inside.append(profile_id)
            assert handler("audience_sweep_worker")(worker_event(bodies[0]), LambdaContext()) == {
                "batchItemFailures": []}
        return decided

    monkeypatch.setattr(runtime, "reevaluate", racing)
    assert handler("audience_sweep_worker")(worker_event(*bodies), LambdaContext()) == {"batchItemFailures": []}
    monkeypatch.setattr(runtime, "reevaluate", original)
    # And the whole dispatch redelivered afterwards
    assert handler("audience_sweep_worker")(worker_event(*bodies), LambdaContext()) == {"batchItemFailures": []}
    # Then each profile's membership flipped exactly once (the router's size counts follow these flips)
    assert inside and flips(memberships) == Counter({(f"p{n:02d}", "lapsed"): 1 for n in range(MANY)})
    assert dispatched() == []


def test_a_worker_out_of_time_leaves_the_rest_due_and_the_day_open_until_it_is_swept(crowd):
    from engage.audiences import sweeper

    messages = dispatched()
    start = due.cursor()
    bucket_of = {m["MessageId"]: sweeper.Bucket.parse(json.loads(m["Body"])) for m in messages}
    sizes = {mid: sum(1 for i in due.DueRecord.scan() if i.bucket == f"{b.day}|{b.shard}")
             for mid, b in bucket_of.items()}
    biggest = max(sizes, key=sizes.get)
    assert sizes[biggest] >= 3
    # Given a worker whose time runs out after a few checks
    budget = iter([True] * 3)
    report = sweeper.sweep_shard(bucket_of[biggest], time_left=lambda: next(budget, False))
    assert 0 < report.profiles < sizes[biggest] and report.complete is False
    # When days pass, every bucket is handed out again, and the day with what is left stays open
    clock.advance(timedelta(days=3))
    assert len(dispatched()) == len(messages) and due.cursor() == start
    # Then once every bucket is swept, the dispatches close the days up to yesterday
    assert sweep()["profiles"] == MANY - report.profiles
    assert due.cursor() == clock.parse(clock.iso()[:10] + "T00:00:00Z")
    assert all(member(f"p{n:02d}") for n in range(MANY))


def test_a_malformed_sweep_message_is_a_batch_item_failure_with_a_clear_error(crowd, caplog):
    bodies = [json.loads(m["Body"]) for m in dispatched()]
    result = handler("audience_sweep_worker")(worker_event({"day": "2030-13-45", "shard": 0}, "not json",
                                                           {"day": "2026-11-30", "shard": -1}, *bodies), LambdaContext())
    # The three bad messages come back (then to the dead-letter queue); the good ones are swept
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"},
                                            {"itemIdentifier": "m2"}]}
    assert "a sweep message needs `day` as YYYY-MM-DD, got '2030-13-45'" in caplog.text
    assert "a sweep message needs `shard` in 0..1023, got -1" in caplog.text
    assert all(member(f"p{n:02d}") for n in range(MANY))


def test_lowering_due_shards_leaves_no_profile_behind(engine, space, monkeypatch):
    from engage.config import settings

    # Given profiles scheduled while the index had 64 shards a day
    monkeypatch.setenv("DUE_SHARDS", "64")
    settings.cache_clear()
    assert call_api("POST", "/v1/audiences", LAPSED)[0] == 201
    profiles = StreamReader(engine, "ProfilesTable")
    for n in range(MANY):
        make_profile(f"p{n:02d}", **logged_in(29))
    assert handler("audience_evaluator")(profiles.batch(), LambdaContext()) == {"batchItemFailures": []}
    assert max(int(i.bucket.split("|")[1]) for i in due.DueRecord.scan() if i.profile_id) >= 16
    # When the stack is deployed again with 4, and the day comes
    monkeypatch.setenv("DUE_SHARDS", "4")
    settings.cache_clear()
    clock.advance(timedelta(days=2))
    # Then the sweep still probes the 64 shards ever used, and every profile enters
    assert sweep()["profiles"] == MANY
    assert all(member(f"p{n:02d}") for n in range(MANY))
    assert due.DueRecord.get(due.CURSOR_PK).shards == 64


def test_a_clean_sweep_logs_its_dispatch_and_bucket_lines_at_debug_not_info(lapsing, caplog):
    # The dispatch runs every minute and the worker once per bucket, whatever the traffic: their lines were
    # most of those functions' log bytes. On a clean run they are DEBUG (a WARNING only for a sweep cut short
    # by time). Set back to INFO, this fails.
    import logging

    clock.advance(timedelta(days=21))  # the recent login is 31 days old: one bucket with a profile due
    with caplog.at_level(logging.DEBUG, logger="engage"):
        report = sweep()
    assert report["profiles"] == 1 and report["complete"], report
    lines = [(r.getMessage(), r.levelno) for r in caplog.records
             if r.getMessage() in ("sweep dispatched", "bucket swept")]
    assert sorted(set(lines)) == [("bucket swept", logging.DEBUG), ("sweep dispatched", logging.DEBUG)], \
        [(r.levelname, r.getMessage()) for r in caplog.records]
