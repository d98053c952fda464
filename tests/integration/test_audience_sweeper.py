"""Time passing: the scheduled sweeper re-evaluates only due profiles, and windowed audiences move."""
from __future__ import annotations

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
