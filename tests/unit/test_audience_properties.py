"""Property tests: the incremental path (daily_counts + condition_state, updated one event at
a time in any arrival order) answers exactly like the reference evaluator over the raw
events, for random definitions of the whole language at random moments; and next_change_at
names the first moment the answer flips."""
from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage import clock
from engage.audiences import evaluate, evaluate_from_scratch, next_change_at, parse_definition
from engage.audiences.evaluator import _in_window, _scratch_filter, _scratch_profile
from tests.unit.audience_profiles import T0, Profile

EVENTS = ["A", "B"]
MS = timedelta(milliseconds=1)

scalar_values = st.one_of(st.integers(0, 4), st.sampled_from(["x", "y", "z", "1", "3"]))


def _moment(hours_ago: int) -> str:
    return clock.iso(T0 - timedelta(hours=hours_ago))


@st.composite
def filters(draw, step: int | None = None) -> dict:
    prop = draw(st.sampled_from(["p", "s", "d", "missing"]))
    if step and draw(st.booleans()):
        return {"property": prop, "op": draw(st.sampled_from(["eq", "neq", "gt", "lt"])),
                "ref": {"step": draw(st.integers(0, step - 1)), "property": draw(st.sampled_from(["p", "s"]))}}
    if draw(st.integers(0, 5)) == 0:
        return {"property": prop, "op": draw(st.sampled_from(["eq", "neq", "gte"])),
                "ref": {"trait": draw(st.sampled_from(["t", "s", "none"]))}}
    op = draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "contains", "not_contains",
                               "starts_with", "ends_with", "exists", "not_exists", "in", "not_in",
                               "before", "after", "within_last_days"]))
    if op in ("exists", "not_exists"):
        return {"property": prop, "op": op}
    if op in ("eq", "neq"):
        value = draw(scalar_values)
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.integers(0, 4))
    elif op in ("in", "not_in"):
        value = draw(st.lists(scalar_values, min_size=1, max_size=3))
    elif op in ("before", "after"):
        value = _moment(draw(st.integers(0, 60 * 24)))
    elif op == "within_last_days":
        value = draw(st.integers(1, 20))
    else:
        value = draw(st.sampled_from(["x", "y", "1"]))
    return {"property": prop, "op": op, "value": value}


windows = st.one_of(
    st.none(),
    st.builds(lambda n: {"within_days": n}, st.one_of(st.integers(1, 4), st.integers(1, 40))),
    st.builds(lambda n: {"within_hours": n}, st.one_of(st.integers(1, 12), st.integers(1, 96))),
    st.builds(lambda a, b: {"between_days": [a, a + b]}, st.integers(0, 30), st.integers(1, 30)),
    st.builds(lambda a, b: {"between_days": [a, a + b]}, st.integers(0, 3), st.integers(1, 3)),
)


@st.composite
def event_conditions(draw) -> dict:
    cond = {"event": draw(st.sampled_from(EVENTS)),
            "count": {"op": draw(st.sampled_from(["gte", "gt", "eq", "lte", "lt"])), "value": draw(st.integers(0, 3))}}
    where = draw(st.lists(filters(), max_size=1))
    if where:
        cond["where"] = where
    window = draw(windows)
    if window:
        cond["window"] = window
    return cond


@st.composite
def funnels(draw) -> dict:
    size = draw(st.integers(2, 3))
    steps = []
    for i in range(size):
        step = {"event": draw(st.sampled_from(EVENTS))}
        where = draw(st.lists(filters(step=i), max_size=1))
        if where:
            step["where"] = where
        if i and draw(st.booleans()):
            step["within_hours"] = draw(st.one_of(st.integers(1, 72), st.sampled_from([12, 24, 36, 72])))
        steps.append(step)
    if draw(st.booleans()):
        steps[-1]["performed"] = False
    cond = {"funnel": steps}
    window = draw(windows)
    if window:
        cond["window"] = window
    return cond


@st.composite
def trait_conditions(draw) -> dict:
    flt = draw(filters())
    flt.pop("ref", None)
    if "value" not in flt and flt["op"] not in ("exists", "not_exists"):
        flt["value"] = 1 if flt["op"] in ("gt", "gte", "lt", "lte") else "x"
    if flt["op"] in ("contains", "not_contains", "starts_with", "ends_with") and not isinstance(flt["value"], str):
        flt["value"] = "x"
    return {"trait": draw(st.sampled_from(["t", "s", "d", "missing"])), "op": flt["op"],
            **({"value": flt["value"]} if "value" in flt else {})}


leaves = st.one_of(event_conditions(), event_conditions(), funnels(), trait_conditions())
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner)),
    max_leaves=4)


@st.composite
def messages(draw) -> list[dict]:
    count = draw(st.integers(0, 20))
    out = []
    for i in range(count):
        # half-day steps make equal timestamps and exact step/window distances likely
        hours_ago = draw(st.one_of(st.integers(0, 72), st.integers(0, 20).map(lambda n: n * 12),
                                   st.integers(0, 60 * 24)))
        properties = {}
        for name, strategy in (("p", st.integers(0, 4)), ("s", st.sampled_from(["x", "y", "xy", "1"])),
                               ("d", st.integers(0, 60 * 24).map(_moment))):
            if draw(st.booleans()):
                properties[name] = draw(strategy)
        out.append({"type": draw(st.sampled_from(["track", "track", "page"])), "event": draw(st.sampled_from(EVENTS)),
                    # whole hours make equal timestamps likely: order then falls to messageId
                    "timestamp": clock.iso(T0 - timedelta(hours=hours_ago)),
                    "messageId": f"m{draw(st.integers(0, 10**6)):07d}-{i}", "properties": properties})
    return out


traits = st.fixed_dictionaries({}, optional={
    "t": st.one_of(st.integers(0, 4), st.just("2")),
    "s": st.sampled_from(["x", "y", "xy"]),
    "d": st.integers(0, 60 * 24).map(_moment),
})


def _profile(definition, events: list[dict], profile_traits: dict) -> Profile:
    profile = Profile([definition], profile_traits)
    for message in events:
        if message["type"] == "page":
            message = {k: v for k, v in message.items() if k != "event"}
        profile.send(message)
    return profile


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=conditions, events=messages(), profile_traits=traits,
       later=st.one_of(st.just(0), st.integers(0, 36 * 60), st.integers(0, 45 * 24 * 60)))
def test_incremental_evaluation_equals_evaluation_from_scratch(condition, events, profile_traits, later):
    # Given a random definition and a profile fed a random history in arrival order
    definition = parse_definition({"key": "random", "name": "random", "condition": condition})
    profile = _profile(definition, events, profile_traits)
    # When both evaluators answer at a random moment after the history
    now = T0 + timedelta(minutes=later)
    incremental = evaluate(definition, profile.view(), now, {})
    reference = evaluate_from_scratch(definition, profile.events, profile_traits, now, {})
    # Then they agree
    assert incremental == reference


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=conditions, events=messages(), profile_traits=traits,
       later=st.integers(0, 10 * 24 * 60), probe=st.floats(0, 1))
def test_next_change_at_is_the_first_flip(condition, events, profile_traits, later, probe):
    definition = parse_definition({"key": "random", "name": "random", "condition": condition})
    profile = _profile(definition, events, profile_traits)
    now = T0 + timedelta(minutes=later)
    current = evaluate_from_scratch(definition, profile.events, profile_traits, now, {})
    moment = next_change_at(definition, profile.view(), now)
    if moment is None:
        # nothing changes: far in the future (past every window) the answer is the same
        assert evaluate_from_scratch(definition, profile.events, profile_traits, now + timedelta(days=400), {}) \
            == current
        return
    # the answer flips exactly at `moment` and not before it
    assert moment > now
    assert evaluate_from_scratch(definition, profile.events, profile_traits, moment, {}) != current
    assert evaluate_from_scratch(definition, profile.events, profile_traits, moment - MS, {}) == current
    between = now + (moment - now) * probe
    if between < moment:
        assert evaluate_from_scratch(definition, profile.events, profile_traits, between, {}) == current


@st.composite
def windowed_counts(draw) -> dict:
    """Event conditions kept in condition_state buckets: a static `where` that usually passes,
    always a window, thresholds near the counts a short history reaches."""
    return {"event": draw(st.sampled_from(EVENTS)),
            "where": [draw(st.sampled_from([{"property": "p", "op": "exists"},
                                            {"property": "p", "op": "lte", "value": 3},
                                            {"property": "s", "op": "neq", "value": "y"}]))],
            "count": {"op": draw(st.sampled_from(["gte", "eq", "lt"])), "value": draw(st.integers(0, 3))},
            "window": draw(windows.filter(lambda w: w is not None))}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=st.one_of(windowed_counts(), windowed_counts(), event_conditions(), funnels()), events=messages(),
       profile_traits=traits,
       later=st.one_of(st.just(0), st.integers(0, 36 * 60), st.integers(0, 10 * 24 * 60)))
def test_single_event_and_funnel_conditions_agree_with_the_reference(condition, events, profile_traits, later):
    # The same property, one leaf at a time: answers near window and step edges are where
    # the aggregates' pruning and bucketing could go wrong.
    definition = parse_definition({"key": "random", "name": "random", "condition": condition})
    profile = _profile(definition, events, profile_traits)
    now = T0 + timedelta(minutes=later)
    assert evaluate(definition, profile.view(), now, {}) == evaluate_from_scratch(
        definition, profile.events, profile_traits, now, {})


def brute_force_funnel(cond, scratch) -> bool:
    """Every ordered choice of events for the performed steps, checked one by one."""
    steps = cond.funnel
    negative = steps[-1] if not steps[-1].performed else None
    positive = steps[:-1] if negative is not None else steps
    events = scratch.events
    hour = 3_600_000
    for chosen in itertools.combinations(range(len(events)), len(positive)):
        bound = tuple(events[i] for i in chosen)
        if not all(
            event[2] == step.event and _in_window(cond.window, event[0], scratch)
            and not (k and step.within_hours is not None and event[0] - bound[k - 1][0] >= step.within_hours * hour)
            and all(_scratch_filter(f, event[3], scratch, bound[:k]) for f in step.where)
            for k, (step, event) in enumerate(zip(positive, bound, strict=True))):
            continue
        if negative is None:
            return True
        deadline = None if negative.within_hours is None else bound[-1][0] + negative.within_hours * hour
        if deadline is not None and scratch.now_ms < deadline:
            continue
        if not any(event[2] == negative.event and (deadline is None or event[0] < deadline)
                   and all(_scratch_filter(f, event[3], scratch, bound) for f in negative.where)
                   for event in events[chosen[-1] + 1:]):
            return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=funnels(), events=messages(), profile_traits=traits,
       later=st.one_of(st.just(0), st.integers(0, 36 * 60), st.integers(0, 10 * 24 * 60)))
def test_funnel_search_agrees_with_brute_force(condition, events, profile_traits, later):
    # The memoized depth-first funnel search against trying every ordered choice of events
    definition = parse_definition({"key": "random", "name": "random", "condition": condition})
    now = T0 + timedelta(minutes=later)
    scratch = _scratch_profile([m if m["type"] == "track" else {k: v for k, v in m.items() if k != "event"}
                                for m in events], profile_traits, None, None, None, now)
    assert evaluate_from_scratch(definition, events, profile_traits, now, {}) == brute_force_funnel(
        definition.condition, scratch)
