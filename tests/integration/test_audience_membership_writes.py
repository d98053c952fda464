"""membership.apply: one profile evaluation's membership changes, each one PutItem conditional on
what was read, replay-safe, and counted once by the router from the stream (moto)."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.meter import measure
from engage.audiences import membership, runtime, store
from engage.db import key
from engage.memberships_store import MembershipRecord
from tests.integration.audience_support import (
    LambdaContext,
    Sizes,
    StreamReader,
    audience_engine,  # noqa: F401 - the `engine` fixture
    call_api,
    handler,
    make_profile,
)

SPACE = "acme"


def puts(usage) -> int:
    return usage.count("dynamodb", "PutItem")


@pytest.fixture
def size(engine):
    return Sizes(engine)


def sizes_of(size, audience_keys) -> set[int]:
    """{size(k) for k in audience_keys}, with the stream routed once: after the first route every later one
    reads the whole stream again to find nothing new (the router writes no memberships)."""
    size.route()
    return {store.size(SPACE, k) for k in audience_keys}


def stored(profile_id: str) -> dict[str, bool]:
    return {r.sk: bool(r.member) for r in MembershipRecord.query(key(SPACE, profile_id), consistent_read=True)}


def members_counted(audience_key: str) -> int:
    """Members of an audience counted item by item (what its size counter must equal)."""
    return sum(1 for r in MembershipRecord.scan(MembershipRecord.audience_pk == key(SPACE, audience_key))
               if r.member)


def trait_audience(audience_key: str, trait: str) -> dict:
    return {"key": audience_key, "name": audience_key, "backfill": False,
            "condition": {"trait": trait, "op": "eq", "value": True}}


def test_every_change_of_one_evaluation_is_one_put_after_one_read(engine, space, size):
    # Given five audiences on five traits and a new profile matching all of them
    for i in range(5):
        assert call_api("POST", "/v1/audiences", trait_audience(f"a{i}", f"t{i}"))[0] == 201
    image = {"space_id": SPACE, "profile_id": "p1", "collection": "users", "version": 1,
             "traits": {f"t{i}": True for i in range(5)}, "external_ids": [{"type": "user_id", "id": "u1"}]}
    affected = runtime.engine(SPACE).everything("users")  # definitions cached as in a warm container
    # When it is evaluated
    with measure() as usage:
        changes, _ = runtime.evaluate_profile(SPACE, image, affected, runtime.clock.now())
    # Then its six entries (five audiences and `all`) were written one PutItem each after one read,
    # no transaction and no counter write (the router counts them from the stream)
    assert sorted(c.audience_key for c in changes) == ["a0", "a1", "a2", "a3", "a4", "all"]
    assert puts(usage) == 6 and usage.count("dynamodb", "Query") == 1
    assert usage.count("dynamodb", "TransactWriteItems") == usage.count("dynamodb", "UpdateItem") == 0
    assert stored("p1") == dict.fromkeys(["a0", "a1", "a2", "a3", "a4", "all"], True)
    assert all(size(c.audience_key) == 1 for c in changes)
    record = MembershipRecord.get(key(SPACE, "p1"), "a3")
    assert record.identity.as_dict() == {"user_id": "u1", "anonymous_id": None, "email": None}
    assert record.profile_version == 1 and record.version == 1


def test_a_hundred_and_twenty_changes_are_each_written_and_counted_once(engine, space, size):
    keys = [f"aud{i:03}" for i in range(120)]
    with measure() as usage:
        changes = membership.apply(SPACE, "p1", dict.fromkeys(keys, True), {}, profile_version=1)
    assert puts(usage) == 120 and usage.count("dynamodb") == 120
    assert sorted(c.audience_key for c in changes) == keys
    assert stored("p1") == dict.fromkeys(keys, True)
    assert sizes_of(size, keys) == {1}
    # And leaving them all moves each counter back once
    with measure() as usage:
        left = membership.apply(SPACE, "p1", dict.fromkeys(keys, False), membership.current(SPACE, "p1"),
                                profile_version=2)
    assert puts(usage) == 120 and len(left) == 120 and sizes_of(size, keys) == {0}


def test_only_differences_are_written(engine, space, size):
    membership.apply(SPACE, "p1", {"a": True, "b": True}, {}, profile_version=1)
    read = membership.current(SPACE, "p1")
    with measure() as usage:
        changes = membership.apply(SPACE, "p1", {"a": True, "b": False, "c": False}, read, profile_version=2)
    # `a` is already in, `c` was never in: only `b` leaves
    assert [(c.audience_key, c.member) for c in changes] == [("b", False)]
    assert puts(usage) == 1
    assert (size("a"), size("b"), size("c")) == (1, 0, 0)
    assert stored("p1") == {"a": True, "b": False}


def test_a_lost_race_rereads_and_retakes_only_the_item_that_lost(engine, space, size, monkeypatch):
    # Given a profile that was in `a` and never in `b` or `c`, read by the evaluator...
    membership.apply(SPACE, "p1", {"a": True}, {}, profile_version=1)
    read = membership.current(SPACE, "p1")
    # ...and another writer that moves `a` out and `b` in before the evaluator writes
    membership.apply(SPACE, "p1", {"a": False, "b": True}, membership.current(SPACE, "p1"), profile_version=2)
    reread: list[list[str]] = []
    original = membership.current_of

    def recording(space_id, profile_id, audience_keys):
        reread.append(list(audience_keys))
        return original(space_id, profile_id, audience_keys)

    monkeypatch.setattr(membership, "current_of", recording)
    # When the evaluator, deciding from its older read, wants `a` out, `b` in and `c` in
    with measure() as usage:
        changes = membership.apply(SPACE, "p1", {"a": False, "b": True, "c": True}, read, profile_version=3)
    # Then `a` moved and `b` appeared since the read: their puts are refused, only those two items are
    # read again, and nothing is retaken (both are already as wanted); `c` was written by its own put
    assert reread == [["a", "b"]]
    assert puts(usage) == 3
    assert [(c.audience_key, c.member) for c in changes] == [("c", True)]
    assert (size("a"), size("b"), size("c")) == (0, 1, 1)
    assert stored("p1") == {"a": False, "b": True, "c": True}


def test_a_lost_race_on_one_item_leaves_the_others_as_decided(engine, space, size, monkeypatch):
    # Given the evaluator read a profile with no memberships
    read = membership.current(SPACE, "p1")
    # And meanwhile another writer put it in `a` and out again (the item exists now, member false)
    membership.apply(SPACE, "p1", {"a": True}, {}, profile_version=1)
    membership.apply(SPACE, "p1", {"a": False}, membership.current(SPACE, "p1"), profile_version=2)
    reread: list[list[str]] = []
    original = membership.current_of
    monkeypatch.setattr(membership, "current_of",
                        lambda s, p, keys: reread.append(list(keys)) or original(s, p, keys))
    # When the evaluator writes `a`, `b`, `c` in from its read
    changes = membership.apply(SPACE, "p1", {"a": True, "b": True, "c": True}, read, profile_version=3)
    # Then only `a` lost (its item appeared); it is read again and still has to change, so all three
    # are written, `a` conditioned on the version just read
    assert reread == [["a"]]
    assert sorted((c.audience_key, c.member, c.version) for c in changes) == [
        ("a", True, 3), ("b", True, 1), ("c", True, 1)]
    assert {k: size(k) for k in "abc"} == {"a": 1, "b": 1, "c": 1}


def test_a_profile_that_keeps_losing_gives_up_after_its_attempts(engine, space, size):
    membership.apply(SPACE, "p1", {"a": True}, {}, profile_version=1)
    read = membership.current(SPACE, "p1")
    # Another writer put it in `b` and out again since that read
    membership.apply(SPACE, "p1", {"b": True}, membership.current(SPACE, "p1"), profile_version=2)
    membership.apply(SPACE, "p1", {"b": False}, membership.current(SPACE, "p1"), profile_version=3)
    # One attempt: the lost race on `b` is not retaken (the caller decides again from fresh reads);
    # `c`, which nobody moved since the read, stands as written: each change is its own item
    with pytest.raises(RuntimeError, match="kept changing"):
        membership.apply(SPACE, "p1", {"b": True, "c": True}, {**read}, profile_version=4, attempts=1)
    assert stored("p1") == {"a": True, "b": False, "c": True} and (size("b"), size("c")) == (0, 1)


def test_a_stale_image_writes_nothing(engine, space, size):
    membership.apply(SPACE, "p1", {"a": True}, {}, profile_version=5)
    read = membership.current(SPACE, "p1")
    # When a replayed, older image (version 3) decides `a` out
    with measure() as usage:
        changes = membership.apply(SPACE, "p1", {"a": False}, read, profile_version=3)
    # Then nothing is written: the stored membership came from a newer image
    assert changes == [] and sum(usage.requests.values()) == 0
    assert stored("p1") == {"a": True} and size("a") == 1


def test_set_member_is_one_audience_of_apply(engine, space, size):
    change = membership.set_member(SPACE, "p1", "vip", True, None)
    assert change == membership.Change(SPACE, "p1", "vip", True, 1)
    assert membership.set_member(SPACE, "p1", "vip", True, membership.current_one(SPACE, "p1", "vip")) is None
    assert size("vip") == 1


def test_a_replayed_profiles_batch_writes_nothing_and_counts_nothing(engine, space, size):
    for i in range(3):
        assert call_api("POST", "/v1/audiences", trait_audience(f"a{i}", f"t{i}"))[0] == 201
    profiles = StreamReader(engine, "ProfilesTable")
    for n in range(4):
        make_profile(f"p{n}", ids={"user_id": str(n)}, traits={f"t{i}": True for i in range(n % 4)})
    batch = profiles.batch()
    evaluate = handler("audience_evaluator")
    with measure() as first:
        assert evaluate(batch, LambdaContext()) == {"batchItemFailures": []}
    written = puts(first)
    sizes = {k: size(k) for k in ("all", "a0", "a1", "a2")}
    assert sizes == {"all": 4, "a0": 3, "a1": 2, "a2": 1}
    assert written == sum(sizes.values())  # one put per change
    # When the same batch is delivered again
    with measure() as replay:
        assert evaluate(batch, LambdaContext()) == {"batchItemFailures": []}
    # Then nothing is written: no put, no membership stream record, the same sizes
    assert puts(replay) == 0
    assert size.changes.batch()["Records"] == []
    assert {k: size(k) for k in sizes} == sizes


def test_a_merged_profile_leaves_everything_and_its_manual_memberships_move(engine, space, size):
    assert call_api("POST", "/v1/audiences", {"key": "vips", "name": "VIPs", "kind": "manual"})[0] == 201
    runtime.reset()
    membership.apply(SPACE, "loser", {"all": True, "vips": True, "x": True}, {}, profile_version=1)
    membership.apply(SPACE, "winner", {"all": True}, {}, profile_version=1)
    with measure() as usage:
        changes = runtime.leave_all(SPACE, {"space_id": SPACE, "profile_id": "loser", "version": 2,
                                            "merged_into": "winner"})
    # One put moves the manual membership to the survivor, three take the loser out
    assert puts(usage) == 4
    assert sorted((c.profile_id, c.audience_key, c.member) for c in changes) == [
        ("loser", "all", False), ("loser", "vips", False), ("loser", "x", False), ("winner", "vips", True)]
    assert stored("loser") == {"all": False, "vips": False, "x": False}
    assert stored("winner") == {"all": True, "vips": True}
    assert (size("all"), size("vips"), size("x")) == (1, 1, 0)


EXAMPLES = itertools.count(1)
AUDIENCES = ("a", "b", "c", "d")
PROFILES = ("p1", "p2", "p3")
steps = st.lists(st.tuples(st.sampled_from(PROFILES),
                           st.dictionaries(st.sampled_from(AUDIENCES), st.booleans(), min_size=1),
                           st.sampled_from(["fresh", "stale_read", "replay"])),
                 min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_sizes_equal_the_members_after_any_sequence_of_writes(engine, space, size, steps):
    """Fresh decisions, decisions from an outdated read (lost races) and replays of an earlier
    step, in any order: every size is the number of member items, and a replay changes nothing.
    (The moto account is shared by the examples: the invariant holds across them too.)"""
    version = next(EXAMPLES) * 100  # above any version an earlier example wrote
    snapshots = {p: membership.current(SPACE, p) for p in PROFILES}  # outdated reads, taken once
    done: list[tuple[str, dict[str, bool], int]] = []
    for profile_id, decisions, mode in steps:
        if mode == "replay" and done:
            old_profile, old_decisions, old_version = done[len(done) // 2]
            before = stored(old_profile)
            assert membership.apply(SPACE, old_profile, old_decisions, membership.current(SPACE, old_profile),
                                    profile_version=old_version) == []
            assert stored(old_profile) == before
            continue
        version += 1
        if mode == "stale_read":  # what it wants differently from its outdated read is written, once
            membership.apply(SPACE, profile_id, decisions, snapshots[profile_id], profile_version=version)
            continue
        membership.apply(SPACE, profile_id, decisions, membership.current(SPACE, profile_id),
                         profile_version=version)
        done.append((profile_id, decisions, version))
        now = stored(profile_id)
        assert all(now.get(audience_key, False) == member for audience_key, member in decisions.items())
    size.route()
    for audience_key in AUDIENCES:
        assert store.size(SPACE, audience_key) == members_counted(audience_key)


def test_a_transaction_conflict_on_a_counter_is_sent_again_not_failed(engine, space, size, monkeypatch):
    """DynamoDB cancels a transaction that meets another one on the same item (TransactionConflict;
    the router's commits meet on a busy audience's counter shards): nothing read was wrong, so the
    router sends it again instead of failing the stream records."""
    import botocore.client
    from botocore.exceptions import ClientError

    from engage.audiences import router

    assert call_api("POST", "/v1/audiences", trait_audience("a0", "t0"))[0] == 201
    affected = runtime.engine(SPACE).everything("users")
    original = botocore.client.BaseClient._make_api_call
    refused = []

    def conflict_once(client, operation, params):
        if operation == "TransactWriteItems" and not refused:
            refused.append(params)
            reasons = [{"Code": "None"}] * (len(params["TransactItems"]) - 1) + [{"Code": "TransactionConflict"}]
            raise ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                               "CancellationReasons": reasons}, operation)
        return original(client, operation, params)

    image = {"space_id": SPACE, "profile_id": "p1", "collection": "users", "version": 1, "traits": {"t0": True}}
    changes, _ = runtime.evaluate_profile(SPACE, image, affected, runtime.clock.now())
    assert sorted(c.audience_key for c in changes) == ["a0", "all"]
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", conflict_once)
    monkeypatch.setattr(router, "_back_off", lambda attempt: None)
    assert size("a0") == 1 and len(refused) == 1  # routed without a failure despite the conflict
    assert stored("p1") == {"a0": True, "all": True} and size("all") == 1
