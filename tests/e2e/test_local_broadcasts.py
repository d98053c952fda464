"""Broadcasts on the local cloud (template.yaml deployed into moto), driven over HTTP and the virtual clock:
a broadcast scheduled for tomorrow 09:00 in a zone does nothing until the clock passes it, then its
EventBridge Scheduler schedule starts it, the starter snapshots and fans out through SQS, the sender sends
each recipient exactly once (moto's SES records via the outbox, and the delivery log)."""
from __future__ import annotations

import uuid
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from engage import clock

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
FROM = "hello@engage.local"
ZONE = "Asia/Tokyo"


def outbox(cloud) -> list[dict]:
    status, _, body = cloud.call("GET", "/_local/outbox")
    assert status == 200, body
    return body["messages"]


def broadcast(cloud, broadcast_key: str) -> dict:
    status, _, body = cloud.call("GET", f"/v1/broadcasts/{broadcast_key}", auth=ACCESS_TOKEN)
    assert status == 200, body
    return body


def settle(cloud) -> None:
    status, _, body = cloud.call("POST", "/_local/settle", {"executions": True, "timeout": 120})
    assert status == 200, body


def test_broadcast_for_tomorrow_nine_in_tokyo_sends_once_when_the_clock_passes_it(local_cloud):
    cloud = local_cloud
    tag = uuid.uuid4().hex[:8]
    cloud.client("sesv2").create_email_identity(EmailIdentity=FROM)
    # Given three users in a manual audience and an email template
    users = [f"bc-{tag}-{i}" for i in range(3)]
    for i, user in enumerate(users):
        status, _, body = cloud.call("POST", "/v1/identify", {"userId": user, "traits": {
            "email": f"{user}@example.com", "first_name": f"N{i}"}}, auth=WRITE_KEY)
        assert status == 200, body
    cloud.settle()
    audience = f"fans_{tag}"
    status, _, body = cloud.call("POST", "/v1/audiences", {"key": audience, "name": "Fans", "kind": "manual"},
                                 auth=ACCESS_TOKEN)
    assert status == 201, body
    status, _, body = cloud.call("POST", f"/v1/audiences/{audience}/members",
                                 {"add": [f"user_id:{u}" for u in users]}, auth=ACCESS_TOKEN)
    assert status == 200, body
    template = f"news_{tag}"
    status, _, body = cloud.call("POST", "/v1/templates", {"key": template, "channel": "email", "from": FROM,
                                                           "subject": "Morning {{ profile.traits.first_name }}",
                                                           "body": "<p>news</p>"}, auth=ACCESS_TOKEN)
    assert status == 201, body
    # And a broadcast for tomorrow 09:00 Tokyo time
    status, _, now = cloud.call("GET", "/_local/clock")
    local_now = clock.parse(now["now"]).astimezone(ZoneInfo(ZONE))
    moment = (local_now + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    key = f"morning_{tag}"
    status, _, created = cloud.call("POST", "/v1/broadcasts", {
        "key": key, "audience": audience, "channel": "email", "template": template, "send_at": moment.isoformat()},
        auth=ACCESS_TOKEN)
    assert status == 201, created
    assert created["status"] == "scheduled"
    mine = [m for m in outbox(cloud) if m["to"].startswith(f"bc-{tag}-")]
    assert mine == []
    # When the clock moves to a minute before it: nothing is sent
    status, _, _ = cloud.call("POST", "/_local/clock", {"to": clock.iso(moment - timedelta(minutes=1))})
    assert status == 200
    settle(cloud)
    assert broadcast(cloud, key)["status"] == "scheduled"
    assert [m for m in outbox(cloud) if m["to"].startswith(f"bc-{tag}-")] == []
    # When it passes the moment
    status, _, _ = cloud.call("POST", "/_local/clock", {"advance": "PT2M"})
    assert status == 200
    settle(cloud)
    answer = broadcast(cloud, key)
    for _ in range(30):  # the sender's SQS poller may still be finishing the last batch
        if answer["status"] == "sent":
            break
        settle(cloud)
        answer = broadcast(cloud, key)
    # Then each member got it exactly once, and the stats say so
    assert answer["status"] == "sent", answer
    assert answer["stats"]["targeted"] == 3 and answer["stats"]["sent"] == 3
    assert clock.parse(answer["snapshot_at"]) >= moment
    mine = [m for m in outbox(cloud) if m["channel"] == "email" and m["to"].startswith(f"bc-{tag}-")]
    assert sorted(m["to"] for m in mine) == sorted(f"{u}@example.com" for u in users)
    assert {m["subject"] for m in mine} == {"Morning N0", "Morning N1", "Morning N2"}
    status, _, log = cloud.call("GET", f"/v1/messages?profile=user_id:{users[0]}&source=broadcast", auth=ACCESS_TOKEN)
    assert status == 200 and [m["source"]["key"] for m in log["messages"]] == [key]
    # And another day passing changes nothing (the one-time schedule is gone)
    cloud.call("POST", "/_local/clock", {"advance": "P1D"})
    settle(cloud)
    assert len([m for m in outbox(cloud) if m["to"].startswith(f"bc-{tag}-")]) == 3
    assert broadcast(cloud, key)["stats"] == answer["stats"]


def test_a_broadcast_deferred_by_quiet_hours_is_sent_when_the_clock_passes_their_end(local_cloud):
    cloud = local_cloud
    tag = uuid.uuid4().hex[:8]
    cloud.client("sesv2").create_email_identity(EmailIdentity=FROM)
    user = f"qh-{tag}"
    status, _, body = cloud.call("POST", "/v1/identify", {"userId": user, "traits": {"email": f"{user}@example.com"}},
                                 auth=WRITE_KEY)
    assert status == 200, body
    cloud.settle()
    audience, template, key = f"night_{tag}", f"late_{tag}", f"late_{tag}"
    assert cloud.call("POST", "/v1/audiences", {"key": audience, "name": "Night", "kind": "manual"},
                      auth=ACCESS_TOKEN)[0] == 201
    assert cloud.call("POST", f"/v1/audiences/{audience}/members", {"add": [f"user_id:{user}"]},
                      auth=ACCESS_TOKEN)[0] == 200
    assert cloud.call("POST", "/v1/templates", {"key": template, "channel": "email", "from": FROM,
                                                "subject": "Late news", "body": "<p>news</p>"}, auth=ACCESS_TOKEN)[0] == 201
    # Given quiet hours from an hour ago to two hours from now (UTC)
    status, _, saved = cloud.call("GET", "/v1/messaging/settings", auth=ACCESS_TOKEN)
    assert status == 200, saved
    now = clock.parse(cloud.call("GET", "/_local/clock")[2]["now"])
    end = now + timedelta(hours=2)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": end.strftime("%H:%M"),
             "timezone_trait": f"tz_{tag}", "default_timezone": "UTC"}
    status, _, body = cloud.call("PUT", "/v1/messaging/settings", {**saved, "quiet_hours": quiet}, auth=ACCESS_TOKEN)
    assert status == 200, body
    # (a warm sender reads the settings once a minute, on the project clock: two minutes on, it has them)
    cloud.call("POST", "/_local/clock", {"advance": "PT2M"})
    try:
        # When a broadcast is sent now, the recipient is deferred (a message on the send queue, delayed)
        status, _, created = cloud.call("POST", "/v1/broadcasts", {"key": key, "audience": audience, "channel": "email",
                                                                   "template": template}, auth=ACCESS_TOKEN)
        assert status == 201, created
        settle(cloud)
        assert broadcast(cloud, key)["stats"]["sent"] == 0
        assert [m for m in outbox(cloud) if m["to"] == f"{user}@example.com"] == []
        # And an hour later it is still quiet: nothing is sent
        cloud.call("POST", "/_local/clock", {"advance": "PT1H"})
        settle(cloud)
        assert [m for m in outbox(cloud) if m["to"] == f"{user}@example.com"] == []
        # Then once the clock passes the end of quiet hours (the delayed message comes due), it is sent, once
        cloud.call("POST", "/_local/clock", {"to": clock.iso(end.replace(second=0, microsecond=0) + timedelta(minutes=16))})
        for _ in range(5):
            settle(cloud)
            if broadcast(cloud, key)["stats"]["sent"] == 1:
                break
            cloud.call("POST", "/_local/clock", {"advance": "PT16M"})
        answer = broadcast(cloud, key)
        assert answer["stats"]["sent"] == 1, answer
        assert len([m for m in outbox(cloud) if m["to"] == f"{user}@example.com"]) == 1
    finally:
        cloud.call("PUT", "/v1/messaging/settings", saved, auth=ACCESS_TOKEN)
        cloud.call("POST", "/_local/clock", {"advance": "PT2M"})  # the next test's sends see them
