"""The audience router (MembershipsTable stream -> bus) through its real handler on moto: batched
PutEvents, per-entry failures, idempotency across replays, events built from the stream image."""
from __future__ import annotations

import json

import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from bench.meter import measure
from engage.audiences import membership, router, store
from engage.db import key
from engage.profiles_store import ProfileRecord
from tests.integration.audience_support import (
    Bus,
    LambdaContext,
    StreamReader,
    audience_engine,  # noqa: F401 - the `engine` fixture
    handler,
    make_profile,
)

# API.md "Events on the bus" / docs/audiences-api.md: the detail of Audience Entered / Exited.
DETAIL_FIELDS = {"space", "audience_key", "profile_id", "user_id", "anonymous_id", "email", "timestamp", "version"}
_plain = TypeDeserializer()


def route(batch: dict) -> dict:
    return handler("audience_router")(batch, LambdaContext())


def enter(profile_id: str, audience_key: str, *, carry_ids: bool = True, member: bool = True):
    """Write a membership the way the evaluator does (with the profile image's ids) or, with
    `carry_ids=False`, the way items written before identity existed look (and manual edits)."""
    profile = ProfileRecord.get(key("acme", profile_id))
    identity = membership.identity_of(profile.external_ids) if carry_ids else None
    return membership.set_member("acme", profile_id, audience_key, member,
                                 membership.current_one("acme", profile_id, audience_key), identity=identity)


def sequence_of(batch: dict, profile_id: str, audience_key: str) -> str:
    return next(r["dynamodb"]["SequenceNumber"] for r in batch["Records"]
                if r["dynamodb"]["NewImage"]["profile_id"]["S"] == profile_id
                and r["dynamodb"]["NewImage"]["audience_key"]["S"] == audience_key)


def published(bus: Bus) -> list[tuple[str, str, str]]:
    return sorted((e["detail-type"], e["detail"]["profile_id"], e["detail"]["audience_key"]) for e in bus.received())


@pytest.fixture
def changes(engine, space):
    return StreamReader(engine, "MembershipsTable")


def test_a_batch_publishes_ten_entries_per_call_and_records_each_change_once(changes, engine):
    bus = Bus(engine)
    for n in range(23):
        make_profile(f"p{n}", ids={"user_id": str(n)})
        enter(f"p{n}", "vip")
    batch = changes.batch()
    # When 23 changes are routed
    with measure() as usage:
        assert route(batch) == {"batchItemFailures": []}
    # Then 3 PutEvents calls carried them, with one log read and one commit (the 23 log items and the
    # audience's counter in one transaction), no profile read
    assert usage.count("events", "PutEvents") == 3
    assert usage.count("dynamodb", "BatchGetItem") == 1
    assert usage.count("dynamodb", "TransactWriteItems") == 1
    assert usage.count("dynamodb") == 2
    assert len(published(bus)) == 23 and store.size("acme", "vip") == 23
    # When the same batch is delivered again
    with measure() as replay:
        assert route(batch) == {"batchItemFailures": []}
    # Then nothing is published twice: one read finds every change recorded
    assert replay.count("events") == 0 and replay.count("dynamodb") == 1
    assert bus.received() == [] and store.size("acme", "vip") == 23


def test_events_carry_the_documented_fields_from_the_stream_image_or_the_profile(changes, engine):
    bus = Bus(engine)
    make_profile("ann", ids={"user_id": "42", "anonymous_id": "anon-1", "email": "ann@example.com"})
    make_profile("bob", ids={"email": "bob@example.com"})
    enter("ann", "vip")  # carries its ids
    enter("bob", "vip", carry_ids=False)  # an item from before identity was stored
    batch = changes.batch()
    assert "identity" in batch["Records"][0]["dynamodb"]["NewImage"]
    assert "identity" not in batch["Records"][1]["dynamodb"]["NewImage"]
    with measure() as usage:
        assert route(batch) == {"batchItemFailures": []}
    # Only the item without ids reads its profile (one BatchGetItem next to the idempotency read)
    assert usage.count("dynamodb", "BatchGetItem") == 2 and usage.count("dynamodb", "GetItem") == 0
    events = {e["detail"]["profile_id"]: e for e in bus.received()}
    for event in events.values():
        assert event["source"] == "engage" and event["detail-type"] == "Audience Entered"
        assert set(event["detail"]) == DETAIL_FIELDS
    stored = membership.current_one("acme", "ann", "vip")
    assert events["ann"]["detail"] == {"space": "acme", "audience_key": "vip", "profile_id": "ann", "user_id": "42",
                                       "anonymous_id": "anon-1", "email": "ann@example.com",
                                       "timestamp": stored.entered_at, "version": stored.version}
    assert events["bob"]["detail"]["email"] == "bob@example.com"
    assert events["bob"]["detail"]["user_id"] is None and events["bob"]["detail"]["anonymous_id"] is None


def test_a_write_without_ids_drops_the_stored_ones_so_the_event_names_the_current_ids(changes, engine):
    bus = Bus(engine)
    make_profile("ann", ids={"user_id": "42"})
    enter("ann", "vip")
    route(changes.batch())
    bus.received()
    # Given the profile gained an email after it entered
    profile = ProfileRecord.get(key("acme", "ann"))
    profile.external_ids = [*profile.external_ids, {"type": "email", "id": "ann@example.com"}]
    profile.save()
    # When a writer without the profile image (a manual edit) removes it
    enter("ann", "vip", carry_ids=False, member=False)
    assert membership.current_one("acme", "ann", "vip").identity is None
    route(changes.batch())
    # Then the exit names the profile's ids as they are now
    (event,) = bus.received()
    assert event["detail-type"] == "Audience Exited"
    assert event["detail"]["email"] == "ann@example.com" and event["detail"]["user_id"] == "42"


def failing_for(profile_id: str, monkeypatch) -> None:
    """EventBridge refuses the entries of `profile_id` (FailedEntryCount), accepts the others."""
    client = router._events_client()
    real = client.put_events

    def put_events(Entries):
        refused = [json.loads(e["Detail"])["profile_id"] == profile_id for e in Entries]
        result = real(Entries=[e for e, no in zip(Entries, refused, strict=True) if not no])
        accepted = iter(result["Entries"])
        entries = [{"ErrorCode": "InternalFailure", "ErrorMessage": "simulated"} if no else next(accepted)
                   for no in refused]
        return {**result, "FailedEntryCount": result["FailedEntryCount"] + sum(refused), "Entries": entries}

    monkeypatch.setattr(client, "put_events", put_events)


def test_a_refused_entry_is_reported_alone_and_published_on_the_retry(changes, engine, monkeypatch):
    bus = Bus(engine)
    for n in range(5):
        make_profile(f"p{n}", ids={"user_id": str(n)})
        enter(f"p{n}", "vip")
    batch = changes.batch()
    # When EventBridge refuses p2's entry of the single PutEvents call
    failing_for("p2", monkeypatch)
    with measure() as usage:
        response = route(batch)
    assert usage.count("events", "PutEvents") == 1
    # Then exactly p2's record is a batch item failure, and the others are on the bus
    assert response == {"batchItemFailures": [{"itemIdentifier": sequence_of(batch, "p2", "vip")}]}
    assert [p for _, p, _ in published(bus)] == ["p0", "p1", "p3", "p4"]
    # When Lambda retries from the failed record on (and EventBridge accepts it now)
    monkeypatch.undo()
    start = [r["dynamodb"]["SequenceNumber"] for r in batch["Records"]].index(sequence_of(batch, "p2", "vip"))
    assert route({"Records": batch["Records"][start:]}) == {"batchItemFailures": []}
    # Then only p2 is published: p3 and p4 were recorded as done
    assert published(bus) == [("Audience Entered", "p2", "vip")]
    # And a replay of the whole batch publishes nothing
    route(batch)
    assert bus.received() == []


def test_a_failed_put_events_call_reports_its_records_and_publishes_nothing(changes, engine, monkeypatch):
    bus = Bus(engine)
    for n in range(3):
        make_profile(f"p{n}")
        enter(f"p{n}", "vip")
    batch = changes.batch()

    def unavailable(**_):
        raise ClientError({"Error": {"Code": "InternalException", "Message": "simulated"}}, "PutEvents")

    monkeypatch.setattr(router._events_client(), "put_events", unavailable)
    response = route(batch)
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        r["dynamodb"]["SequenceNumber"] for r in batch["Records"])
    monkeypatch.undo()
    # Nothing was recorded as published: the retry publishes every change once
    assert route(batch) == {"batchItemFailures": []}
    assert [p for _, p, _ in published(bus)] == ["p0", "p1", "p2"]


def test_a_publication_not_committed_is_retried_published_again_and_counted_once(changes, engine, monkeypatch):
    """The documented limit: between PutEvents and the commit, a failure means at least once; the
    change is retried so its count is never lost."""
    bus = Bus(engine)
    make_profile("ann")
    enter("ann", "vip")
    batch = changes.batch()

    def lost(self, changes):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "simulated"}}, "TransactWriteItems")

    monkeypatch.setattr(router.PublicationLog, "commit", lost)
    # The change reached the bus but was not recorded nor counted: its record is reported for a retry
    assert route(batch) == {"batchItemFailures": [{"itemIdentifier": sequence_of(batch, "ann", "vip")}]}
    assert len(bus.received()) == 1 and store.size("acme", "vip") == 0
    monkeypatch.undo()
    # The retry publishes it again (never lost, possibly twice) and counts it; from then on it is recorded
    route(batch)
    route(batch)
    assert len(bus.received()) == 1 and store.size("acme", "vip") == 1


def test_a_commit_whose_answer_was_lost_counts_nothing_twice(changes, engine):
    """A transaction applied whose answer never came back is sent again: its conditions refuse it,
    the log is read, and only what was not recorded is committed."""
    make_profile("ann")
    make_profile("bob")
    enter("ann", "vip")
    enter("bob", "vip")
    records = changes.batch()["Records"]
    plain = [router.change_of(None, {n: _plain.deserialize(v) for n, v in r["dynamodb"]["NewImage"].items()})
             for r in records]
    log = router._log()
    log.commit(plain[:1])  # ann's commit applied (its answer lost) ...
    log.commit(plain)  # ... so the retry carries both: ann is found recorded, bob committed
    log.commit(plain)  # and a third attempt changes nothing
    assert store.size("acme", "vip") == 2
    recorded, _ = log.published({router.log_id(c) for c in plain})
    assert sorted(e for elements in recorded.values() for e in elements) == ["vip#1", "vip#1"]


def test_sizes_count_entries_and_exits_once_whatever_the_batches(changes, engine):
    """Sizes are the router's: +1 per entry, -1 per exit, as the batches replay and overlap."""
    for n in range(6):
        make_profile(f"p{n}")
        enter(f"p{n}", "vip")
    first = changes.batch()
    for n in range(3):
        enter(f"p{n}", "vip", member=False)
    second = changes.batch()
    everything = {"Records": first["Records"] + second["Records"]}
    route({"Records": first["Records"][:4]})
    route(everything)
    route(second)
    route(everything)
    assert store.size("acme", "vip") == 3


def test_records_written_by_the_previous_router_version_still_deduplicate(changes, engine):
    """Before batching, the router published through powertools' idempotent_function (one record per change,
    key prefix from the decorated function's name): a redelivery across the deploy must not publish again."""
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    bus = Bus(engine)
    make_profile("ann")
    enter("ann", "vip")
    batch = changes.batch()

    def publish(change):
        return {"event_id": "published-by-the-previous-version", "detail_type": "Audience Entered"}

    publish.__module__, publish.__qualname__ = "engage.audiences.router", "_idempotent_put.<locals>.publish"
    previous = idempotent_function(
        data_keyword_argument="change", persistence_store=DynamoDBPersistenceLayer(table_name=engine.env[
            "IDEMPOTENCY_TABLE"]),
        config=IdempotencyConfig(event_key_jmespath="[space_id, profile_id, audience_key, to_string(version)]",
                                 expires_after_seconds=router.IDEMPOTENCY_SECONDS))(publish)
    image = batch["Records"][0]["dynamodb"]["NewImage"]
    del image["router_counts"]  # a change written before the router counted sizes (its writer counted it)
    previous(change=router.change_of(None, {name: _plain.deserialize(value) for name, value in image.items()}))
    assert route(batch) == {"batchItemFailures": []}
    assert bus.received() == [] and store.size("acme", "vip") == 0
    # A change of the same era the old log does not hold is published once, and not counted
    make_profile("bob")
    enter("bob", "vip")
    later = changes.batch()
    del later["Records"][0]["dynamodb"]["NewImage"]["router_counts"]
    assert route(later) == route(later) == {"batchItemFailures": []}
    assert published(bus) == [("Audience Entered", "bob", "vip")] and store.size("acme", "vip") == 0


def test_a_change_whose_idempotency_lookup_stays_throttled_is_retried_not_published(changes, engine, monkeypatch):
    bus = Bus(engine)
    make_profile("ann")
    enter("ann", "vip")
    batch = changes.batch()
    log = router._log()
    monkeypatch.setattr(router, "_back_off", lambda attempt: None)
    monkeypatch.setattr(log.client, "batch_get_item",
                        lambda RequestItems: {"Responses": {}, "UnprocessedKeys": RequestItems})
    # When DynamoDB keeps answering "unprocessed", the router cannot tell whether it published
    assert route(batch) == {"batchItemFailures": [{"itemIdentifier": sequence_of(batch, "ann", "vip")}]}
    assert bus.received() == []
    monkeypatch.undo()
    assert route(batch) == {"batchItemFailures": []}
    assert published(bus) == [("Audience Entered", "ann", "vip")]


def test_an_unreadable_record_fails_alone(changes, engine):
    bus = Bus(engine)
    make_profile("ann")
    enter("ann", "vip")
    batch = changes.batch()
    broken = json.loads(json.dumps(batch["Records"][0]))
    broken["dynamodb"]["SequenceNumber"] = "broken-1"
    del broken["dynamodb"]["NewImage"]["space_id"]
    assert route({"Records": [broken, *batch["Records"]]}) == {"batchItemFailures": [{"itemIdentifier": "broken-1"}]}
    assert len(bus.received()) == 1
