"""Real-time evaluation (ProfilesTable stream) and routing (MembershipsTable stream -> bus), through
the real handlers fed with the records moto's streams hold."""
from __future__ import annotations

import pytest

from engage.audiences import store
from engage.db import key
from engage.memberships_store import MembershipRecord
from engage.profiles_store import ProfileRecord
from tests.integration.audience_support import (
    Bus,
    LambdaContext,
    Sizes,
    StreamReader,
    audience_engine,  # noqa: F401 - the `engine` fixture
    call_api,
    handler,
    make_profile,
)

PRO = {"key": "pro", "name": "Pro", "backfill": False, "condition": {"trait": "plan", "op": "eq", "value": "pro"}}
PRO_IN_FRANCE = {"key": "pro_fr", "name": "Pro in France", "backfill": False,
                 "condition": {"all": [{"audience": "pro"}, {"trait": "country", "op": "eq", "value": "FR"}]}}


@pytest.fixture
def world(engine, space):
    assert call_api("POST", "/v1/audiences", PRO)[0] == 201
    assert call_api("POST", "/v1/audiences", PRO_IN_FRANCE)[0] == 201
    return engine


def evaluate(batch: dict) -> dict:
    return handler("audience_evaluator")(batch, LambdaContext())


def route(batch: dict) -> dict:
    return handler("audience_router")(batch, LambdaContext())


def memberships(profile_id: str) -> dict[str, bool]:
    return {r.sk: r.member for r in MembershipRecord.query(key("acme", profile_id))}


def set_traits(profile_id: str, **traits) -> None:
    record = ProfileRecord.get(key("acme", profile_id))
    record.traits = {**record.traits.as_dict(), **traits} if hasattr(record.traits, "as_dict") else {
        **record.traits, **traits}
    record.save()


def test_a_profile_change_moves_the_profile_in_and_out(world):
    profiles, size = StreamReader(world, "ProfilesTable"), Sizes(world)
    # Given a new free profile
    make_profile("p1", ids={"user_id": "1"}, traits={"plan": "free"})
    assert evaluate(profiles.batch()) == {"batchItemFailures": []}
    # Then it is in `all` only
    assert memberships("p1") == {"all": True}
    # When its plan becomes pro
    set_traits("p1", plan="pro")
    evaluate(profiles.batch())
    # Then it enters `pro`
    assert memberships("p1") == {"all": True, "pro": True}
    assert size("pro") == 1
    # When it goes back to free, it exits (and stays on record as a former member)
    set_traits("p1", plan="free")
    evaluate(profiles.batch())
    record = MembershipRecord.get(key("acme", "p1"), "pro")
    assert record.member is False and record.exited_at and record.entered_at
    assert size("pro") == 0


def test_audience_of_audiences_follows_its_inner_audience_in_the_same_pass(world):
    profiles = StreamReader(world, "ProfilesTable")
    make_profile("p1", traits={"plan": "free", "country": "FR"})
    evaluate(profiles.batch())
    assert memberships("p1") == {"all": True}
    # When only the inner audience's input changes
    set_traits("p1", plan="pro")
    evaluate(profiles.batch())
    # Then the outer audience, which depends on it, is re-evaluated in the same pass
    assert memberships("p1") == {"all": True, "pro": True, "pro_fr": True}
    set_traits("p1", plan="free")
    evaluate(profiles.batch())
    assert memberships("p1") == {"all": True, "pro": False, "pro_fr": False}


def test_replayed_batches_change_nothing_and_publish_nothing_twice(world):
    profiles, changes = StreamReader(world, "ProfilesTable"), StreamReader(world, "MembershipsTable")
    bus = Bus(world)
    make_profile("p1", ids={"user_id": "1", "email": "ann@example.com"}, traits={"plan": "free"})
    set_traits("p1", plan="pro")
    batch = profiles.batch()
    # When the same profile batch is delivered twice
    evaluate(batch)
    evaluate(batch)
    # Then each membership changed once: one stream record per change, sizes counted once
    membership_batch = changes.batch()
    assert len(membership_batch["Records"]) == 2  # entered all, entered pro
    size = Sizes(world)  # routes the changes through a reader of its own: the routes below find them counted
    assert size("pro") == 1 and size("all") == 1
    # When the membership batch is routed twice
    assert route(membership_batch) == {"batchItemFailures": []}
    route(membership_batch)
    # Then the bus carried each change exactly once, with the profile's ids
    events = bus.received()
    assert sorted((e["detail-type"], e["detail"]["audience_key"]) for e in events) == [
        ("Audience Entered", "all"), ("Audience Entered", "pro")]
    detail = next(e["detail"] for e in events if e["detail"]["audience_key"] == "pro")
    assert all(e["source"] == "engage" for e in events)
    assert detail["space"] == "acme" and detail["profile_id"] == "p1"
    assert detail["user_id"] == "1" and detail["email"] == "ann@example.com" and detail["timestamp"]


def test_exits_are_published_and_a_merged_profile_leaves_its_audiences(world):
    profiles, changes = StreamReader(world, "ProfilesTable"), StreamReader(world, "MembershipsTable")
    bus = Bus(world)
    make_profile("p1", traits={"plan": "pro"})
    make_profile("p2", traits={"plan": "free"})
    evaluate(profiles.batch())
    assert memberships("p1") == {"all": True, "pro": True}
    # When p1 is merged into p2 by the profile processor
    record = ProfileRecord.get(key("acme", "p1"))
    record.merged_into = "p2"
    record.save()
    evaluate(profiles.batch())
    # Then p1 has left every audience
    assert memberships("p1") == {"all": False, "pro": False}
    route(changes.batch())
    kinds = sorted((e["detail-type"], e["detail"]["profile_id"], e["detail"]["audience_key"]) for e in bus.received())
    assert ("Audience Exited", "p1", "pro") in kinds and ("Audience Exited", "p1", "all") in kinds
    assert store.size("acme", "all") == 1
