"""Profile rules (pure): trait merge, aggregates and pruning, merges, idempotent apply."""
from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from engage import profiles
from engage.profiles import Message, ProfileState

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RETENTION = 30


def msg(message_id: str, timestamp: str, **fields) -> Message:
    raw = {"type": "identify", "userId": "u1", "messageId": message_id, "timestamp": timestamp,
           "receivedAt": timestamp, "context": {}, **fields}
    return Message.from_payload(raw)


def apply(state: ProfileState, message: Message) -> ProfileState:
    return profiles.apply_message(state, message, now=NOW, retention_days=RETENTION)


def fresh(collection: str = "users") -> ProfileState:
    return ProfileState("usr_1", "acme", collection, created_at="2026-11-01T00:00:00.000Z")


# ---------------------------------------------------------------- traits
def test_later_event_wins_per_trait_even_when_it_arrives_first():
    # Given an identify from 10:00 applied after one from 11:00
    late = msg("m2", "2026-11-20T11:00:00.000Z", traits={"plan": "pro"})
    early = msg("m1", "2026-11-20T10:00:00.000Z", traits={"plan": "free", "name": "Ann"})
    state = apply(apply(fresh(), late), early)
    # Then plan keeps the later value and name (only set early) is still taken
    assert state.traits == {"plan": "pro", "name": "Ann"}
    assert state.trait_times["plan"] == "2026-11-20T11:00:00.000Z|m2"


def test_null_trait_is_stored_as_null():
    state = apply(fresh(), msg("m1", "2026-11-20T10:00:00.000Z", traits={"company": "Acme"}))
    state = apply(state, msg("m2", "2026-11-20T10:01:00.000Z", traits={"company": None}))
    assert "company" in state.traits and state.traits["company"] is None


def test_nested_trait_objects_are_replaced_whole_at_top_level():
    state = apply(fresh(), msg("m1", "2026-11-20T10:00:00.000Z", traits={"address": {"city": "Oslo", "zip": "1"}}))
    state = apply(state, msg("m2", "2026-11-20T10:01:00.000Z", traits={"address": {"city": "Bergen"}}))
    assert state.traits["address"] == {"city": "Bergen"}


def test_a_message_is_applied_once():
    track = msg("m1", "2026-11-20T10:00:00.000Z", type="track", event="Order Completed")
    once = apply(fresh(), track)
    assert apply(once, track) == once
    assert once.event_stats["Order Completed"]["total"] == 1


_TRAIT_EVENTS = st.lists(
    st.tuples(st.sampled_from(["plan", "name", "age"]),
              st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3)),
              st.integers(0, 20)),  # minute of the event: collisions exercise the tie-break
    min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(events=_TRAIT_EVENTS, order=st.randoms(use_true_random=False))
def test_order_of_identify_events_never_changes_the_final_traits(events, order):
    # Given identify events (some at the same minute), applied in two different orders
    messages = [msg(f"m{i:02d}", f"2026-11-20T10:{minute:02d}:00.000Z", traits={name: value})
                for i, (name, value, minute) in enumerate(events)]
    shuffled = list(messages)
    order.shuffle(shuffled)
    in_order, out_of_order = fresh(), fresh()
    for message in messages:
        in_order = apply(in_order, message)
    for message in shuffled:
        out_of_order = apply(out_of_order, message)
    # Then both converge, and a replay of everything changes nothing
    assert out_of_order.traits == in_order.traits
    assert out_of_order.trait_times == in_order.trait_times
    replayed = out_of_order
    for message in messages:
        replayed = apply(replayed, message)
    assert replayed == out_of_order


# ---------------------------------------------------------------- aggregates
def test_track_page_and_screen_count_per_utc_day_with_first_last_total():
    state = fresh()
    for i, (kind, ts) in enumerate([("track", "2026-11-20T23:59:59.000Z"), ("track", "2026-11-21T00:00:01.000Z"),
                                    ("page", "2026-11-21T08:00:00.000Z"), ("screen", "2026-11-22T08:00:00.000Z")]):
        extra = {"event": "Order Completed"} if kind == "track" else {"name": "Home"}
        state = apply(state, msg(f"m{i}", ts, type=kind, **extra))
    assert state.daily_counts == {"Order Completed": {"20261120": 1, "20261121": 1},
                                  "Page Viewed": {"20261121": 1}, "Screen Viewed": {"20261122": 1}}
    assert state.event_stats["Order Completed"] == {"first": "2026-11-20T23:59:59.000Z",
                                                    "last": "2026-11-21T00:00:01.000Z", "total": 2}
    assert state.first_message_at == "2026-11-20T23:59:59.000Z"
    assert state.last_message_at == "2026-11-22T08:00:00.000Z"


def test_first_and_last_message_ids_follow_event_time_in_any_delivery_order():
    # Given messages whose event times are not their arrival order (same time for two of them)
    sent = [msg("m2", "2026-11-21T00:00:00.000Z", type="track", event="A"),
            msg("m1", "2026-11-20T00:00:00.000Z", type="track", event="A"),
            msg("m4", "2026-11-22T00:00:00.000Z", type="track", event="A"),
            msg("m3", "2026-11-22T00:00:00.000Z", type="track", event="A")]
    answers = set()
    for order in (sent, sent[::-1], sent[1:] + sent[:1]):
        state = fresh()
        for message in order:
            state = apply(state, message)
        answers.add((state.first_message_at, state.first_message_id,
                     state.last_message_at, state.last_message_id))
    # Then every order gives the earliest and the latest message (ties broken by messageId)
    assert answers == {("2026-11-20T00:00:00.000Z", "m1", "2026-11-22T00:00:00.000Z", "m4")}


def test_a_profile_kept_before_message_ids_keeps_unknown_ids_until_a_message_at_or_past_its_times():
    state = fresh()
    state.first_message_at = "2026-11-19T00:00:00.000Z"  # kept before ids were: no ids stored
    state.last_message_at = "2026-11-20T00:00:00.000Z"
    state = apply(state, msg("m9", "2026-11-20T00:00:00.000Z", type="track", event="A"))
    assert (state.first_message_at, state.first_message_id) == ("2026-11-19T00:00:00.000Z", None)
    assert (state.last_message_at, state.last_message_id) == ("2026-11-20T00:00:00.000Z", "m9")


def test_buckets_past_retention_are_pruned_but_totals_remain():
    # Given a bucket from 40 days ago (retention 30) and an import older than retention
    state = fresh()
    state.daily_counts = {"Login": {"20261014": 3}}
    state.event_stats = {"Login": {"first": "2026-10-14T00:00:00.000Z", "last": "2026-10-14T00:00:00.000Z",
                                   "total": 3}}
    state = apply(state, msg("m1", "2025-01-01T00:00:00.000Z", type="track", event="Login"))
    state = apply(state, msg("m2", "2026-11-22T00:00:00.000Z", type="track", event="Login"))
    # Then only the recent day has a bucket; totals and first/last count everything
    assert state.daily_counts == {"Login": {"20261122": 1}}
    assert state.event_stats["Login"] == {"first": "2025-01-01T00:00:00.000Z", "last": "2026-11-22T00:00:00.000Z",
                                          "total": 5}


def test_aggregates_stay_under_their_size_budget_oldest_days_first():
    counts = {f"Event {n:03d}": {f"202611{d:02d}": 1 for d in range(1, 23)} for n in range(40)}
    pruned = profiles.prune_daily_counts(counts, now=NOW, retention_days=RETENTION, budget_bytes=10_000)
    kept_days = sorted({d for buckets in pruned.values() for d in buckets})
    assert len(str(pruned)) < len(str(counts))
    assert kept_days and kept_days[-1] == "20261122" and "20261101" not in kept_days


def test_identify_and_group_do_not_count_as_events():
    state = apply(fresh(), msg("m1", "2026-11-20T10:00:00.000Z"))
    state = apply(state, msg("m2", "2026-11-20T10:00:00.000Z", type="group", groupId="g1"))
    assert state.daily_counts == {} and state.event_stats == {}


def test_account_profiles_take_group_traits_only():
    account = apply(fresh("accounts"), msg("m1", "2026-11-20T10:00:00.000Z", type="group", groupId="g1",
                                           traits={"name": "Acme"}))
    account = apply(account, msg("m2", "2026-11-20T10:01:00.000Z", type="track", event="Ignored"))
    assert account.traits == {"name": "Acme"} and account.event_stats == {}


# ---------------------------------------------------------------- merges
def test_merge_unions_ids_sums_aggregates_and_keeps_newest_trait_per_name():
    survivor, merged = fresh(), ProfileState("usr_2", "acme", created_at="2026-11-02T00:00:00.000Z")
    survivor = apply(survivor, msg("s1", "2026-11-20T10:00:00.000Z", traits={"plan": "free", "name": "Ann"}))
    survivor = apply(survivor, msg("s2", "2026-11-20T10:00:00.000Z", type="track", event="Login"))
    merged = apply(merged, msg("a1", "2026-11-20T11:00:00.000Z", traits={"plan": "pro"}))
    merged = apply(merged, msg("a2", "2026-11-20T12:00:00.000Z", type="track", event="Login"))
    profiles.add_external_id(survivor, collection="users", id_type="user_id", value="u1", encoding="none",
                             created_at="t", message_id="s1")
    profiles.add_external_id(merged, collection="users", id_type="anonymous_id", value="a1", encoding="none",
                             created_at="t", message_id="a1")
    alias = msg("x1", "2026-11-20T13:00:00.000Z", type="alias", previousId="a1")
    # When the second is merged into the first
    out, gone = profiles.merge_into(survivor, merged, message=alias, merged_at="2026-11-20T13:00:01.000Z",
                                    now=NOW, retention_days=RETENTION)
    # Then traits are newest-per-trait, ids unioned, counts summed, the merge recorded on both sides
    assert out.traits == {"plan": "pro", "name": "Ann"}
    assert {(e["type"], e["id"]) for e in out.external_ids} == {("user_id", "u1"), ("anonymous_id", "a1")}
    assert out.daily_counts == {"Login": {"20261120": 2}}
    assert out.event_stats["Login"] == {"first": "2026-11-20T10:00:00.000Z", "last": "2026-11-20T12:00:00.000Z",
                                        "total": 2}
    assert set(out.applied) == {profiles.applied_token(m) for m in ("s1", "s2", "a1", "a2")}
    assert out.merged_from == ["usr_2"]
    assert out.merges == [{"profile_id": "usr_2", "merged_at": "2026-11-20T13:00:01.000Z", "message_id": "x1",
                           "message_type": "alias", "ids": ["anonymous_id:a1"]}]
    assert gone.merged_into == "usr_1" and gone.traits == merged.traits
    # And the first and last messages are the earliest and latest of either side
    assert (out.first_message_id, out.last_message_id) == ("s1", "a2")
    # And merging the same profile again adds nothing
    again, _ = profiles.merge_into(out, merged, message=alias, merged_at="later", now=NOW, retention_days=RETENTION)
    assert again == out


def test_a_merge_keeps_the_newest_applied_messages_of_both_profiles():
    # Given two busy profiles, each with a full `applied` (500 messages)
    survivor, merged = fresh(), ProfileState("usr_2", "acme", created_at="2026-11-02T00:00:00.000Z")
    for i in range(profiles.APPLIED_LIMIT):
        profiles.mark_applied(survivor, f"s{i}")
        profiles.mark_applied(merged, f"a{i}")
    # When they merge
    out, _ = profiles.merge_into(survivor, merged, message=msg("x1", "2026-11-20T13:00:00.000Z"),
                                 merged_at="2026-11-20T13:00:01.000Z", now=NOW, retention_days=RETENTION)
    # Then the newest of each side are still known (a redelivery of the batch that carried them and the
    # merge applies none of them twice): the survivor's were all pushed out by the merged profile's
    assert len(out.applied) == profiles.APPLIED_LIMIT
    last = profiles.APPLIED_LIMIT - 1
    assert all(out.has_applied(f"s{i}") and out.has_applied(f"a{i}") for i in range(last - 200, last + 1))
    assert out.applied[-2:] == [profiles.applied_token(f"a{last}"), profiles.applied_token(f"s{last}")]


def test_the_oldest_profile_survives():
    older = ProfileState("usr_b", "acme", created_at="2026-01-01T00:00:00.000Z")
    newer = ProfileState("usr_a", "acme", created_at="2026-06-01T00:00:00.000Z")
    assert profiles.choose_survivor([newer, older]) is older


def test_applied_message_ids_stay_bounded():
    state = fresh()
    for i in range(profiles.APPLIED_LIMIT + 10):
        profiles.mark_applied(state, f"m{i}")
    assert len(state.applied) == profiles.APPLIED_LIMIT
    assert state.applied[-1] == profiles.applied_token(f"m{profiles.APPLIED_LIMIT + 9}")
    assert state.has_applied(f"m{profiles.APPLIED_LIMIT + 9}") and state.has_applied("m10")
    assert not state.has_applied("m9")  # the oldest went


def test_applied_keeps_a_short_token_of_each_message_id_and_still_knows_ids_kept_before_tokens():
    state = fresh()
    long_id = "ajs-next-" + "f" * 32  # analytics.js; up to 100 characters are accepted
    profiles.mark_applied(state, long_id)
    profiles.mark_applied(state, "x" * 100)
    assert [len(t) for t in state.applied] == [12, 12] and state.has_applied(long_id)
    assert not state.has_applied("ajs-next-" + "f" * 31 + "e")
    profiles.mark_applied(state, long_id)  # again: nothing added
    assert len(state.applied) == 2
    # a profile written before tokens names its messageIds whole: a replay of one is still skipped
    legacy = fresh()
    legacy.applied = ["m-before-tokens"]
    assert legacy.has_applied("m-before-tokens") and not legacy.has_applied("m-after")


_STAMPED = st.dictionaries(st.sampled_from(["plan", "name", "age", "city"]),
                           st.tuples(st.integers(0, 50), st.one_of(st.none(), st.integers(0, 3))), max_size=4)


@settings(max_examples=150, deadline=None)
@given(a=_STAMPED, b=_STAMPED)
def test_merging_two_profiles_gives_the_same_traits_whichever_survives(a, b):
    # Given two profiles' traits with their stamps (side-tagged so no two stamps are equal)
    def split(side, traits):
        return ({k: v for k, (_, v) in traits.items()},
                {k: f"2026-11-20T10:{m:02d}:00.000Z|{side}" for k, (m, _) in traits.items()})
    (ta, sa), (tb, sb) = split("a", a), split("b", b)
    # When merged one way and the other
    one = profiles.merge_trait_maps(ta, sa, tb, sb)
    other = profiles.merge_trait_maps(tb, sb, ta, sa)
    # Then the result is the same, and each trait has its newest value
    assert one == other
    for name in set(a) | set(b):
        newest = max([s for s in (sa.get(name), sb.get(name)) if s])
        assert one[1][name] == newest
