"""Preview before saving, CSV export of members, and the template's routes reaching the handler."""
from __future__ import annotations

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
