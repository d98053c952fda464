"""AudienceEventGrouping=evaluation on the local cloud (`--param AudienceEventGrouping=evaluation`): the router
publishes one `Audience Memberships Changed` per profile evaluation, JourneyEntryRule carries it to the
enroller, and each profile enters the journey once (docs/audiences.md, "One entry per profile evaluation")."""
from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import start_cloud, stop_cloud
from tests.e2e.test_local_faults import bus_tap
from tests.e2e.test_local_journeys import _supports_version_starts

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
USERS = [f"grouped-{i}" for i in range(4)]


def test_the_parameter_groups_each_evaluation_into_one_entry_and_journeys_read_it():
    cloud = start_cloud("--param", "AudienceEventGrouping=evaluation")
    try:
        sqs, url = cloud.client("sqs"), bus_tap(cloud)
        # Given two audiences one identify enters together, and a journey entered by one of them
        for key in ("pros", "known"):
            condition = {"trait": "plan", "op": "eq", "value": "pro"} if key == "pros" else \
                {"trait": "email", "op": "exists"}
            status, _, body = cloud.call("POST", "/v1/audiences", {"key": key, "name": key, "backfill": False,
                                                                   "condition": condition}, auth=ACCESS_TOKEN)
            assert status == 201, body
        assert _supports_version_starts(cloud), "the local cloud starts executions on state machine versions"
        definition = {"key": "pro_welcome", "name": "Pro welcome", "entry": {"audience": "pros"},
                      "start": "wait", "steps": {"wait": {"type": "wait", "duration": "P1D", "next": "done"},
                                                 "done": {"type": "exit"}}}
        assert cloud.call("POST", "/v1/journeys", definition, auth=ACCESS_TOKEN)[0] == 201
        status, _, published = cloud.call("POST", "/v1/journeys/pro_welcome/publish", auth=ACCESS_TOKEN)
        assert status == 200, published
        # When each user identifies as a pro with an email
        for user in USERS:
            assert cloud.call("POST", "/v1/identify", {"userId": user, "traits": {
                "plan": "pro", "email": f"{user}@example.com"}}, auth=WRITE_KEY)[0] == 200
        cloud.settle()
        assert cloud.call("POST", "/_local/settle", {"executions": True, "timeout": 120})[0] == 200
        carried = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                carried.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        # Then the audience events are all grouped: per user, the evaluation entering all, pros and known
        # (one entry, unless the stream poller cut its three records into two router batches: never twice)
        audience_events = [m for m in carried if m["detail-type"].startswith("Audience ")]
        assert {m["detail-type"] for m in audience_events} == {"Audience Memberships Changed"}
        entered: dict[str, list[str]] = {}
        for message in audience_events:
            detail = message["detail"]
            assert detail["exited"] == [] and detail["email"] == f"{detail['user_id']}@example.com"
            entered.setdefault(detail["user_id"], []).extend(e["audience_key"] for e in detail["entered"])
        assert {user: sorted(keys) for user, keys in entered.items()} == {user: ["all", "known", "pros"] for user in USERS}
        assert len(audience_events) < 3 * len(USERS)  # grouped: fewer entries than changes
        # And sizes are counted as in the default grouping
        status, _, pros = cloud.call("GET", "/v1/audiences/pros", auth=ACCESS_TOKEN)
        assert status == 200 and pros["size"] == len(USERS), pros
        # And the enroller read the grouped entries: one execution per user
        running = cloud.client("stepfunctions").list_executions(
            stateMachineArn=published["state_machine_arn"])["executions"]
        assert len(running) == len(USERS) and all(e["name"].endswith("-e1") for e in running)
    finally:
        assert stop_cloud(cloud) == 0, "".join(cloud.output[-40:])
