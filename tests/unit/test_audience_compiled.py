"""The compiled evaluator's specialised closures (trait compared with a string, windowed counts
over daily_counts, and/or of one, two or more children) answer exactly like the plain reading
of the rules in docs/audiences.md, written out below as a small interpreter over the same
ProfileView: on generated definitions and profiles (mixed value types, missing traits, dotted
paths, day keys on and around window edges, keys that are not days), and on named edge cases.

test_audience_properties.py holds the same evaluator to the reference over raw events; this file
covers what that one cannot build from events (odd trait types, odd bucket keys, Decimal counts).
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.audiences import ProfileView, evaluate, next_change_at, parse_definition
from engage.audiences.aggregates import DAY_MS, day_key, key_day, lookup, to_ms
from engage.audiences.evaluator import compare
from tests.unit.audience_profiles import T0

TODAY = to_ms(T0) // DAY_MS
COUNT_OPS = {"gte": int.__ge__, "gt": int.__gt__, "eq": int.__eq__, "lte": int.__le__, "lt": int.__lt__}


# --- the rules, read plainly -----------------------------------------------------------


def interpret(cond: dict, view: ProfileView, now_ms: int, memberships: dict) -> bool:
    if "all" in cond:
        return all(interpret(c, view, now_ms, memberships) for c in cond["all"])
    if "any" in cond:
        return any(interpret(c, view, now_ms, memberships) for c in cond["any"])
    if "not" in cond:
        return not interpret(cond["not"], view, now_ms, memberships)
    if "trait" in cond:
        return compare(cond["op"], lookup(view.traits, cond["trait"]), cond.get("value"), now_ms)
    if "computed_trait" in cond:
        return compare(cond["op"], lookup(view.computed_traits, cond["computed_trait"]), cond.get("value"), now_ms)
    if "audience" in cond:
        return bool(memberships.get(cond["audience"]))
    count_spec = cond.get("count", {"op": "gte", "value": 1})
    window = cond.get("window")
    if window is None:
        count = int((view.event_stats.get(cond["event"]) or {}).get("total", 0))
    else:
        lo, hi = window.get("between_days", [0, window.get("within_days")])
        today = now_ms // DAY_MS
        count = int(sum(n for key, n in (view.daily_counts.get(cond["event"]) or {}).items()
                        if (day := key_day(key)) is not None and lo <= today - day < hi))
    return COUNT_OPS[count_spec["op"]](count, count_spec["value"])


# --- generated definitions and profiles ------------------------------------------------

trait_values = st.one_of(
    st.sampled_from(["pro", "free", "3", "2.5", "", "PRO", "true"]),
    st.integers(-1, 5), st.sampled_from([2.5, 3.0, Decimal(3), Decimal("2.5")]),
    st.booleans(), st.lists(st.sampled_from(["pro", "free", 3]), max_size=2),
    st.just({"b": "pro"}))
paths = st.sampled_from(["plan", "plan", "plan", "a.b", "x.y", "missing"])


@st.composite
def trait_conditions(draw) -> dict:
    op = draw(st.sampled_from(["eq", "eq", "eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "contains",
                               "exists", "not_exists"]))
    cond = {draw(st.sampled_from(["trait", "trait", "computed_trait"])): draw(paths), "op": op}
    if op in ("gt", "gte", "lt", "lte"):
        cond["value"] = draw(st.integers(0, 4))
    elif op in ("in", "not_in"):
        cond["value"] = draw(st.lists(st.sampled_from(["pro", "3", 3]), min_size=1, max_size=2))
    elif op in ("eq", "neq"):
        cond["value"] = draw(st.one_of(st.sampled_from(["pro", "3", "2.5", "true", ""]), st.integers(0, 3),
                                       st.booleans()))
    elif op == "contains":
        cond["value"] = draw(st.sampled_from(["pr", "o"]))
    return cond


# short windows and recent days often, so that buckets land on the edges
windows = st.one_of(
    st.none(),
    st.builds(lambda n: {"within_days": n}, st.one_of(st.integers(1, 4), st.integers(1, 40))),
    st.builds(lambda a, b: {"between_days": [a, a + b]}, st.integers(0, 4), st.integers(1, 4)),
    st.builds(lambda a, b: {"between_days": [a, a + b]}, st.integers(0, 10), st.integers(1, 30)))


@st.composite
def count_conditions(draw) -> dict:
    cond = {"event": draw(st.sampled_from(["A", "B"])),
            "count": {"op": draw(st.sampled_from(list(COUNT_OPS))), "value": draw(st.integers(0, 4))}}
    window = draw(windows)
    if window:
        cond["window"] = window
    return cond


leaves = st.one_of(trait_conditions(), count_conditions(), count_conditions(),
                   st.builds(lambda key: {"audience": key}, st.sampled_from(["x", "y"])))
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda item: {"not": item}, inner)),
    max_leaves=6)

# day keys on both sides of every window edge, plus keys that are not (canonical) days
day_keys = st.one_of(st.one_of(st.integers(-2, 8), st.integers(-3, 45)).map(lambda ago: day_key(TODAY - ago)),
                     st.sampled_from([day_key(TODAY) + "x", "not-a-day", "20261399", "2026-03-10"]))
counts = st.one_of(st.integers(0, 3), st.integers(1, 2).map(Decimal))


@st.composite
def views(draw) -> ProfileView:
    traits = draw(st.dictionaries(st.sampled_from(["a", "a.b", "x"]), trait_values, max_size=2))
    if draw(st.integers(0, 4)):
        traits["plan"] = draw(trait_values)
    if "a" in traits and draw(st.booleans()):
        traits["a"] = {"b": draw(trait_values)}  # a nested value for the dotted path
    daily = {event: draw(st.dictionaries(day_keys, counts, max_size=6)) for event in ("A", "B")
             if draw(st.booleans())}
    stats = {event: {"total": draw(st.integers(0, 5))} for event in ("A", "B") if draw(st.booleans())}
    return ProfileView(traits=traits, computed_traits=dict(traits), daily_counts=daily, event_stats=stats)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=conditions, view=views(),
       memberships=st.one_of(st.none(), st.dictionaries(st.sampled_from(["x", "y"]), st.booleans())),
       minutes=st.one_of(st.just(0), st.integers(0, 3 * 24 * 60)))
def test_compiled_evaluation_equals_the_plain_reading(condition, view, memberships, minutes):
    definition = parse_definition({"key": "a", "name": "A", "condition": condition})
    now = T0 + timedelta(minutes=minutes)
    expected = interpret(condition, view, to_ms(now), memberships or {})
    assert evaluate(definition, view, now, memberships) is expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=conditions, view=views(), minutes=st.integers(0, 3 * 24 * 60))
def test_next_change_at_is_the_first_flip_of_the_plain_reading(condition, view, minutes):
    # daily counts and traits change answers only at UTC midnights: check each of the next 46
    definition = parse_definition({"key": "a", "name": "A", "condition": condition})
    now = T0 + timedelta(minutes=minutes)
    current = interpret(condition, view, to_ms(now), {})
    first_midnight = (to_ms(now) // DAY_MS + 1) * DAY_MS
    flips = [day for day in range(first_midnight, first_midnight + 46 * DAY_MS, DAY_MS)
             if interpret(condition, view, day, {}) != current]
    moment = next_change_at(definition, view, now)
    assert (None if moment is None else to_ms(moment)) == (flips[0] if flips else None)


# --- named edge cases ------------------------------------------------------------------


def _audience(condition: dict):
    return parse_definition({"key": "a", "name": "A", "condition": condition})


BUYERS = {"event": "Order", "count": {"op": "gte", "value": 1}, "window": {"within_days": 30}}


@pytest.mark.parametrize(("key", "expected"), [
    (day_key(TODAY), True),
    (day_key(TODAY - 29), True),  # the oldest day inside "within 30 days"
    (day_key(TODAY - 30), False),
    (day_key(TODAY + 1), False),  # a day after `now` is not in a window that ends today
    (day_key(TODAY) + "x", True),  # read as its first 8 characters, like the aggregates do
    ("2026-03-10", False),  # not a day key: never counted
    ("20260230", False),
])
def test_a_daily_count_is_in_the_window_by_its_utc_day(key, expected):
    view = ProfileView(daily_counts={"Order": {key: Decimal(1)}})
    assert evaluate(_audience(BUYERS), view, T0) is expected


def test_between_days_counts_from_lo_up_to_but_not_including_hi():
    cond = {"event": "Order", "count": {"op": "eq", "value": 2}, "window": {"between_days": [7, 14]}}
    keys = {day_key(TODAY - ago): 1 for ago in (6, 7, 13, 14)}
    assert evaluate(_audience(cond), ProfileView(daily_counts={"Order": keys}), T0) is True


def test_decimal_counts_from_dynamodb_are_summed_as_numbers():
    cond = {"event": "Order", "count": {"op": "eq", "value": 3}, "window": {"within_days": 30}}
    view = ProfileView(daily_counts={"Order": {day_key(TODAY): Decimal(2), day_key(TODAY - 1): Decimal(1)}})
    assert evaluate(_audience(cond), view, T0) is True


@pytest.mark.parametrize(("count_op", "value", "expected"), [
    ("gte", 0, True), ("gt", 0, False), ("eq", 0, True), ("lte", 0, True), ("lt", 1, True), ("lt", 0, False)])
def test_a_profile_with_no_buckets_counts_zero(count_op, value, expected):
    cond = {"event": "Order", "count": {"op": count_op, "value": value}, "window": {"within_days": 30}}
    assert evaluate(_audience(cond), ProfileView(), T0) is expected


@pytest.mark.parametrize(("trait", "expected"), [
    ("pro", True), ("PRO", False), (None, False), (["free", "pro"], True), (["free"], False),
    (3, False), (True, False), ({"b": "pro"}, False)])
def test_trait_equals_a_string(trait, expected):
    view = ProfileView(traits={} if trait is None else {"plan": trait})
    assert evaluate(_audience({"trait": "plan", "op": "eq", "value": "pro"}), view, T0) is expected


def test_a_number_trait_equals_the_string_that_spells_it():
    definition = _audience({"trait": "logins", "op": "eq", "value": "3"})
    assert evaluate(definition, ProfileView(traits={"logins": Decimal(3)}), T0) is True
    assert evaluate(definition, ProfileView(traits={"logins": 3.5}), T0) is False


def test_a_dotted_path_reads_a_literal_key_first_then_nested_objects():
    definition = _audience({"trait": "address.city", "op": "eq", "value": "Paris"})
    assert evaluate(definition, ProfileView(traits={"address": {"city": "Paris"}}), T0) is True
    assert evaluate(definition, ProfileView(traits={"address.city": "Paris", "address": {"city": "Rome"}}),
                    T0) is True
    assert evaluate(definition, ProfileView(traits={"address": "Paris"}), T0) is False


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_all_any_and_not_of_one_to_five_children(size):
    # Given children of which only the last holds
    children = [{"trait": "plan", "op": "eq", "value": f"v{i}"} for i in range(size)]
    view = ProfileView(traits={"plan": f"v{size - 1}"})
    # Then `any` holds, `all` holds only with one child, and `not` turns both
    assert evaluate(_audience({"any": children}), view, T0) is True
    assert evaluate(_audience({"all": children}), view, T0) is (size == 1)
    assert evaluate(_audience({"not": {"all": children}}), view, T0) is (size != 1)
    assert evaluate(_audience({"not": {"any": children}}), view, T0) is False


def test_an_audience_of_audiences_reads_the_memberships_passed_in():
    definition = _audience({"all": [{"audience": "x"}, {"not": {"audience": "y"}}]})
    assert evaluate(definition, ProfileView(), T0, {"x": True}) is True
    assert evaluate(definition, ProfileView(), T0, {"x": True, "y": True}) is False
    assert evaluate(definition, ProfileView(), T0) is False
    assert evaluate(_audience({"not": {"audience": "x"}}), ProfileView(), T0, None) is True


def test_each_definition_object_keeps_its_own_compiled_evaluator():
    # Given two definitions evaluated alternately on the same profile
    pro = _audience({"trait": "plan", "op": "eq", "value": "pro"})
    free = _audience({"trait": "plan", "op": "eq", "value": "free"})
    view = ProfileView(traits={"plan": "pro"})
    # Then each answers for itself, every time
    assert [evaluate(d, view, T0) for d in (pro, free, pro, free)] == [True, False, True, False]
