"""Time-driven behaviour of the real app (template.yaml) in the local cloud: the audience sweeper
runs on its ScheduleV2 rate(1 minute) as the virtual clock moves."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from engage import clock

pytestmark = [pytest.mark.e2e]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"


def traits(cloud, user_id: str) -> dict:
    status, _, body = cloud.call("GET", f"/v1/spaces/local/collections/users/profiles/user_id:{user_id}/traits",
                                 auth=ACCESS_TOKEN)
    assert status == 200, body
    return body["traits"]


def test_windowed_audience_loses_a_member_when_the_sweeper_runs_after_two_days(local_cloud):
    # Given a user who just ordered (Segment Python SDK)
    from segment.analytics import Client

    key = f"recent_{uuid.uuid4().hex[:8]}"
    user = f"sweep-{uuid.uuid4().hex[:8]}"
    # (the SDK stamps its real time; other tests may have moved the clock: the local API shifts it)
    errors = []
    client = Client(WRITE_KEY, host=local_cloud.api_url, sync_mode=True, on_error=lambda e, _: errors.append(e))
    client.track(user_id=user, event="Order Completed", properties={"revenue": 10})
    client.flush()
    assert errors == []
    local_cloud.settle()
    # And an audience "ordered within the last day", backfilled
    status, _, created = local_cloud.call("POST", "/v1/audiences", {
        "key": key, "name": "Ordered recently", "kind": "dynamic", "entity": "users", "backfill": True,
        "condition": {"event": "Order Completed", "window": {"within_days": 1}}}, auth=ACCESS_TOKEN)
    assert status in (200, 201), created
    status, _, settled = local_cloud.call("POST", "/_local/settle", {"executions": True, "timeout": 120})
    assert status == 200, settled
    assert traits(local_cloud, user).get(key) is True
    # When two days pass on the virtual clock (the sweeper's schedule fires on the way)
    status, _, moved = local_cloud.call("POST", "/_local/clock", {"advance": "P2D"})
    assert status == 200, moved
    local_cloud.settle()
    # Then the member has left the audience, as the Profile API shows
    assert traits(local_cloud, user)[key] is False


def test_sdk_events_count_at_the_virtual_now_after_the_clock_moved_a_month(local_cloud):
    # Given an audience "ordered within 30 days", and the clock moved 31 days ahead of the machine's
    from segment.analytics import Client

    key = f"month_{uuid.uuid4().hex[:8]}"
    user = f"later-{uuid.uuid4().hex[:8]}"
    status, _, created = local_cloud.call("POST", "/v1/audiences", {
        "key": key, "name": "Ordered this month", "kind": "dynamic", "entity": "users", "backfill": True,
        "condition": {"event": "Order Completed", "window": {"within_days": 30}}}, auth=ACCESS_TOKEN)
    assert status in (200, 201), created
    status, _, settled = local_cloud.call("POST", "/_local/settle", {"executions": True, "timeout": 120})
    assert status == 200, settled
    status, _, moved = local_cloud.call("POST", "/_local/clock", {"advance": "P31D"})
    assert status == 200, moved
    virtual_now = clock.parse(moved["now"])
    # When the real analytics-python SDK sends an Order Completed (stamped with the machine's real time,
    # now a month in the virtual past), in a batch as it always does, with sentAt
    errors = []
    client = Client(WRITE_KEY, host=local_cloud.api_url, sync_mode=True, on_error=lambda e, _: errors.append(e))
    client.track(user_id=user, event="Order Completed", properties={"revenue": 250})
    # and an explicit historical timestamp: two days before the (real) moment it was sent
    real_two_days_ago = datetime.now(UTC) - timedelta(days=2)
    client.track(user_id=user, event="Refund Requested", timestamp=real_two_days_ago)
    client.flush()
    assert errors == []
    local_cloud.settle()
    # Then the order counts as sent at the virtual now: the user entered the 30-day audience
    assert traits(local_cloud, user).get(key) is True
    status, _, events = local_cloud.call(
        "GET", f"/v1/spaces/local/collections/users/profiles/user_id:{user}/events?limit=10", auth=ACCESS_TOKEN)
    assert status == 200, events
    stamped = {e["event"]: clock.parse(e["timestamp"]) for e in events["data"]}
    assert abs(stamped["Order Completed"] - virtual_now) < timedelta(minutes=5)
    # And the historical one kept its distance: two days before the virtual now
    assert abs(stamped["Refund Requested"] - (virtual_now - timedelta(days=2))) < timedelta(minutes=5)
