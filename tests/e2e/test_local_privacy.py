"""Data rights on the local cloud, over HTTP as a user would: delete a person with ?suppress=true (202 and a
job), follow the job to `done`, find nothing of them in any table through the AWS endpoint, see their new
events accepted and dropped, then lift the suppression and see them come back. docs/privacy.md."""
from __future__ import annotations

import json
import uuid
from urllib.parse import quote

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
PROFILES = "/v1/spaces/local/collections/users/profiles"


def traits(cloud, ref: str) -> tuple[int, dict]:
    status, _, body = cloud.call("GET", f"{PROFILES}/{quote(ref)}/traits", auth=ACCESS_TOKEN)
    return status, body


def every_item(cloud) -> str:
    """Every item of every DynamoDB table of the stack, read through the AWS endpoint."""
    client, dump = cloud.client("dynamodb"), []
    for name in client.list_tables()["TableNames"]:
        for page in client.get_paginator("scan").paginate(TableName=name):
            dump += [f"{name} {json.dumps(item)}" for item in page["Items"]]
    return "\n".join(dump)


def test_a_deleted_and_suppressed_person_leaves_nothing_and_stays_out_until_unsuppressed(local_cloud):
    cloud, tag = local_cloud, uuid.uuid4().hex[:8]
    anon, user, email, bystander = f"anon-{tag}", f"gdpr-{tag}", f"gdpr-{tag}@example.com", f"keep-{tag}"
    # Given a person who browsed anonymously, then signed up, with an audience membership
    status, _, body = cloud.call("POST", "/v1/audiences", {"key": f"viewers_{tag}", "name": "Viewers", "backfill": False,
                                                           "condition": {"event": f"Viewed {tag}"}}, auth=ACCESS_TOKEN)
    assert status == 201, body
    for path, message in (("/v1/track", {"anonymousId": anon, "event": f"Viewed {tag}"}),
                          ("/v1/identify", {"userId": user, "anonymousId": anon, "traits": {"email": email}}),
                          ("/v1/track", {"userId": user, "event": "Order Completed", "properties": {"revenue": 5}}),
                          ("/v1/identify", {"userId": bystander, "traits": {"plan": "pro"}})):
        assert cloud.call("POST", path, message, auth=WRITE_KEY)[0] == 200
    cloud.settle()
    status, before = traits(cloud, f"user_id:{user}")
    assert status == 200 and before["traits"]["email"] == email and before["traits"][f"viewers_{tag}"] is True
    dump = every_item(cloud)
    assert all(needle in dump for needle in (anon, user, email))

    # When they are deleted by their email, with suppression
    status, _, job = cloud.call("DELETE", f"{PROFILES}/{quote('email:' + email)}?suppress=true", auth=ACCESS_TOKEN)
    assert status == 202, job
    assert job["status"] == "pending" and job["suppress"] is True and email not in json.dumps(job)
    cloud.settle()
    # Then the job is done, counts what it erased, and keeps no personal data
    status, _, done = cloud.call("GET", f"/v1/spaces/local/deletions/{job['id']}", auth=ACCESS_TOKEN)
    assert status == 200 and done["status"] == "done", done
    assert done["erased"]["profiles"] == 1 and done["erased"]["audiences_exited"] >= 1, done
    assert not any(needle in json.dumps(done) for needle in (anon, user, email))
    # And nothing of them is left in any table (the job record keeps hashes only), the bystander untouched
    dump = every_item(cloud)
    left = [line for line in dump.splitlines() if any(n in line for n in (anon, user, email))]
    assert left == [], left[:3]
    assert traits(cloud, f"user_id:{user}")[0] == 404 and traits(cloud, f"anonymous_id:{anon}")[0] == 404
    assert traits(cloud, f"user_id:{bystander}")[1]["traits"]["plan"] == "pro"

    # When the suppressed person's SDK sends again: accepted, then dropped
    assert cloud.call("POST", "/v1/track", {"userId": user, "event": "Came Back"}, auth=WRITE_KEY)[0] == 200
    assert cloud.call("POST", "/v1/identify", {"anonymousId": anon, "traits": {"email": email}},
                      auth=WRITE_KEY)[0] == 200
    cloud.settle()
    assert traits(cloud, f"user_id:{user}")[0] == 404 and traits(cloud, f"anonymous_id:{anon}")[0] == 404
    left = [line for line in every_item(cloud).splitlines() if any(n in line for n in (anon, user, email))]
    assert left == [], left[:3]

    # When the suppression of the user id is lifted (a second lift is a 404), their new events count again
    path = f"/v1/spaces/local/collections/users/suppressions/{quote('user_id:' + user)}"
    assert cloud.call("DELETE", path, auth=ACCESS_TOKEN)[0] == 200
    assert cloud.call("DELETE", path, auth=ACCESS_TOKEN)[0] == 404
    assert cloud.call("POST", "/v1/identify", {"userId": user, "traits": {"plan": "back"}}, auth=WRITE_KEY)[0] == 200
    cloud.settle()
    status, after = traits(cloud, f"user_id:{user}")
    # (a new profile: nothing of the erased one, such as the email, came back)
    assert status == 200 and after["traits"]["plan"] == "back" and "email" not in after["traits"], after


def test_deletion_routes_refuse_what_they_cannot_do(local_cloud):
    cloud = local_cloud
    # another space's token, no token, a malformed id, a job that does not exist, a batch over the limit
    assert cloud.call("DELETE", f"{PROFILES}/user_id:x", auth=None)[0] == 401
    assert cloud.call("DELETE", "/v1/spaces/other/collections/users/profiles/user_id:x", auth=ACCESS_TOKEN)[0] == 403
    status, _, body = cloud.call("DELETE", f"{PROFILES}/nocolon", auth=ACCESS_TOKEN)
    assert status == 400 and body["error"]["details"][0]["path"] == "path.profile"
    assert cloud.call("GET", "/v1/spaces/local/deletions/del_nothing", auth=ACCESS_TOKEN)[0] == 404
    status, _, body = cloud.call("POST", "/v1/spaces/local/collections/users/profiles:delete",
                                 {"ids": [f"user_id:{i}" for i in range(1001)]}, auth=ACCESS_TOKEN)
    assert status == 400 and "1000" in body["error"]["message"]
    status, _, body = cloud.call("POST", "/v1/spaces/local/collections/users/profiles:delete",
                                 {"ids": ["user_id:a", 7]}, auth=ACCESS_TOKEN)
    assert status == 400 and body["error"]["details"][0]["path"] == "$.ids[1]"
    status, _, body = cloud.call("DELETE", f"{PROFILES}/user_id:x?suppress=maybe", auth=ACCESS_TOKEN)
    assert status == 400, body
    # ids longer than any profile can have, and a batch too large for one job record
    status, _, body = cloud.call("DELETE", f"{PROFILES}/user_id:{'x' * 1001}", auth=ACCESS_TOKEN)
    assert status == 400 and body["error"]["details"][0]["path"] == "path.profile", body
    status, _, body = cloud.call("POST", "/v1/spaces/local/collections/users/profiles:delete",
                                 {"ids": [f"user_id:{i:04d}{'y' * 990}" for i in range(300)]}, auth=ACCESS_TOKEN)
    assert status == 400 and "several requests" in body["error"]["message"], body
    # a batch job for two people, one unknown: done, one person erased
    assert cloud.call("POST", "/v1/identify", {"userId": "batch-gone", "traits": {"a": 1}}, auth=WRITE_KEY)[0] == 200
    cloud.settle()
    status, _, job = cloud.call("POST", "/v1/spaces/local/collections/users/profiles:delete",
                                {"ids": ["user_id:batch-gone", "user_id:never-seen"]}, auth=ACCESS_TOKEN)
    assert status == 202, job
    cloud.settle()
    done = cloud.call("GET", f"/v1/spaces/local/deletions/{job['id']}", auth=ACCESS_TOKEN)[2]
    assert done["status"] == "done" and done["erased"]["people"] == 1 and done["suppress"] is False, done
    assert traits(cloud, "user_id:batch-gone")[0] == 404
