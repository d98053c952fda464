"""Destinations on the local cloud, over HTTP as a user runs them, against a real HTTP server on a
loopback port standing in for the customer's endpoint, and this product's own ingestion as a
Segment-compatible destination (into another space, whose profiles then show the audience trait).

Realtime: an audience connected to a webhook and a segment destination gets its current members
first (backfill on connect), then each member entering or leaving, in order, as it happens.
Batch: a destination with an hourly schedule gets nothing until the virtual clock passes the
schedule, then one coalesced request (a member who entered and left meanwhile is sent as left)."""
from __future__ import annotations

import json
import uuid

import pytest

from engage.destinations import payloads
from tests.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
SECRET = "whsec-e2e-0123456789"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def given_people(cloud, prefix: str, count: int) -> list[str]:
    users = [f"{prefix}{n}" for n in range(count)]
    status, _, body = cloud.call("POST", "/v1/batch", {"batch": [
        {"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com"}} for u in users]}, auth=WRITE_KEY)
    assert status == 200, body
    cloud.settle()
    return users


def api(cloud, method: str, path: str, body=None, expected: int = 200):
    status, _, answer = cloud.call(method, path, body, auth=ACCESS_TOKEN)
    assert status == expected, answer
    return answer


def edit(cloud, audience: str, add=(), remove=()):
    api(cloud, "POST", f"/v1/audiences/{audience}/members",
        {"add": [f"user_id:{u}" for u in add], "remove": [f"user_id:{u}" for u in remove]})
    cloud.settle()


def another_space(cloud, monkeypatch, capsys) -> dict:
    """A second space made with the `engage` CLI against the local cloud: its id, write key and token."""
    from engage import cli, config

    space = f"dst-{uuid.uuid4().hex[:8]}"
    for var, value in {"AWS_ENDPOINT_URL": cloud.aws_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "CONFIG_TABLE": cloud.physical("ConfigTable")}.items():
        monkeypatch.setenv(var, value)
    config.settings.cache_clear()
    capsys.readouterr()
    assert cli.main(["spaces", "create", space, "--config-table", cloud.physical("ConfigTable")]) == 0
    created = json.loads(capsys.readouterr().out)
    config.settings.cache_clear()
    return {"space": space, "write_key": created["write_key"], "access_token": created["access_token"]}


def test_realtime_webhook_and_segment_destinations_get_the_backfill_then_each_change(local_cloud, receiver,
                                                                                   monkeypatch, capsys):
    cloud = local_cloud
    users = given_people(cloud, "rt", 3)
    api(cloud, "POST", "/v1/audiences", {"key": "rt_vips", "name": "VIPs", "kind": "manual"}, 201)
    edit(cloud, "rt_vips", add=users[:2])

    # When the audience is connected to a webhook and to this product's own ingestion (segment type)
    api(cloud, "POST", "/v1/destinations", {
        "key": "rt_hook", "type": "webhook", "audiences": ["rt_vips"],
        "config": {"url": receiver.url + "/engage", "secret": SECRET, "headers": {"X-Team": "growth"}}}, 201)
    # (another space of this product: there the audience does not exist, so its trait is the destination's doing)
    other = another_space(cloud, monkeypatch, capsys)
    created = api(cloud, "POST", "/v1/destinations", {
        "key": "rt_self", "type": "segment", "audiences": ["rt_vips"],
        "config": {"endpoint": cloud.api_url, "write_key": other["write_key"], "call": "identify"}}, 201)
    assert created["config"]["write_key"] == {"set": True, "hint": "…" + other["write_key"][-4:]}
    cloud.settle()

    # Then the current members arrive first, signed
    backfill = receiver.delivered()
    assert sorted(c["user_id"] for c in backfill) == users[:2]
    assert all(c["backfill"] and c["event"] == "Audience Entered" for c in backfill)
    first = receiver.requests[0]
    assert first["headers"]["x-team"] == "growth"
    stamp = int(first["headers"]["x-engage-signature"].split(",")[0][2:])
    assert payloads.verify(SECRET, first["headers"]["x-engage-signature"], first["raw"], now=stamp)

    # When members enter and leave, each change follows in real time, in order
    edit(cloud, "rt_vips", add=[users[2]])
    edit(cloud, "rt_vips", remove=[users[0]])
    changes = [(c["user_id"], c["event"]) for c in receiver.delivered()[2:]]
    assert changes == [(users[2], "Audience Entered"), (users[0], "Audience Exited")]

    # And the segment destination's identify calls reached ingestion: in the receiving space each profile
    # shows the audience as a trait, true for members, false for the one who left
    def received(user: str) -> dict:
        status, _, body = cloud.call("GET", f"/v1/spaces/{other['space']}/collections/users/profiles/user_id:{user}"
                                            "/traits", auth=other["access_token"])
        assert status == 200, body
        return body["traits"]

    assert received(users[2])["rt_vips"] is True and received(users[1])["rt_vips"] is True
    assert received(users[0])["rt_vips"] is False
    assert received(users[0])["email"] == f"{users[0]}@example.com"
    shown = api(cloud, "GET", "/v1/destinations/rt_hook")
    assert shown["status"]["delivered"] == 4 and shown["status"]["dlq_depth"] == 0
    assert SECRET not in str(shown)


def test_a_batch_destination_delivers_coalesced_changes_when_the_clock_passes_its_schedule(local_cloud, receiver):
    cloud = local_cloud
    users = given_people(cloud, "bt", 3)
    api(cloud, "POST", "/v1/audiences", {"key": "bt_vips", "name": "VIPs", "kind": "manual"}, 201)
    edit(cloud, "bt_vips", add=[users[0]])
    api(cloud, "POST", "/v1/destinations", {
        "key": "bt_hourly", "type": "webhook", "mode": "batch", "audiences": ["bt_vips"],
        "schedule": {"expression": "rate(1 hour)", "timezone": "UTC"}, "config": {"url": receiver.url + "/b"}}, 201)
    cloud.settle()
    edit(cloud, "bt_vips", add=users[1:])
    edit(cloud, "bt_vips", remove=[users[2]])
    assert receiver.requests == []  # nothing before the schedule
    assert api(cloud, "GET", "/v1/destinations/bt_hourly")["status"]["backlog"] == 3

    status, _, clock = cloud.call("POST", "/_local/clock", {"advance": "PT1H"})
    assert status == 200, clock
    cloud.settle()

    [request] = receiver.requests
    sent = {c["user_id"]: c["event"] for c in request["body"]["batch"]}
    assert sent == {users[0]: "Audience Entered", users[1]: "Audience Entered", users[2]: "Audience Exited"}
    shown = api(cloud, "GET", "/v1/destinations/bt_hourly")
    assert shown["status"]["backlog"] == 0 and shown["status"]["delivered"] == 3 and shown["status"]["last_run_at"]


def test_a_refused_delivery_is_parked_visible_and_replayed_after_the_fix(local_cloud, receiver):
    cloud = local_cloud
    users = given_people(cloud, "dl", 1)
    api(cloud, "POST", "/v1/audiences", {"key": "dl_vips", "name": "VIPs", "kind": "manual"}, 201)
    api(cloud, "POST", "/v1/destinations", {"key": "dl_hook", "type": "webhook", "audiences": ["dl_vips"],
                                            "config": {"url": receiver.url + "/d"}}, 201)
    cloud.settle()
    # Given a receiver that refuses the next request (a 4xx: the same request would be refused again)
    receiver.answer((422, {}))
    edit(cloud, "dl_vips", add=users)
    shown = api(cloud, "GET", "/v1/destinations/dl_hook")
    assert shown["status"]["dlq_depth"] == 1 and "HTTP 422" in shown["parked"][0]["reason"]
    assert shown["parked"][0]["change"]["user_id"] == users[0]
    assert receiver.delivered() == []

    # When the receiver is fixed and the parked delivery replayed, it arrives once
    replayed = api(cloud, "POST", "/v1/destinations/dl_hook/replay")
    assert replayed["replayed"] == 1
    cloud.settle()
    assert [(c["user_id"], c["event"]) for c in receiver.delivered()] == [(users[0], "Audience Entered")]
    assert api(cloud, "GET", "/v1/destinations/dl_hook")["status"]["dlq_depth"] == 0


def test_a_delivery_the_receiver_asks_to_retry_later_is_sent_when_the_clock_passes_the_wait(local_cloud, receiver):
    cloud = local_cloud
    users = given_people(cloud, "ra", 1)
    api(cloud, "POST", "/v1/audiences", {"key": "ra_vips", "name": "VIPs", "kind": "manual"}, 201)
    api(cloud, "POST", "/v1/destinations", {"key": "ra_hook", "type": "webhook", "audiences": ["ra_vips"],
                                            "config": {"url": receiver.url + "/r"}}, 201)
    cloud.settle()
    # Given a receiver that is down for maintenance and asks for ten minutes (503, Retry-After: 600)
    receiver.answer((503, {"Retry-After": "600"}))
    edit(cloud, "ra_vips", add=users)
    assert [r["status"] for r in receiver.requests] == [503]
    assert receiver.delivered() == []

    # When nine minutes pass, nothing is retried yet
    status, _, body = cloud.call("POST", "/_local/clock", {"advance": "PT9M"})
    assert status == 200, body
    cloud.settle()
    assert [r["status"] for r in receiver.requests] == [503]
    # And once the ten minutes have passed, the change is delivered, once
    status, _, body = cloud.call("POST", "/_local/clock", {"advance": "PT2M"})
    assert status == 200, body
    cloud.settle()
    assert [(c["user_id"], c["event"]) for c in receiver.delivered()] == [(users[0], "Audience Entered")]
    assert api(cloud, "GET", "/v1/destinations/ra_hook")["status"]["dlq_depth"] == 0
