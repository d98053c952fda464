"""The steps function's pure decisions: time of day in a profile's zone, stable hashing for random splits."""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from engage.journeys.steps import bucket, next_time_of_day, pick_percent, zone_of


def test_next_time_of_day_is_in_the_profiles_zone_and_strictly_later():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday; 07:00 in New York
    moment = next_time_of_day(now, ZoneInfo("America/New_York"), "09:30", None)
    assert moment.astimezone(UTC) == datetime(2026, 11, 30, 14, 30, tzinfo=UTC)
    # already past today in Tokyo (21:00 there): tomorrow
    moment = next_time_of_day(now, ZoneInfo("Asia/Tokyo"), "09:30", None)
    assert moment.astimezone(UTC) == datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    # exactly now is not "until": the next day
    assert next_time_of_day(now, ZoneInfo("UTC"), "12:00", None) == datetime(2026, 12, 1, 12, 0, tzinfo=ZoneInfo("UTC"))


def test_next_time_of_day_keeps_to_the_days_given():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # Monday
    moment = next_time_of_day(now, ZoneInfo("UTC"), "09:00", ["sat", "sun"])
    assert moment.strftime("%a %H:%M") == "Sat 09:00" and moment.date().isoformat() == "2026-12-05"


def test_next_time_of_day_across_a_daylight_saving_change():
    # Europe/Paris leaves summer time on 2026-10-25: 09:00 local is 07:00 UTC before and 08:00 UTC after
    before = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    moment = next_time_of_day(before, ZoneInfo("Europe/Paris"), "09:00", None)
    assert moment.astimezone(UTC) == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)


def test_zone_falls_back_to_the_space_default_then_utc(monkeypatch):
    assert zone_of({"timezone": "Europe/Berlin"}, "timezone").key == "Europe/Berlin"
    assert zone_of({"timezone": "Mars/Olympus"}, "timezone").key == "UTC"
    monkeypatch.setenv("DEFAULT_TIMEZONE", "America/Chicago")
    from engage import config

    config.settings.cache_clear()
    try:
        assert zone_of({}, "timezone").key == "America/Chicago"
    finally:
        monkeypatch.delenv("DEFAULT_TIMEZONE")
        config.settings.cache_clear()


def test_buckets_are_stable_and_spread():
    assert bucket("cart_rescue", "ab", "p1") == bucket("cart_rescue", "ab", "p1")
    assert {bucket("cart_rescue", "ab", f"p{i}") for i in range(50)} != {bucket("cart_rescue", "ab", "p0")}
    branches = [{"percent": 50, "next": "a"}, {"percent": 40, "next": "b"}, {"percent": 10, "next": "c"}]
    picks = Counter(pick_percent(branches, bucket("cart_rescue", "ab", f"profile-{i}")) for i in range(10_000))
    # 10,000 profiles: each share within 2 points of its percent
    assert abs(picks["a"] - 5000) < 200 and abs(picks["b"] - 4000) < 200 and abs(picks["c"] - 1000) < 200


@pytest.mark.parametrize(("value", "expected"), [(0, "a"), (49, "a"), (50, "b"), (89, "b"), (90, "c"), (99, "c")])
def test_pick_percent_edges(value, expected):
    branches = [{"percent": 50, "next": "a"}, {"percent": 40, "next": "b"}, {"percent": 10, "next": "c"}]
    assert pick_percent(branches, value) == expected


def test_a_zero_percent_branch_is_never_picked():
    branches = [{"percent": 0, "next": "never"}, {"percent": 100, "next": "always"}]
    assert {pick_percent(branches, v) for v in range(100)} == {"always"}


def test_a_goal_depends_on_the_events_audiences_and_computed_traits_its_condition_reads():
    from engage.journeys.goals import dependencies

    goal = {"any": [{"event": "Order Completed", "window": {"within_days": 1}},
                    {"not": {"audience": "cart_abandoners"}},
                    {"computed_trait": "total_revenue", "op": "gt", "value": 100},
                    {"funnel": [{"event": "Viewed"}, {"event": "Bought"}], "window": {"within_days": 7}},
                    {"trait": "plan", "op": "eq", "value": "pro"}]}
    assert dependencies(goal) == {"events": {"Order Completed", "Viewed", "Bought"},
                                  "audiences": {"cart_abandoners"}, "computed_traits": {"total_revenue"},
                                  "traits": {"plan"}}
    # (a nested trait is read by its top-level name: an identify sets `address`, not `address.city`)
    assert dependencies({"trait": "address.city", "op": "exists"}) == {
        "events": set(), "audiences": set(), "computed_traits": set(), "traits": {"address"}}
