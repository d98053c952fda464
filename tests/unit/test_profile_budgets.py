"""engage.profile_budgets: each part of a profile stays within its budget, dropping what docs/identity.md
(Budgets) says goes first, and counting it."""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from engage import profile_budgets as budgets
from engage import profiles
from engage.dynamodb_limits import MAX_ITEM_BYTES, value_size
from engage.profiles import ProfileState

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_the_budgets_leave_room_under_dynamodbs_item_limit():
    assert budgets.PROFILE_BUDGET_BYTES + budgets.OTHER_WRITERS_BYTES == MAX_ITEM_BYTES
    assert budgets.OTHER_WRITERS_BYTES >= 32 * 1024


def test_a_full_trait_budget_drops_new_traits_but_known_traits_keep_updating():
    state, dropped = ProfileState("p", "s"), Counter()
    profiles.merge_traits(state, {"plan": "free"}, "2026-01-01T00:00:00.000Z|m0", dropped)
    for i in range(9):
        profiles.merge_traits(state, {f"junk{i}": "j" * 16_000}, f"2026-01-02T00:00:0{i}.000Z|m{i}", dropped)
    assert budgets.traits_size(state.traits, state.trait_times) <= budgets.TRAITS_BUDGET_BYTES
    assert dropped["traits"] == 3 and "junk6" not in state.traits and "junk5" in state.traits
    # a same-size update applies; a growing one that does not fit is dropped
    profiles.merge_traits(state, {"plan": "pro!"}, "2026-01-03T00:00:00.000Z|m9", dropped)
    profiles.merge_traits(state, {"junk0": "j" * 18_500}, "2026-01-03T00:00:00.000Z|m9", dropped)
    assert state.traits["plan"] == "pro!" and len(state.traits["junk0"]) == 16_000
    assert dropped["traits"] == 4


def test_event_names_seen_least_recently_go_first_and_the_newest_day_stays():
    state, dropped = ProfileState("p", "s"), Counter()
    profiles.record_event(state, "Signed Up", "2026-11-01T00:00:00.000Z", now=NOW, retention_days=400)
    for i in range(300):
        profiles.record_event(state, f"{i:04d}" + "n" * 246, "2026-11-20T10:00:00.000Z", now=NOW,
                              retention_days=400, dropped=dropped)
    profiles.record_event(state, "Order Completed", "2026-11-20T11:00:00.000Z", now=NOW, retention_days=400,
                          dropped=dropped)
    assert value_size(state.daily_counts) + value_size(state.event_stats) <= budgets.EVENTS_BUDGET_BYTES
    assert "Signed Up" not in state.event_stats and "0000" + "n" * 246 not in state.event_stats
    assert state.event_stats["Order Completed"]["total"] == 1
    assert state.daily_counts["Order Completed"] == {"20261120": 1}
    assert dropped["event_names"] == 301 + 1 - len(state.event_stats)


def test_old_days_go_before_event_names():
    counts = {f"E{n}": {f"202611{d:02d}": 1 for d in range(1, 21)} for n in range(3)}
    pruned = profiles.prune_daily_counts(counts, now=NOW, retention_days=400, budget_bytes=100)
    assert pruned == {f"E{n}": {"20261120": 1} for n in range(3)}  # never the newest day


def test_the_oldest_audience_records_go_first():
    state = {"agg": {"r": [[ts, f"m{ts}", "E", {"p": "x" * 1000}] for ts in range(100)], "m": 99},
             "buckets": {"d": {"20261101": 1, "20261120": 2}, "m": 0}}
    dropped = Counter()
    pruned = budgets.prune_condition_state(state, budget=20_000, dropped=dropped)
    assert value_size(pruned) <= 20_000
    kept = [r[0] for r in pruned["agg"]["r"]]
    assert kept == list(range(100 - len(kept), 100)) and pruned["buckets"] == state["buckets"]
    assert dropped["audience_records"] == 100 - len(kept)
    assert len(state["agg"]["r"]) == 100  # the input is not changed


def test_ids_stop_at_their_budget():
    state, dropped = ProfileState("p", "s"), Counter()
    added = [profiles.add_external_id(state, collection="users", id_type="anonymous_id", value=f"{i:04d}" + "a" * 996,
                                      encoding="none", created_at="2026-11-20T00:00:00.000Z", message_id="m",
                                      dropped=dropped) for i in range(40)]
    assert value_size(state.external_ids) <= budgets.IDS_BUDGET_BYTES
    assert added.count(False) == dropped["ids"] > 0 and added[0]


def test_the_merge_log_keeps_its_newest_entries():
    merges = [{"profile_id": f"p{i}", "ids": ["anonymous_id:" + "a" * 1000] * 10} for i in range(5)]
    dropped = Counter()
    kept = budgets.prune_merges(merges, dropped=dropped)
    assert value_size(kept) <= budgets.MERGES_BUDGET_BYTES and kept[-1]["profile_id"] == "p4"
    assert dropped["merge_log_entries"] == 5 - len(kept)
