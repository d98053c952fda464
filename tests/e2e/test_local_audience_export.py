"""A large audience export on the local cloud, as a user runs it: GET -> 202 (the management API
invoked AudienceExportFunction asynchronously), wait, GET -> 303 to a presigned URL of the local
AWS endpoint, download it with plain urllib. The cloud runs with ExportSyncMaxMembers=5 so a
dozen members take the background path."""
from __future__ import annotations

import base64
import csv
import io
import json
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
PEOPLE = 12


@pytest.fixture(scope="module")
def export_cloud():
    cloud = start_cloud("--param", "ExportSyncMaxMembers=5")
    yield cloud
    assert stop_cloud(cloud) == 0, "".join(cloud.output[-40:])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the 303 back to the caller, as `curl` without -L would


def get_export(cloud, query: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{cloud.api_url}/v1/audiences/vips/export?{query}", headers={
        "authorization": "Basic " + base64.b64encode(f"{ACCESS_TOKEN}:".encode()).decode()})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=60) as response:
            status, headers, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, error.headers, error.read().decode()
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(text)


def test_large_export_is_generated_then_downloaded_from_the_local_aws_endpoint(export_cloud):
    cloud = export_cloud
    batch = [{"type": "identify", "userId": f"u{n}", "traits": {"email": f"person{n}@example.com"}}
             for n in range(PEOPLE)]
    status, _, body = cloud.call("POST", "/v1/batch", {"batch": batch}, auth=WRITE_KEY)
    assert status == 200, body
    cloud.settle()
    status, _, body = cloud.call("POST", "/v1/audiences", {"key": "vips", "name": "VIPs", "kind": "manual"},
                                 auth=ACCESS_TOKEN)
    assert status == 201, body
    status, _, body = cloud.call("POST", "/v1/audiences/vips/members",
                                 {"add": [f"user_id:u{n}" for n in range(PEOPLE)]}, auth=ACCESS_TOKEN)
    assert status == 200 and body["added"] == PEOPLE, body
    cloud.settle()

    status, headers, body = get_export(cloud, "format=single_column&id_type=email&hash=none")
    assert status == 202 and body["status"] == "generating" and int(headers["retry-after"]) >= 1, body
    cloud.settle()  # the async invocation of AudienceExportFunction has run
    status, headers, body = get_export(cloud, "format=single_column&id_type=email&hash=none")
    assert status == 303 and body["status"] == "ready" and body["rows"] == PEOPLE, body
    location = headers["location"]
    assert location.startswith(cloud.aws_endpoint + "/"), location  # path-style on the local endpoint
    with urllib.request.urlopen(location, timeout=60) as download:
        rows = list(csv.reader(io.StringIO(download.read().decode())))
    assert rows[0] == ["email"]
    assert sorted(r[0] for r in rows[1:]) == sorted(f"person{n}@example.com" for n in range(PEOPLE))
    # one async invocation of the export function, and the bucket the template declares holds the file
    runs = [i for i in cloud_invocations(cloud) if i["function"] == "AudienceExportFunction"]
    assert len(runs) == 1 and runs[0]["error"] is None, runs
    s3, bucket = cloud.client("s3"), cloud.physical("ExportsBucket")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="exports/local/vips/")["KeyCount"] == 1
    # deployed as declared: private, encrypted, files expire
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]["Expiration"]["Days"] == 1


def cloud_invocations(cloud) -> list[dict]:
    status, _, body = cloud.call("GET", "/_local/invocations?after=0")
    assert status == 200, body
    return body["invocations"]
