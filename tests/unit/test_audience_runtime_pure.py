"""Pure parts of the audience runtime: image diffs, membership change detection, export hashing."""
from __future__ import annotations

from engage.audiences import export, router, runtime


def test_diff_names_event_trait_computed_and_subscription_changes():
    old = {"traits": {"plan": "free", "city": "Paris"}, "daily_counts": {"Login": {"20261120": 1}},
           "event_stats": {"Login": {"total": 1}}, "computed_traits": {"ltv": 10}}
    new = {"traits": {"plan": "pro", "city": "Paris"}, "daily_counts": {"Login": {"20261120": 2}, "Buy": {"20261120": 1}},
           "event_stats": {"Login": {"total": 2}, "Buy": {"total": 1}}, "computed_traits": {"ltv": 10},
           "subscriptions": {"email": "subscribed"}}
    changed = runtime.diff(old, new)
    assert changed.events == {"Login", "Buy"}
    assert changed.traits == {"plan"}
    assert changed.computed_traits == set()
    assert changed.subscriptions == {"email"}
    assert not runtime.diff(new, dict(new))


def test_a_membership_change_is_a_flip_of_member_only():
    entered = {"space_id": "s", "profile_id": "p", "audience_key": "a", "member": True, "version": 1,
               "entered_at": "2026-11-20T10:00:00.000Z"}
    assert router.change_of(None, entered)["member"] is True
    assert router.change_of(None, entered)["timestamp"] == "2026-11-20T10:00:00.000Z"
    assert router.change_of(entered, {**entered, "updated_at": "later", "version": 2}) is None
    exited = {**entered, "member": False, "exited_at": "2026-11-21T10:00:00.000Z", "version": 2}
    assert router.change_of(entered, exited)["member"] is False
    assert router.change_of(entered, None) is None  # item removed (purge): nothing to publish
    assert router.change_of(None, {**entered, "member": False}) is None


def test_single_column_hashes_trimmed_lowercase_emails_only():
    assert export._digest("email", " Ann@Example.com ") == export._digest("email", "ann@example.com")
    assert export._digest("user_id", "Ann") != export._digest("user_id", "ann")


def test_live_profiles_are_those_not_merged():
    assert runtime.is_live({"profile_id": "p"})
    assert not runtime.is_live({"profile_id": "p", "merged_into": "q"})
    assert not runtime.is_live(None)
