"""Time-driven behaviour of the real app (template.yaml) in the local cloud: the audience sweeper
runs on its ScheduleV2 rate(1 minute) as the virtual clock moves."""
from __future__ import annotations

import uuid

import pytest

pytestmark = [pytest.mark.e2e]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"


def traits(cloud, user_id: str) -> dict:
    status, _, body = cloud.call("GET", f"/v1/spaces/local/collections/users/profiles/user_id:{user_id}/traits",
                                 auth=ACCESS_TOKEN)
    assert status == 200, body
    return body["traits"]


def test_windowed_audience_loses_a_member_when_the_sweeper_runs_after_two_days(local_cloud):
    # Given an audience "ordered within the last day" and a user who just ordered
    from segment.analytics import Client

    key = f"recent_{uuid.uuid4().hex[:8]}"
    user = f"sweep-{uuid.uuid4().hex[:8]}"
    status, _, created = local_cloud.call("POST", "/v1/audiences", {
        "key": key, "name": "Ordered recently", "kind": "dynamic", "entity": "users",
        "condition": {"event": "Order Completed", "window": {"within_days": 1}}}, auth=ACCESS_TOKEN)
    assert status in (200, 201), created
    local_cloud.call("POST", "/_local/settle", {"executions": True, "timeout": 120})
    errors = []
    client = Client(WRITE_KEY, host=local_cloud.api_url, sync_mode=True, on_error=lambda e, _: errors.append(e))
    client.track(user_id=user, event="Order Completed", properties={"revenue": 10})
    client.flush()
    assert errors == []
    local_cloud.settle()
    assert traits(local_cloud, user)[key] is True
    # When two days pass on the virtual clock (the sweeper's schedule fires on the way)
    status, _, moved = local_cloud.call("POST", "/_local/clock", {"advance": "P2D"})
    assert status == 200, moved
    local_cloud.settle()
    # Then the member has left the audience, as the Profile API shows
    assert traits(local_cloud, user)[key] is False
