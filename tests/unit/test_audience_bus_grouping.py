"""AudienceEventGrouping=evaluation, pure: one entry per profile evaluation, under 64 KB, read back by consumers
as the per-change events it stands for (engage.audiences.bus, router.entries_of)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.audiences import bus, router

IDS = {"user_id": "u-1", "anonymous_id": "a-1", "email": "ann@example.com"}
STAMP = "2026-11-20T10:00:00.000Z"


def change(audience: str, *, member: bool = True, version: int = 1, profile: str = "p1", profile_version=7,
           identity=IDS, space: str = "acme", stamp: str = STAMP) -> dict:
    return {"space_id": space, "profile_id": profile, "audience_key": audience, "member": member, "version": version,
            "timestamp": stamp, "identity": dict(identity) if identity else None, "profile_version": profile_version,
            "counted": True}


def details(units) -> list[dict]:
    return [json.loads(entry["Detail"]) for entry, _ in units]


def test_one_entry_per_profile_evaluation_with_entered_and_exited_arrays():
    # Given a batch with two evaluations of p1 (versions 7 and 8), one of p2, and a manual edit of p1
    changes = [change("vip"), change("all"), change("lapsed", member=False, version=3),
               change("vip", member=False, version=2, profile_version=8),
               change("vip", profile="p2", identity={"user_id": "u-2"}),
               change("imported", profile_version=None), change("imported2", profile_version=None)]
    units = router.entries_of(changes, bus.EVALUATION, {}, "bus")
    # Then one entry per evaluation, each change in exactly one entry, changes without a profile version alone
    assert [indexes for _, indexes in units] == [[0, 1, 2], [3], [4], [5], [6]]
    assert all(entry["DetailType"] == bus.CHANGED and entry["Source"] == "engage" and entry["EventBusName"] == "bus"
               for entry, _ in units)
    first = details(units)[0]
    assert first == {"space": "acme", "profile_id": "p1", **IDS, "profile_version": 7, "timestamp": STAMP,
                     "entered": [{"audience_key": "vip", "version": 1, "timestamp": STAMP},
                                 {"audience_key": "all", "version": 1, "timestamp": STAMP}],
                     "exited": [{"audience_key": "lapsed", "version": 3, "timestamp": STAMP}]}
    assert details(units)[2]["user_id"] == "u-2" and details(units)[2]["email"] is None
    assert details(units)[3]["profile_version"] is None and details(units)[3]["exited"] == []


def test_the_default_is_one_entry_per_change_in_the_documented_shape():
    changes = [change("vip"), change("lapsed", member=False, version=3)]
    units = router.entries_of(changes, bus.CHANGE, {}, "bus")
    assert [(entry["DetailType"], indexes) for entry, indexes in units] == [
        (bus.ENTERED, [0]), (bus.EXITED, [1])]
    assert details(units)[0] == {"space": "acme", "audience_key": "vip", "profile_id": "p1", **IDS,
                                 "timestamp": STAMP, "version": 1}


def test_ids_come_from_the_change_else_from_the_profile_read_of_the_batch():
    changes = [change("vip", identity=None), change("all", identity=None)]
    read = {("acme", "p1"): {"user_id": "read", "anonymous_id": None, "email": None}}
    (unit,) = router.entries_of(changes, bus.EVALUATION, read, "bus")
    assert json.loads(unit[0]["Detail"])["user_id"] == "read"


def test_a_huge_evaluation_is_split_into_entries_under_64_kb_and_within_put_events_limits():
    # Given one evaluation that changed 3,000 audiences (long keys: about 200 KB of elements)
    changes = [change(f"audience-with-a-long-key-{n:05d}", member=n % 3 != 0, version=n) for n in range(3000)]
    units = router.entries_of(changes, bus.EVALUATION, {}, "bus")
    # Then every entry is under 64 KB (one billed event each), full enough (no needless entries)
    sizes = [bus.entry_size(entry) for entry, _ in units]
    assert len(units) > 3 and max(sizes) <= bus.MAX_BYTES_PER_ENTRY
    assert all(size > bus.MAX_BYTES_PER_ENTRY - 200 for size in sizes[:-1])
    # And every change is carried exactly once, in order
    assert [i for _, indexes in units for i in indexes] == list(range(3000))
    carried = [(e["audience_key"], e["version"]) for d in details(units) for e in d["entered"] + d["exited"]]
    assert sorted(carried) == sorted((c["audience_key"], c["version"]) for c in changes)
    # And PutEvents calls stay within 10 entries and 256 KB
    entries = [entry for entry, _ in units]
    for group in router.put_groups(entries):
        assert len(group) <= 10 and sum(bus.entry_size(entries[i]) for i in group) <= router.MAX_BYTES_PER_PUT


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 3), st.booleans(),
                          st.text("abcdefgh-_", min_size=1, max_size=300)), max_size=400))
def test_grouping_carries_each_change_once_under_64_kb(specs):
    changes = [change(f"{key}{n}", member=member, version=n, profile=profile,
                      profile_version=None if pv == 0 else pv)
               for n, (profile, pv, member, key) in enumerate(specs)]
    units = router.entries_of(changes, bus.EVALUATION, {}, "bus")
    assert sorted(i for _, indexes in units for i in indexes) == list(range(len(changes)))
    for entry, indexes in units:
        assert bus.entry_size(entry) <= bus.MAX_BYTES_PER_ENTRY
        assert len({router.log_id(changes[i]) for i in indexes}) == 1  # one evaluation per entry
    # and reading them back gives the per-change events of the default shape
    unpacked = sorted((kind, d["profile_id"], d["audience_key"], d["version"])
                      for entry, _ in units for kind, d in bus.per_change(entry["DetailType"], json.loads(entry["Detail"])))
    assert unpacked == sorted((bus.ENTERED if c["member"] else bus.EXITED, c["profile_id"], c["audience_key"],
                               c["version"]) for c in changes)


def test_consumers_read_a_grouped_entry_as_the_per_change_events_it_stands_for():
    changes = [change("vip"), change("lapsed", member=False, version=3)]
    ((entry, _),) = router.entries_of(changes, bus.EVALUATION, {}, "bus")
    per_change = bus.per_change(entry["DetailType"], json.loads(entry["Detail"]))
    expected = [e for e, _ in router.entries_of(changes, bus.CHANGE, {}, "bus")]
    assert per_change == [(e["DetailType"], json.loads(e["Detail"])) for e in expected]
    # the per-change shapes come back as they are
    assert bus.per_change(bus.ENTERED, {"audience_key": "vip"}) == [(bus.ENTERED, {"audience_key": "vip"})]


def test_an_unknown_grouping_is_refused_with_what_to_do(monkeypatch):
    from engage import config

    monkeypatch.setenv("AUDIENCE_EVENT_GROUPING", "profile")
    config.settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="AudienceEventGrouping"):
            router.grouping()
    finally:
        monkeypatch.undo()
        config.settings.cache_clear()
    assert router.grouping() == bus.CHANGE


def test_the_template_offers_the_grouping_off_by_default_and_routes_both_shapes_to_the_enroller():
    from localcloud import template

    whole = template.load(template.TEMPLATE)
    spec = whole["Parameters"]["AudienceEventGrouping"]
    assert (spec["Type"], spec["Default"], spec["AllowedValues"]) == ("String", bus.CHANGE, list(bus.GROUPINGS))
    resources = template.resources()
    # Only the router reads it (env var from the parameter, as engage.config names it)
    readers = [name for name, r in resources.items()
               if "AUDIENCE_EVENT_GROUPING" in ((r.get("Properties") or {}).get("Environment") or {}).get(
                   "Variables", {})]
    assert readers == ["AudienceRouterFunction"]
    env = resources["AudienceRouterFunction"]["Properties"]["Environment"]["Variables"]
    assert env["AUDIENCE_EVENT_GROUPING"] == {"Ref": "AudienceEventGrouping"}
    # And the enroller's rule carries every shape the router can publish
    pattern = resources["JourneyEntryRule"]["Properties"]["EventPattern"]
    assert {bus.ENTERED, bus.EXITED, bus.CHANGED} <= set(pattern["detail-type"])


def test_the_enrollers_grouped_sample_stands_for_its_per_change_samples():
    # events/ samples (also run by `engage invoke`): the grouped message carries the per-change one's entry
    from pathlib import Path

    samples = Path(__file__).resolve().parents[2] / "events"

    def body(name: str) -> dict:
        return json.loads(json.loads((samples / name).read_text())["Records"][0]["body"])

    grouped, entered = body("journey_enroller_audience_memberships_changed.json"), body(
        "journey_enroller_audience_entered.json")
    unpacked = bus.per_change(grouped["detail-type"], grouped["detail"])
    assert unpacked[0] == (entered["detail-type"], entered["detail"])
    assert [kind for kind, _ in unpacked] == [bus.ENTERED, bus.EXITED] and unpacked[1][1]["audience_key"] == "lapsed_7d"
