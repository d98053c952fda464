"""Dependencies of a definition and the index that routes a profile change to audiences."""
from __future__ import annotations

from engage.audiences import AudienceIndex, apply_event, dependencies, parse_definition
from engage.audiences.aggregates import build_condition_state, drop_unused, merge_condition_state
from tests.unit.audience_profiles import at, page, track


def _def(key: str, condition: dict | None, **fields):
    body = {"key": key, "name": key, **fields}
    if condition is not None:
        body["condition"] = condition
    return parse_definition(body)


def test_dependencies_of_every_form():
    definition = _def("d", {"all": [
        {"trait": "address.city", "op": "eq", "value": "Y"},
        {"computed_trait": "ltv", "op": "gt", "value": 1},
        {"event": "Order Completed", "where": [{"property": "sku", "op": "eq", "ref": {"trait": "fav_sku"}}]},
        {"not": {"funnel": [{"event": "A"}, {"event": "B", "performed": False}]}},
        {"any": [{"audience": "vips"}, {"subscribed": "email"}]}]})
    deps = dependencies(definition)
    assert deps.events == {"Order Completed", "A", "B"}
    assert deps.traits == {"address.city", "address", "fav_sku"}
    assert deps.computed_traits == {"ltv"} and deps.audiences == {"vips"} and deps.subscriptions == {"email"}
    assert deps.time_based is False and deps.users is None


def test_time_based_forms():
    timed = [
        {"event": "A", "window": {"within_days": 3}},
        {"funnel": [{"event": "A"}, {"event": "B"}], "window": {"within_hours": 3}},
        {"funnel": [{"event": "A"}, {"event": "B", "within_hours": 2, "performed": False}]},
        {"trait": "signup", "op": "within_last_days", "value": 3},
        {"event": "A", "where": [{"property": "at", "op": "within_last_days", "value": 2}]},
    ]
    for condition in timed:
        assert dependencies(_def("d", condition)).time_based is True, condition
    assert dependencies(_def("d", {"trait": "signup", "op": "before", "value": "2026-01-01"})).time_based is False


def test_users_dependencies_are_kept_apart():
    definition = _def("acc", {"all": [{"trait": "tier", "op": "eq", "value": "business"},
                                      {"users": "none", "condition": {"event": "Login",
                                                                      "window": {"within_days": 30}}}]},
                      entity="accounts")
    deps = dependencies(definition)
    assert deps.traits == {"tier"} and deps.events == set()
    assert deps.users.events == {"Login"} and deps.time_based is True
    index = AudienceIndex([definition])
    assert [d.key for d in index.affected_accounts(changed_events=["Login"])] == ["acc"]
    assert index.affected(changed_events=["Login"]) == []


def test_affected_returns_only_what_a_change_touches_inner_audiences_first():
    # Given c references b, b references a, and unrelated audiences
    a = _def("a", {"event": "Order Completed"})
    b = _def("b", {"all": [{"audience": "a"}, {"trait": "plan", "op": "eq", "value": "pro"}]})
    c = _def("c", {"not": {"audience": "b"}})
    others = [_def(f"other_{i}", {"event": f"Event {i}"}) for i in range(200)]
    index = AudienceIndex([c, *others, b, a])
    # When an order arrives / Then a, then b, then c are re-evaluated, nothing else
    assert [d.key for d in index.affected(changed_events=["Order Completed"])] == ["a", "b", "c"]
    assert [d.key for d in index.affected(changed_traits=["plan"])] == ["b", "c"]
    assert [d.key for d in index.affected(changed_audiences=["b"])] == ["c"]
    assert [d.key for d in index.affected(changed_events=["Event 7"])] == ["other_7"]
    assert index.affected(changed_events=["Never Defined"], changed_traits=["nobody"]) == []
    assert index.order.index("a") < index.order.index("b") < index.order.index("c")


def test_affected_filters_by_entity_and_adds_time_based_for_the_sweeper():
    users = _def("u", {"event": "Login", "window": {"within_days": 7}})
    accounts = _def("acc", {"trait": "tier", "op": "eq", "value": "x"}, entity="accounts")
    index = AudienceIndex([users, accounts])
    assert [d.key for d in index.affected(time=True)] == ["u"]
    assert index.affected(changed_traits=["tier"], entity="users") == []
    assert [d.key for d in index.affected(changed_traits=["tier"], entity="accounts")] == ["acc"]


def test_apply_event_touches_only_conditions_on_that_event_and_is_pure():
    viewed = _def("viewed", {"event": "Page Viewed", "where": [{"property": "offer", "op": "eq", "value": "v"}],
                             "window": {"within_days": 7}})
    plain = _def("plain", {"event": "Login", "window": {"within_days": 7}})  # daily_counts answer it
    index = AudienceIndex([viewed, plain])
    assert index.aggregates_for_event("Login") == []
    state: dict = {}
    after = apply_event(state, page(at(), {"offer": "v"}), index)
    assert state == {} and len(after) == 1
    assert next(iter(after.values()))["d"] == {"20260310": 1}
    assert apply_event(after, track("Login", at()), index) is after
    assert apply_event(after, page(at(), {"offer": "other"}), index) == after


def test_editing_one_audience_keeps_the_state_of_the_others():
    one = _def("one", {"event": "A", "where": [{"property": "p", "op": "eq", "value": 1}], "window": {"within_days": 3}})
    two = _def("two", {"event": "A", "where": [{"property": "p", "op": "eq", "value": 2}], "window": {"within_days": 3}})
    index = AudienceIndex([one, two])
    state = apply_event(apply_event({}, track("A", at(), {"p": 1}), index), track("A", at(), {"p": 2}), index)
    edited = _def("two", {"event": "A", "where": [{"property": "p", "op": "eq", "value": 3}],
                          "window": {"within_days": 3}})
    new_index = AudienceIndex([one, edited])
    kept = drop_unused(state, new_index)
    assert len(kept) == 1 and kept == {k: v for k, v in state.items() if k in new_index.aggregate_ids}
    # the edited condition's state is rebuilt from history (backfill)
    history = [track("A", at(days=-1), {"p": 3}), track("A", at(), {"p": 1})]
    rebuilt = build_condition_state(history, new_index, only=new_index.aggregate_ids - kept.keys(), state=kept)
    assert kept.items() <= rebuilt.items() and len(rebuilt) == 2


def test_merging_two_profiles_sums_buckets_and_unites_records():
    counted = _def("counted", {"event": "A", "where": [{"property": "p", "op": "exists"}],
                               "window": {"within_days": 3}})
    funnel = _def("funnel", {"funnel": [{"event": "A"}, {"event": "B", "performed": False}]})
    index = AudienceIndex([counted, funnel])
    recent_a, b_event, old_a = track("A", at(hours=-1), {"p": 1}), track("B", at(), {}), track("A", at(days=-1), {"p": 2})
    left = apply_event(apply_event({}, recent_a, index), b_event, index)
    right = apply_event(apply_event({}, old_a, index), track("A", at(days=-1, hours=1), {"p": 3}), index)
    merged = merge_condition_state(left, right)
    by_kind = {("r" if "r" in v else "d"): v for v in merged.values()}
    assert by_kind["d"]["d"] == {"20260310": 1, "20260309": 2}
    ids = [r[1] for r in by_kind["r"]["r"]]
    assert ids[0] == old_a["messageId"] and ids[-2:] == [recent_a["messageId"], b_event["messageId"]]
    assert merge_condition_state(merged, {}) == merged


def test_kept_event_properties_are_storable_in_dynamodb():
    from boto3.dynamodb.types import TypeSerializer

    definition = _def("d", {"funnel": [{"event": "A", "where": [{"property": "price", "op": "gt", "value": 1}]},
                                       {"event": "B", "performed": False}]})
    index = AudienceIndex([definition])
    state = apply_event({}, track("A", at(), {"price": 19.99, "meta": {"ratio": 0.5}}), index)
    TypeSerializer().serialize(state)  # raises on floats
    profile_view_price = next(iter(state.values()))["r"][0][3]["price"]
    assert float(profile_view_price) == 19.99
