"""The audience router (MembershipsTable stream -> bus) through its real handler on moto: batched
PutEvents, per-entry failures, idempotency across replays, events built from the stream image.

Every test runs in both groupings (AudienceEventGrouping: `change`, the default, and `evaluation`): the
guarantees of router.py's docstring hold in each. The bus is read back as per-change events
(engage.audiences.bus.per_change), so one assertion serves both shapes; the tests at the end are the
grouped shape's own (several changes of one evaluation in one entry)."""
from __future__ import annotations

import json

import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from bench.meter import measure
from engage.audiences import bus as shapes
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


@pytest.fixture(autouse=True, params=[shapes.CHANGE, shapes.EVALUATION])
def grouping(request, aws, monkeypatch):
    """The router's AUDIENCE_EVENT_GROUPING (template.yaml's AudienceEventGrouping) for this test."""
    from engage import config

    monkeypatch.setenv("AUDIENCE_EVENT_GROUPING", request.param)
    config.settings.cache_clear()
    yield request.param
    config.settings.cache_clear()


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


def unpacked(events: list[dict]) -> list[tuple[str, dict]]:
    """Bus events of either shape as the per-change events they carry (what the journey enroller reads)."""
    return [pair for e in events for pair in shapes.per_change(e["detail-type"], e["detail"])]


def published(bus: Bus) -> list[tuple[str, str, str]]:
    return sorted((kind, d["profile_id"], d["audience_key"]) for kind, d in unpacked(bus.received()))


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
    # audience's counter page in one transaction), no profile read; the container's first batch of the
    # space also reads its audience keys once (one Query: how many counter pages)
    assert usage.count("events", "PutEvents") == 3
    assert usage.count("dynamodb", "BatchGetItem") == 1
    assert usage.count("dynamodb", "TransactWriteItems") == 1
    assert usage.count("dynamodb", "Query") == 1
    assert usage.count("dynamodb") == 3
    assert len(published(bus)) == 23 and store.size("acme", "vip") == 23
    # When the same batch is delivered again
    with measure() as replay:
        assert route(batch) == {"batchItemFailures": []}
    # Then nothing is published twice: one read finds every change recorded
    assert replay.count("events") == 0 and replay.count("dynamodb") == 1
    assert bus.received() == [] and store.size("acme", "vip") == 23


def test_events_carry_the_documented_fields_from_the_stream_image_or_the_profile(changes, engine, grouping):
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
    received = bus.received()
    assert all(e["source"] == "engage" for e in received)
    assert {e["detail-type"] for e in received} == {"Audience Entered" if grouping == shapes.CHANGE
                                                    else "Audience Memberships Changed"}
    events = {d["profile_id"]: {"detail-type": kind, "detail": d} for kind, d in unpacked(received)}
    for event in events.values():
        assert event["detail-type"] == "Audience Entered"
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
    ((kind, detail),) = unpacked(bus.received())
    assert kind == "Audience Exited"
    assert detail["email"] == "ann@example.com" and detail["user_id"] == "42"


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


# ---------------------------------------------------------------- size counter pages
def page_items(engine) -> list[dict]:
    client = engine.client("dynamodb")
    table = next(t for t in client.list_tables()["TableNames"] if "ConfigTable" in t)
    return [item for item in client.scan(TableName=table)["Items"]
            if item["pk"]["S"].startswith(key("acme", "audience_sizes", ""))]


def counters_of(item: dict) -> dict[str, int]:
    return {name.removeprefix(store.COUNTER_PREFIX): int(value["N"]) for name, value in item.items()
            if name.startswith(store.COUNTER_PREFIX)}


PACKED = [f"seg{n}" for n in range(12)]


def test_one_commit_moves_the_counters_of_many_audiences_in_one_page_item(changes, engine):
    """The counters of a space's audiences share a page: a commit writes one item for all of them."""
    make_profile("ann")
    for audience_key in PACKED:
        enter("ann", audience_key)
    batch = changes.batch()
    with measure() as usage:
        assert route(batch) == {"batchItemFailures": []}
    # one transaction: the changes' log items and ONE counter page item for the 12 audiences
    assert usage.count("dynamodb", "TransactWriteItems") == 1
    [page] = page_items(engine)
    assert counters_of(page) == dict.fromkeys(PACKED, 1)
    assert store.sizes("acme", PACKED) == dict.fromkeys(PACKED, 1)
    route(batch)  # a replay counts nothing
    assert store.sizes("acme", PACKED) == dict.fromkeys(PACKED, 1)


def test_sizes_stay_exact_when_the_page_count_changes_between_batches(changes, engine, monkeypatch):
    """A container's page count goes stale as audiences are added (each re-reads it every few minutes):
    counters written under either count are summed, and deleting an audience clears it from every page."""
    people = [f"p{n}" for n in range(4)]
    for profile_id in people:
        make_profile(profile_id)
        for audience_key in PACKED:
            enter(profile_id, audience_key)
    first = changes.batch()
    page_bytes = store.SIZE_PAGE_BYTES
    monkeypatch.setattr(store, "SIZE_PAGE_BYTES", 3)  # pages sized as for a space of many long keys
    router._layouts.clear()
    route(first)
    assert router._pages("acme") > 1 and len({i["sk"]["S"] for i in page_items(engine)}) > 1
    for profile_id in people[:3]:
        for audience_key in PACKED[:6]:
            enter(profile_id, audience_key, member=False)
    second = changes.batch()
    monkeypatch.setattr(store, "SIZE_PAGE_BYTES", page_bytes)
    router._layouts.clear()
    route(second)
    assert router._pages("acme") == 1
    route({"Records": first["Records"] + second["Records"]})  # replays of both count nothing
    expected = {k: 1 if k in PACKED[:6] else 4 for k in PACKED}
    assert store.sizes("acme", PACKED) == expected
    assert [store.size("acme", k) for k in PACKED] == [expected[k] for k in PACKED]  # one audience's agrees
    store.drop_size("acme", "seg7")
    assert all(store.counter_name("seg7") not in item for item in page_items(engine))
    assert store.sizes("acme", PACKED) == {**expected, "seg7": 0}


def test_counter_shards_written_before_the_pages_are_summed_in_and_dropped(changes, engine):
    """Sizes counted by routers before the pages (one audience's shard items) still count."""
    store.AudienceSizeShard(store._size_pk("acme", "vip"), "3", count=4).save()
    make_profile("ann")
    enter("ann", "vip")
    route(changes.batch())
    assert store.size("acme", "vip") == 5
    store.drop_size("acme", "vip")
    assert store.size("acme", "vip") == 0 and list(store.AudienceSizeShard.query(store._size_pk("acme", "vip"))) == []


# ---------------------------------------------------------------- the grouped shape's own (evaluation)
AUDIENCES = ["a1", "a2", "a3", "a4", "a5"]


def evaluate(profile_id: str, decisions: dict[str, bool], profile_version: int) -> None:
    """Write memberships the way one evaluation does: one profile image, its version and ids on each change."""
    profile = ProfileRecord.get(key("acme", profile_id))
    membership.apply("acme", profile_id, decisions, membership.current_of("acme", profile_id, list(decisions)),
                     profile_version=profile_version, identity=membership.identity_of(profile.external_ids))


def sequences(batch: dict, profile_id: str, audiences=None) -> list[str]:
    return sorted(r["dynamodb"]["SequenceNumber"] for r in batch["Records"]
                  if r["dynamodb"]["NewImage"]["profile_id"]["S"] == profile_id
                  and (audiences is None or r["dynamodb"]["NewImage"]["audience_key"]["S"] in audiences))


def failures(response: dict) -> list[str]:
    return sorted(f["itemIdentifier"] for f in response["batchItemFailures"])


grouped = pytest.mark.parametrize("grouping", [shapes.EVALUATION], indirect=True)


@grouped
def test_one_entry_per_evaluation_carries_its_changes_and_replays_publish_nothing(changes, engine):
    bus = Bus(engine)
    make_profile("ann", ids={"user_id": "42", "email": "ann@example.com"})
    make_profile("bob", ids={"user_id": "7"})
    evaluate("ann", {k: True for k in AUDIENCES}, profile_version=3)
    evaluate("bob", {"a1": True, "a2": True}, profile_version=8)
    route(changes.batch())
    assert sorted((e["detail"]["profile_id"], len(e["detail"]["entered"])) for e in bus.received()) == [
        ("ann", 5), ("bob", 2)]
    evaluate("ann", {"a1": False, "a2": False, "a9": True}, profile_version=4)  # a later evaluation
    batch = changes.batch()
    with measure() as usage:
        assert route(batch) == {"batchItemFailures": []}
    # Then one entry for the evaluation: one PutEvents, one log read, one commit (log item + counters)
    assert usage.count("events", "PutEvents") == 1 and usage.count("dynamodb") == 2
    (event,) = bus.received()
    assert event["detail-type"] == "Audience Memberships Changed"
    detail = event["detail"]
    assert {k: detail[k] for k in ("space", "profile_id", "user_id", "anonymous_id", "email", "profile_version")} == {
        "space": "acme", "profile_id": "ann", "user_id": "42", "anonymous_id": None, "email": "ann@example.com",
        "profile_version": 4}
    stored = membership.current_one("acme", "ann", "a9")
    assert detail["entered"] == [{"audience_key": "a9", "version": 1, "timestamp": stored.entered_at}]
    assert sorted((e["audience_key"], e["version"]) for e in detail["exited"]) == [("a1", 2), ("a2", 2)]
    assert detail["timestamp"] == stored.entered_at
    # And sizes are exact; a replay of both batches publishes and counts nothing
    assert [store.size("acme", k) for k in ("a1", "a2", "a3", "a9")] == [1, 1, 1, 1]
    route(batch)
    assert bus.received() == [] and [store.size("acme", k) for k in ("a1", "a2", "a3", "a9")] == [1, 1, 1, 1]


@grouped
def test_a_refused_evaluation_entry_fails_all_of_its_records_and_only_them(changes, engine, monkeypatch):
    bus = Bus(engine)
    for name in ("ann", "bob", "cid"):
        make_profile(name)
        evaluate(name, {k: True for k in AUDIENCES}, profile_version=1)
    batch = changes.batch()
    # When EventBridge refuses bob's entry (his 5 changes), accepting ann's and cid's in the same call
    with monkeypatch.context() as patched:
        failing_for("bob", patched)
        response = route(batch)
    # Then exactly bob's 5 records are batch item failures; ann's and cid's changes are on the bus, counted
    assert failures(response) == sequences(batch, "bob")
    assert sorted({p for _, p, _ in published(bus)}) == ["ann", "cid"] and store.size("acme", "a1") == 2
    # When Lambda retries from the lowest failed record on
    ordered = [r["dynamodb"]["SequenceNumber"] for r in batch["Records"]]
    start = min(ordered.index(s) for s in sequences(batch, "bob"))
    assert route({"Records": batch["Records"][start:]}) == {"batchItemFailures": []}
    # Then bob's evaluation is published once, in one entry, and cid's is not again
    (event,) = bus.received()
    assert event["detail"]["profile_id"] == "bob" and len(event["detail"]["entered"]) == 5
    route(batch)
    assert bus.received() == [] and [store.size("acme", k) for k in AUDIENCES] == [3] * 5


@grouped
def test_a_split_evaluation_fails_only_the_records_of_its_refused_entry(changes, engine, monkeypatch):
    bus = Bus(engine)
    make_profile("ann")
    evaluate("ann", {k: True for k in AUDIENCES}, profile_version=1)
    batch = changes.batch()
    # Given entries small enough that the evaluation is split (about two changes an entry)
    client = router._events_client()
    real = client.put_events
    sent: list[list[str]] = []

    def refuse_a3(Entries):
        sent.extend([e["audience_key"] for e in json.loads(x["Detail"])["entered"]] for x in Entries)
        refused = ['"a3"' in e["Detail"] for e in Entries]
        result = real(Entries=[e for e, no in zip(Entries, refused, strict=True) if not no])
        accepted = iter(result["Entries"])
        return {**result, "FailedEntryCount": sum(refused),
                "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "simulated"} if no else next(accepted)
                            for no in refused]}

    with monkeypatch.context() as patched:
        patched.setattr(shapes, "MAX_BYTES_PER_ENTRY", 420)
        patched.setattr(client, "put_events", refuse_a3)
        response = route(batch)
    assert len(sent) >= 3 and sorted(k for keys in sent for k in keys) == AUDIENCES
    # Then the records of a3's entry, and only them, fail; the other entries' changes are published and counted
    with_a3 = next(keys for keys in sent if "a3" in keys)
    assert failures(response) == sequences(batch, "ann", with_a3)
    assert sorted(k for _, _, k in published(bus)) == sorted(set(AUDIENCES) - set(with_a3))
    # And the retry publishes only them; a replay nothing; each size is 1
    route(batch)
    assert sorted(k for _, _, k in published(bus)) == sorted(with_a3)
    route(batch)
    assert bus.received() == [] and [store.size("acme", k) for k in AUDIENCES] == [1] * 5


@grouped
def test_a_redelivered_evaluation_carries_only_its_changes_not_yet_recorded(changes, engine):
    bus = Bus(engine)
    make_profile("ann")
    evaluate("ann", {k: True for k in AUDIENCES}, profile_version=1)
    batch = changes.batch()
    # Given a bisected batch: the first two records of the evaluation were routed (published, recorded)
    route({"Records": batch["Records"][:2]})
    first = bus.received()
    assert len(first) == 1 and len(first[0]["detail"]["entered"]) == 2
    # When the whole batch is delivered
    with measure() as usage:
        assert route(batch) == {"batchItemFailures": []}
    # Then one entry carries the three other changes; every change published once, counted once
    (event,) = bus.received()
    assert usage.count("events", "PutEvents") == 1
    assert sorted(e["audience_key"] for e in first[0]["detail"]["entered"] + event["detail"]["entered"]) == AUDIENCES
    assert [store.size("acme", k) for k in AUDIENCES] == [1] * 5


@grouped
def test_an_uncommitted_evaluation_is_published_again_and_counted_once(changes, engine, monkeypatch):
    bus = Bus(engine)
    make_profile("ann")
    evaluate("ann", {k: True for k in AUDIENCES}, profile_version=1)
    batch = changes.batch()

    def lost(self, changes):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "simulated"}}, "TransactWriteItems")

    with monkeypatch.context() as patched:
        patched.setattr(router.PublicationLog, "commit", lost)
        assert failures(route(batch)) == sequences(batch, "ann")
    assert len(bus.received()) == 1 and store.size("acme", "a1") == 0
    route(batch)
    route(batch)
    (again,) = bus.received()  # at least once: published a second time, whole; counted once
    assert len(again["detail"]["entered"]) == 5 and [store.size("acme", k) for k in AUDIENCES] == [1] * 5


def test_a_clean_batch_logs_its_routed_line_at_debug_not_info(changes, engine, caplog):
    # A line per batch was a third of the router's log bytes (CloudWatch bills each): on a clean run it is
    # DEBUG, a WARNING only when something was refused or left uncommitted. Set back to INFO, this fails.
    import logging

    make_profile("p1", ids={"user_id": "1"})
    enter("p1", "vip")
    with caplog.at_level(logging.DEBUG, logger="engage"):
        assert route(changes.batch()) == {"batchItemFailures": []}
    levels = [r.levelno for r in caplog.records if r.getMessage() == "routed"]
    assert levels == [logging.DEBUG], [(r.levelname, r.getMessage()) for r in caplog.records]
