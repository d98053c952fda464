"""Issue 9 on the local cloud (`make dev`): the reproductions sent as a user would (HTTP), and the
local cloud refusing what DynamoDB refuses (localcloud.dynamodb_limits), through any AWS tool."""
from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from engage import dynamodb_limits as limits
from tests.e2e.test_local_app import WRITE_KEY, profile

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]


def test_the_local_cloud_refuses_what_dynamodb_refuses(local_cloud):
    table = local_cloud.physical("EventsTable")
    client = local_cloud.client("dynamodb")
    key = {"pk": {"S": f"limits|{uuid.uuid4().hex}"}, "sk": {"S": "m1"}}
    for attributes, message in (({"n": {"N": "1e308"}}, limits.NUMBER_OVERFLOW),
                                ({"n": {"N": "1" * 50}}, limits.TOO_MANY_DIGITS),
                                ({"big": {"S": "x" * limits.MAX_ITEM_BYTES}}, limits.ITEM_TOO_LARGE)):
        with pytest.raises(ClientError) as refused:
            client.put_item(TableName=table, Item={**key, **attributes})
        assert refused.value.response["Error"] == {"Code": "ValidationException", "Message": message}


def test_the_issue_reproductions_are_refused_or_applied_never_lost(local_cloud):
    user = f"victim-{uuid.uuid4().hex[:8]}"
    local_cloud.settle()
    failures_before = failure_ids(local_cloud)
    # The issue's nine identifies, each adding a 30 KB trait: refused, naming the trait
    for i in range(9):
        status, _, body = local_cloud.call("POST", "/v1/identify", {
            "userId": user, "traits": {f"junk{i}": "j" * 30_000}}, auth=WRITE_KEY)
        assert status == 400 and body["details"][0]["path"] == f"traits.junk{i}", body
    # The largest trait allowed, nine times: accepted, and the trait budget holds
    for i in range(9):
        status, _, body = local_cloud.call("POST", "/v1/identify", {
            "userId": user, "traits": {f"junk{i}": "j" * 16_000}}, auth=WRITE_KEY)
        assert status == 200, body
    # Accepted-then-dropped cases of reproductions 2 and 3: now refused
    for call, message, path in (
            ("identify", {"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
            ("track", {"event": "E", "traits": [1]}, "traits"),
            ("identify", {"properties": "x"}, "properties"),
            ("identify", {"traits": {"email": "e" * 2100 + "@example.com"}}, "traits.email"),
            ("track", {"event": "E", "context": {"externalIds": [{"id": "x" * 2100, "type": "crm_id"}]}},
             "context.externalIds[0].id"),
            ("track", {"event": "E", "messageId": "m" * 1000}, "messageId"),
            ("identify", {"traits": {"score": 1e308}}, "traits.score"),
            ("identify", {"traits": {"score": 1e-200}}, "traits.score"),
            ("identify", {"traits": {"score": int("9" * 50)}}, "traits.score")):
        status, _, body = local_cloud.call("POST", f"/v1/{call}", {"userId": user, **message}, auth=WRITE_KEY)
        assert status == 400 and path in [d["path"] for d in body["details"]], (message, body)
    # The victim's own identify still applies
    status, _, _ = local_cloud.call("POST", "/v1/identify", {"userId": user, "traits": {"plan": "pro"}},
                                    auth=WRITE_KEY)
    assert status == 200
    local_cloud.settle()
    traits = profile(local_cloud, user, "traits")["traits"]
    assert traits["plan"] == "pro" and "junk0" in traits
    # And nothing accepted failed later: no stream record was noted failing or parked (FailuresTable)
    assert failure_ids(local_cloud) == failures_before


def failure_ids(cloud) -> set[str]:
    """Every record a stream function reported failed (noted while retried, or parked): docs/reliability.md."""
    table = cloud.resource("dynamodb").Table(cloud.physical("FailuresTable"))
    items, page = [], {}
    while True:
        answer = table.scan(ProjectionExpression="pk", **page)
        items += answer["Items"]
        if "LastEvaluatedKey" not in answer:
            return {item["pk"] for item in items}
        page = {"ExclusiveStartKey": answer["LastEvaluatedKey"]}
