"""The events/*.json samples of the audience functions (also run by `engage invoke`) run as they are."""
from __future__ import annotations

import json

import pytest

from engage import spaces
from engage.db import key
from engage.memberships_store import MembershipRecord
from tests.integration.audience_support import (
    ROOT,
    Bus,
    LambdaContext,
    audience_engine,  # noqa: F401 - the `engine` fixture
    call_api,
    handler,
    make_profile,
)


def sample(name: str) -> dict:
    return json.loads((ROOT / "events" / f"{name}.json").read_text())


@pytest.fixture
def local(engine):
    spaces.create_space("local", access_token="local-access-token")
    for body in ({"key": "pro", "name": "Pro", "backfill": False,
                  "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
                 {"key": "vips", "name": "VIPs", "kind": "manual"}):
        assert call_api("POST", "/v1/audiences", body, token="local-access-token")[0] == 201
    return engine


def test_management_samples(local):
    response = handler("management_api")(sample("management_api_create_audience"), LambdaContext())
    assert response["statusCode"] == 201, response
    make_profile("prof-ann", space_id="local", ids={"email": "ann@example.com"})
    response = handler("management_api")(sample("management_api_import_members"), LambdaContext())
    body = json.loads(response["body"])
    assert response["statusCode"] == 200 and body["added"] == 1
    assert body["unknown"] == [{"line": 3, "value": "user_id:42", "message": "no profile has this id"}]


def test_stream_and_schedule_samples(local):
    bus = Bus(local)
    assert handler("audience_evaluator")(sample("audience_evaluator_batch"), LambdaContext()) == {
        "batchItemFailures": []}
    stored = {r.sk: r.member for r in MembershipRecord.query(key("local", "prof-ann"))}
    assert stored == {"all": True, "pro": True}
    assert handler("audience_router")(sample("audience_router_batch"), LambdaContext()) == {"batchItemFailures": []}
    assert sorted(e["detail-type"] for e in bus.received()) == ["Audience Entered", "Audience Exited"]
    report = handler("audience_sweeper")(sample("audience_sweeper_schedule"), LambdaContext())
    assert set(report) == {"days_open", "days_closed", "buckets", "complete"}
    assert handler("audience_sweep_worker")(sample("audience_sweep_worker_bucket"), LambdaContext()) == {
        "batchItemFailures": []}
    page = handler("audience_backfill")(sample("audience_backfill_page"), LambdaContext())
    assert page["done"] is True
