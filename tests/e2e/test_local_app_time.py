"""Time-driven behaviour of the real app (template.yaml) in the local cloud: the audience sweeper
runs on its ScheduleV2 rate(1 minute) as the virtual clock moves."""
from __future__ import annotations

import uuid

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
    # (stamped with the virtual now: other tests may have moved the clock past the SDK's real time)
    _, _, now = local_cloud.call("GET", "/_local/clock")
    errors = []
    client = Client(WRITE_KEY, host=local_cloud.api_url, sync_mode=True, on_error=lambda e, _: errors.append(e))
    client.track(user_id=user, event="Order Completed", properties={"revenue": 10},
                 timestamp=clock.parse(now["now"]))
    client.flush()
    assert errors == []
    local_cloud.settle()
    # And an audience "ordered within the last day", backfilled (a warm container's cached
    # definitions would not know a brand-new audience for audience_cache_seconds of real time;
    # the backfill refreshes them)
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
