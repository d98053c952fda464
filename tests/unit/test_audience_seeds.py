"""The product docs' audience examples (shared/seeds), as users would write them (docs/audiences.md)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engage.audiences import evaluate, next_change_at
from tests.unit.audience_profiles import T0, Profile, at, audience, both, page, track

MS = timedelta(milliseconds=1)

VIEWED_EXPENSIVE_NOT_ORDERED = {"all": [
    {"event": "Product Viewed", "where": [{"property": "price", "op": "gt", "value": 500}],
     "window": {"within_days": 30}},
    {"not": {"event": "Order Completed", "window": {"within_days": 30}}}]}

ACTIVE_30_TO_90_NOT_LAST_30 = {"all": [
    {"event": "App Opened", "window": {"between_days": [30, 90]}},
    {"event": "App Opened", "count": {"op": "eq", "value": 0}, "window": {"within_days": 30}}]}

HIGH_VALUE = {"trait": "lifetime_value", "op": "gt", "value": 25000}

SAME_OFFER_FIVE_TIMES_NOT_BOUGHT = {"all": [
    {"event": "Page Viewed", "where": [{"property": "offer_id", "op": "eq", "value": "villa_42"}],
     "count": {"op": "gte", "value": 5}, "window": {"within_days": 7}},
    {"not": {"event": "Order Completed", "where": [{"property": "offer_id", "op": "eq", "value": "villa_42"}]}}]}

FEATURED_OFFER_FIVE_TIMES_NOT_BOUGHT = {"all": [
    {"event": "Page Viewed", "where": [{"property": "offer_id", "op": "eq", "ref": {"trait": "featured_offer"}}],
     "count": {"op": "gte", "value": 5}, "window": {"within_days": 7}},
    {"not": {"event": "Order Completed",
             "where": [{"property": "offer_id", "op": "eq", "ref": {"trait": "featured_offer"}}]}}]}

PRO_IN_CITY_Y = {"all": [{"trait": "plan", "op": "eq", "value": "pro"},
                         {"trait": "address.city", "op": "eq", "value": "Y"}]}

SIGNED_UP_NO_KYC_AFTER_3_DAYS = {"all": [
    {"funnel": [{"event": "Signed Up"},
                {"event": "KYC Completed", "within_hours": 72, "performed": False}]},
    {"not": {"event": "KYC Completed"}}]}


def test_viewed_a_product_above_a_price_but_did_not_order():
    definition = audience(VIEWED_EXPENSIVE_NOT_ORDERED)
    # Given a shopper who viewed a cheap product, then an expensive one
    profile = Profile([definition]).send(track("Product Viewed", at(days=-2), {"price": 20}))
    assert both(definition, profile, T0) is False
    profile.send(track("Product Viewed", at(days=-1), {"price": 899}))
    # Then they are in until they order
    assert both(definition, profile, T0) is True
    profile.send(track("Order Completed", at(), {"revenue": 899}))
    assert both(definition, profile, T0) is False


def test_active_30_to_90_days_ago_and_not_in_the_last_30_enters_and_leaves_as_time_passes():
    definition = audience(ACTIVE_30_TO_90_NOT_LAST_30)
    # Given one App Opened 20 days ago (UTC day 2026-02-18)
    profile = Profile([definition]).send(track("App Opened", at(days=-20)))
    assert both(definition, profile, T0) is False
    # When time passes / Then it enters when that day is 30 days ago ...
    enters = next_change_at(definition, profile.view(), T0)
    assert enters == datetime(2026, 3, 20, tzinfo=UTC)
    assert both(definition, profile, enters - MS) is False
    assert both(definition, profile, enters) is True
    # ... and leaves when it is 90 days ago
    leaves = next_change_at(definition, profile.view(), enters)
    assert leaves == datetime(2026, 5, 19, tzinfo=UTC)
    assert both(definition, profile, leaves - MS) is True
    assert both(definition, profile, leaves) is False
    assert next_change_at(definition, profile.view(), leaves) is None


def test_active_30_to_90_days_ago_leaves_on_a_new_session():
    definition = audience(ACTIVE_30_TO_90_NOT_LAST_30)
    profile = Profile([definition]).send(track("App Opened", at(days=-45)))
    assert both(definition, profile, T0) is True
    profile.send(track("App Opened", at()))
    assert both(definition, profile, T0) is False
    # and it comes back once that session is 30 days old (the older one is still < 90 days)
    back = next_change_at(definition, profile.view(), T0)
    assert back == datetime(2026, 4, 9, tzinfo=UTC)
    assert both(definition, profile, back) is True


def test_lifetime_value_above_25000():
    definition = audience(HIGH_VALUE)
    assert both(definition, Profile([definition], {"lifetime_value": 30000}), T0) is True
    assert both(definition, Profile([definition], {"lifetime_value": 25000}), T0) is False
    assert both(definition, Profile([definition], {"lifetime_value": "26000.5"}), T0) is True  # numeric string
    assert both(definition, Profile([definition], {"lifetime_value": "lots"}), T0) is False
    assert both(definition, Profile([definition]), T0) is False


def test_same_offer_viewed_five_times_in_the_last_week_but_not_bought():
    definition = audience(SAME_OFFER_FIVE_TIMES_NOT_BOUGHT)
    profile = Profile([definition]).send(*(page(at(days=-d), {"offer_id": "villa_42"}) for d in range(4)),
                                         page(at(days=-1), {"offer_id": "boat_7"}),
                                         page(at(days=-9), {"offer_id": "villa_42"}))
    assert both(definition, profile, T0) is False  # four views this week (and one too old)
    profile.send(page(at(hours=-1), {"offer_id": "villa_42"}))
    assert both(definition, profile, T0) is True
    # it leaves when the oldest view of the five leaves the week (3 days ago -> 4 days from now)
    assert next_change_at(definition, profile.view(), T0) == datetime(2026, 3, 14, tzinfo=UTC)
    profile.send(track("Order Completed", at(), {"offer_id": "villa_42"}))
    assert both(definition, profile, T0) is False


def test_same_offer_with_a_dynamic_reference_to_the_featured_offer_trait():
    definition = audience(FEATURED_OFFER_FIVE_TIMES_NOT_BOUGHT)
    profile = Profile([definition], {"featured_offer": "boat_7"}).send(
        *(page(at(days=-d), {"offer_id": "villa_42"}) for d in range(5)))
    assert both(definition, profile, T0) is False
    profile.traits["featured_offer"] = "villa_42"
    assert both(definition, profile, T0) is True
    profile.send(track("Order Completed", at(), {"offer_id": "villa_42"}))
    assert both(definition, profile, T0) is False


def test_customers_on_the_pro_plan_in_city_y():
    definition = audience(PRO_IN_CITY_Y)
    assert both(definition, Profile([definition], {"plan": "pro", "address": {"city": "Y"}}), T0) is True
    assert both(definition, Profile([definition], {"plan": "pro", "address": {"city": "Z"}}), T0) is False
    assert both(definition, Profile([definition], {"plan": "free", "address": {"city": "Y"}}), T0) is False
    assert both(definition, Profile([definition], {"plan": "pro"}), T0) is False


def test_signed_up_but_no_kyc_after_3_days():
    definition = audience(SIGNED_UP_NO_KYC_AFTER_3_DAYS)
    profile = Profile([definition]).send(track("Signed Up", at(days=-1)))
    # Then not yet: the 3 days have not passed; it enters exactly 72 hours after sign-up
    assert both(definition, profile, T0) is False
    enters = next_change_at(definition, profile.view(), T0)
    assert enters == at(days=2)
    assert evaluate(definition, profile.view(), enters - MS) is False
    assert both(definition, profile, enters) is True
    # and leaves when KYC is finally completed
    profile.send(track("KYC Completed", at(days=4)))
    assert both(definition, profile, at(days=4)) is False


def test_kyc_within_3_days_never_enters():
    definition = audience(SIGNED_UP_NO_KYC_AFTER_3_DAYS)
    profile = Profile([definition]).send(track("Signed Up", at(days=-1)), track("KYC Completed", at()))
    assert both(definition, profile, at(days=10)) is False
    assert next_change_at(definition, profile.view(), T0) is None
