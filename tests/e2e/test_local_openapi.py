"""The OpenAPI document and the API's edges on the local cloud (the template's routes, over HTTP)."""
from __future__ import annotations

import json

import pytest

from engage import openapi

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"


def test_the_document_is_served_at_openapi_json(local_cloud):
    status, headers, body = local_cloud.call("GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body["openapi"].startswith("3.1") and body["paths"] == json.loads(openapi.document())["paths"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/nothing"), ("POST", "/v1/audiences/x/y/z"),
    ("GET", "/v1/spaces/local/collections/users/profiles/user_id:1")])
def test_unmatched_paths_answer_the_documented_error_shape(local_cloud, method, path):
    # Issue 10: these answered API Gateway's bare {"message": "Not Found"}
    status, _, body = local_cloud.call(method, path, auth=ACCESS_TOKEN)
    assert status == 404 and body["error"]["code"] == "not_found" and body["error"]["message"], body


def test_profile_api_answers_carry_request_id_and_ignore_unknown_parameters(local_cloud):
    path = "/v1/spaces/local/collections/users/profiles/user_id:nobody-here/traits?foo=1"
    status, headers, body = local_cloud.call("GET", path, auth=ACCESS_TOKEN)
    assert status == 404 and body["error"]["code"] == "not_found"  # the unknown parameter is not the problem
    assert headers["request-id"] == headers["apigw-requestid"]
