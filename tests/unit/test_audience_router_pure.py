"""Pure parts of the audience router: identity from the stream image, PutEvents grouping."""
from __future__ import annotations

from engage.audiences import membership, router

ENTERED = {"space_id": "s", "profile_id": "p", "audience_key": "a", "member": True, "version": 1,
           "entered_at": "2026-11-20T10:00:00.000Z"}


def entry(detail_bytes: int) -> dict:
    return {"Source": "engage", "DetailType": "Audience Entered", "Detail": "x" * detail_bytes}


def test_a_change_carries_the_ids_of_its_membership_image_or_none_for_older_items():
    carried = router.change_of(None, {**ENTERED, "identity": {"user_id": "42", "email": None}})
    assert carried["identity"] == {"user_id": "42", "anonymous_id": None, "email": None}
    assert router.change_of(None, ENTERED)["identity"] is None


def test_identity_is_the_first_id_of_each_type():
    external = [{"type": "anonymous_id", "id": "a1"}, {"type": "email", "id": "first@example.com"},
                {"type": "email", "id": "second@example.com"}, {"type": "phone", "id": "+33"}]
    assert membership.identity_of(external) == {"user_id": None, "anonymous_id": "a1", "email": "first@example.com"}
    assert membership.identity_of(None) == {"user_id": None, "anonymous_id": None, "email": None}


def test_put_events_calls_hold_at_most_ten_entries():
    groups = list(router.put_groups([entry(100)] * 23))
    assert [len(g) for g in groups] == [10, 10, 3]
    assert [i for g in groups for i in g] == list(range(23))


def test_put_events_calls_stay_under_256_kb():
    sizes = [100 * 1024, 100 * 1024, 100 * 1024, 10]
    groups = list(router.put_groups([entry(n) for n in sizes]))
    assert groups == [[0, 1], [2, 3]]
    entries = [entry(n) for n in sizes]
    assert all(sum(router.entry_size(entries[i]) for i in g) <= router.MAX_BYTES_PER_PUT for g in groups)
    assert list(router.put_groups([])) == []
