"""Account audiences with `users` conditions, the pure parts: which account audiences a user's
change re-evaluates, and the evaluator's views of an account's users built from profile images."""
from __future__ import annotations

from engage.audiences import AudienceIndex, evaluate, evaluate_from_scratch, next_change_at
from engage.audiences.accounts import user_views
from engage.audiences.evaluator import ProfileView, compile_definition
from engage.audiences.runtime import account_audiences_for, group_ids
from tests.unit.audience_profiles import T0, Profile, at, audience, track

ACTIVE = audience({"users": "any", "condition": {"event": "Login", "window": {"within_days": 7}}},
                  key="active", entity="accounts")
IDLE = audience({"all": [{"trait": "tier", "op": "eq", "value": "business"},
                         {"users": "none", "condition": {"event": "Login", "window": {"within_days": 7}}}]},
                key="idle", entity="accounts")
ALL_PRO = audience({"users": "all", "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
                   key="all_pro", entity="accounts")
VIP_USERS = audience({"event": "Order Completed", "count": {"op": "gte", "value": 3}}, key="vip")
HAS_VIP = audience({"users": "any", "condition": {"audience": "vip"}}, key="has_vip", entity="accounts")
ACCOUNT_TIER = audience({"trait": "tier", "op": "eq", "value": "business"}, key="business", entity="accounts")
USERS_LOGIN = audience({"event": "Login"}, key="logged_in")


def user(*, groups=("acme",), **fields) -> dict:
    """A users profile image as the stream carries it."""
    ids = [{"type": "user_id", "id": "ann", "collection": "users"}]
    ids += [{"type": "group_id", "id": g, "collection": "users"} for g in groups]
    return {"profile_id": "usr_ann", "collection": "users", "external_ids": ids, "version": 3, **fields}


def login_on(day: str) -> dict:
    return {"daily_counts": {"Login": {day: 1}}, "event_stats": {"Login": {"total": 1}}}


def keys(definitions) -> list[str]:
    return [d.key for d in definitions]


INDEX = AudienceIndex([ACTIVE, IDLE, ALL_PRO, VIP_USERS, HAS_VIP, ACCOUNT_TIER, USERS_LOGIN])


def test_an_event_reaches_only_the_account_audiences_whose_users_condition_reads_it():
    before, after = user(), user(**login_on("20260310"))
    assert keys(account_audiences_for(INDEX, before, after)) == ["active", "idle"]
    # an event no `users` condition reads re-evaluates no account (a users audience reads it: not ours)
    viewed = user(daily_counts={"Page Viewed": {"20260310": 1}})
    assert account_audiences_for(INDEX, before, viewed) == []
    # a user trait reaches the audience reading it; an account-level trait name on a user does not
    assert keys(account_audiences_for(INDEX, before, user(traits={"plan": "pro"}))) == ["all_pro"]
    assert account_audiences_for(INDEX, before, user(traits={"tier": "business"})) == []
    # nothing changed that anything reads: nothing
    assert account_audiences_for(INDEX, before, user(applied=["m1"])) == []


def test_the_users_own_membership_changes_reach_account_audiences_that_read_them():
    same = user()
    assert keys(account_audiences_for(INDEX, same, same, {"vip"})) == ["has_vip"]
    assert account_audiences_for(INDEX, same, same, {"logged_in"}) == []


def test_joining_or_leaving_an_account_re_evaluates_every_audience_reading_users():
    reading_users = ["active", "all_pro", "has_vip", "idle"]
    joined = user(groups=("acme", "beta"))
    assert sorted(keys(account_audiences_for(INDEX, user(), joined))) == reading_users
    # a new user created by a group call, and a user merged away or deleted
    assert sorted(keys(account_audiences_for(INDEX, None, user()))) == reading_users
    assert sorted(keys(account_audiences_for(INDEX, user(), None))) == reading_users
    # account audiences that read only the account itself are not among them
    assert "business" not in reading_users


def test_a_user_in_no_account_costs_nothing():
    loner = user(groups=())
    assert account_audiences_for(INDEX, loner, {**loner, **login_on("20260310")}) == []
    assert account_audiences_for(INDEX, None, loner) == []
    assert group_ids(user(groups=("acme", "beta"))) == {"acme", "beta"}
    assert group_ids(None) == set()


def test_without_account_audiences_reading_users_nothing_is_selected():
    index = AudienceIndex([ACCOUNT_TIER, USERS_LOGIN])
    assert account_audiences_for(index, user(), user(groups=("acme", "beta"))) == []
    assert account_audiences_for(index, user(), user(**login_on("20260310"))) == []


def test_selection_does_not_grow_with_the_number_of_audiences():
    others = [audience({"users": "any", "condition": {"event": f"Event {i}"}}, key=f"acc_{i}", entity="accounts")
              for i in range(1000)]
    index = AudienceIndex([ACTIVE, *others])
    assert keys(account_audiences_for(index, user(), user(**login_on("20260310")))) == ["active"]
    assert keys(account_audiences_for(index, user(), user(daily_counts={"Event 7": {"20260310": 1}}))) == ["acc_7"]


def test_views_keep_live_users_in_id_order_with_their_memberships():
    images = {
        "usr_b": {"profile_id": "usr_b", "collection": "users", "traits": {"plan": "pro"}},
        "usr_a": {"profile_id": "usr_a", "collection": "users", "traits": {"plan": "free"}, **login_on("20260309")},
        "usr_merged": {"profile_id": "usr_merged", "collection": "users", "merged_into": "usr_a",
                       "traits": {"plan": "pro"}},
        "acc_x": {"profile_id": "acc_x", "collection": "accounts", "traits": {"plan": "pro"}},
    }
    views = user_views(images, {"usr_b": {"vip": True}})
    assert [v.traits["plan"] for v in views] == ["free", "pro"]
    assert views[0].daily_counts == {"Login": {"20260309": 1}}
    assert (views[0].memberships, views[1].memberships) == ({}, {"vip": True})
    assert user_views({}) == []


def test_views_built_from_images_answer_any_all_and_none():
    recent = {"profile_id": "usr_a", "collection": "users", **login_on("20260308"), "traits": {"plan": "pro"}}
    stale = {"profile_id": "usr_b", "collection": "users", **login_on("20260220"), "traits": {"plan": "pro"}}
    account = {"traits": {"tier": "business"}}
    both_users = ProfileView.from_item(account, users=user_views({"usr_a": recent, "usr_b": stale}))
    only_stale = ProfileView.from_item(account, users=user_views({"usr_b": stale}))
    nobody = ProfileView.from_item(account, users=user_views({}))
    assert (evaluate(ACTIVE, both_users, T0), evaluate(ACTIVE, only_stale, T0)) == (True, False)
    assert (evaluate(IDLE, both_users, T0), evaluate(IDLE, only_stale, T0), evaluate(IDLE, nobody, T0)) == (
        False, True, True)
    assert (evaluate(ALL_PRO, both_users, T0), evaluate(ALL_PRO, nobody, T0)) == (True, False)
    has_vip = ProfileView.from_item(account, users=user_views({"usr_a": recent, "usr_b": stale}, {"usr_b": {"vip": True}}))
    assert evaluate(HAS_VIP, has_vip, T0) is True
    assert evaluate(HAS_VIP, both_users, T0) is False


def test_an_accounts_next_change_follows_its_users_windows():
    # Given one user of the account logged in 2 days ago (a 7-day window)
    login = Profile([ACTIVE]).send(track("Login", at(days=-2)))
    account = ProfileView(users=[login.view(), Profile([ACTIVE]).view()])
    assert evaluate(ACTIVE, account, T0) is True
    # Then the account is due when that login leaves the window: UTC midnight 7 days after its day
    assert next_change_at(ACTIVE, account, T0) == at(days=5, hours=-12)
    assert next_change_at(IDLE, ProfileView(traits={"tier": "business"}, users=account.users), T0) == at(
        days=5, hours=-12)
    # and the reference evaluator, over the users' raw events, agrees on both sides of that moment
    raw = [{"events": login.events}, {"events": []}]
    for moment, expected in ((at(days=5, hours=-13), True), (at(days=5, hours=-12), False)):
        assert evaluate(ACTIVE, account, moment) is expected
        assert evaluate_from_scratch(ACTIVE, [], {}, moment, users=raw) is expected


def test_inner_aggregates_are_told_apart_from_the_accounts_own():
    filtered = audience({"all": [
        {"event": "Plan Changed", "where": [{"property": "to", "op": "eq", "value": "pro"}]},
        {"users": "any", "condition": {"event": "Order Completed",
                                       "where": [{"property": "revenue", "op": "gt", "value": 100}],
                                       "window": {"within_days": 7}}}]}, key="filtered", entity="accounts")
    compiled = compile_definition(filtered)
    assert len(compiled.aggregates) == 2
    assert [a.events for a in compiled.user_aggregates] == [a.events for a in compiled.aggregates
                                                            if "Order Completed" in a.events]
    assert {a.id for a in compiled.user_aggregates} < {a.id for a in compiled.aggregates}
    assert compile_definition(ACTIVE).user_aggregates == []  # a plain day count reads daily_counts
