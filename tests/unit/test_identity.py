"""Identity resolution rules (pure): which ids a message carries and Segment's merge protection."""
from __future__ import annotations

import pytest

from engage import identity
from engage.identity import Identifier, ProfileFacts
from engage.profiles import Message


def message(**fields) -> Message:
    raw = {"type": "track", "event": "Signed Up", "messageId": "m1", "timestamp": "2026-11-20T10:00:00.000Z",
           "receivedAt": "2026-11-20T10:00:01.000Z", "context": {}, **fields}
    return Message.from_payload(raw)


def refs(ids: list[Identifier]) -> list[str]:
    return [i.ref for i in ids]


# ---------------------------------------------------------------- extraction
def test_identify_ids_come_in_priority_order_user_id_email_external_anonymous():
    # Given an identify with every kind of id, listed in a scrambled order
    msg = message(type="identify", anonymousId="a1", userId="u1", traits={"email": "ann@example.com"},
                  context={"externalIds": [{"id": "idfa-9", "type": "ios.idfa", "collection": "users",
                                            "encoding": "none"}]})
    # When its ids are extracted
    ids = identity.user_identifiers(msg)
    # Then they are ranked user_id, email, other external ids, anonymous_id
    assert refs(ids) == ["user_id:u1", "email:ann@example.com", "ios.idfa:idfa-9", "anonymous_id:a1"]


def test_email_comes_from_context_traits_on_any_call_but_from_traits_only_on_identify():
    # Given a track whose properties-like traits carry an email, and one with context.traits.email
    track_with_traits = message(userId="u1", traits={"email": "not-an-id@example.com"})
    track_with_context = message(userId="u1", context={"traits": {"email": "ann@example.com"}})
    # Then only context.traits.email counts on a track
    assert refs(identity.user_identifiers(track_with_traits)) == ["user_id:u1"]
    assert refs(identity.user_identifiers(track_with_context)) == ["user_id:u1", "email:ann@example.com"]


def test_group_traits_email_is_the_accounts_not_the_users():
    # Given a group call whose traits hold the company's email
    msg = message(type="group", userId="u1", groupId="g1", traits={"email": "billing@acme.test"})
    # Then the user gets no email id from it, and the account is named by its group_id
    assert refs(identity.user_identifiers(msg)) == ["user_id:u1"]
    assert identity.account_identifiers(msg) == [Identifier("group_id", "g1", "accounts")]


def test_external_ids_keep_collection_and_encoding_and_skip_malformed_entries():
    msg = message(userId="u1", context={"externalIds": [
        {"id": "ZW1haWw=", "type": "hashed_email", "collection": "users", "encoding": "base64"},
        {"id": "crm-7", "type": "crm_id", "collection": "accounts"},
        {"type": "no_id"}, "not-an-object", {"id": 55, "type": "device_id"}]})
    assert identity.user_identifiers(msg) == [
        Identifier("user_id", "u1"), Identifier("hashed_email", "ZW1haWw=", "users", "base64"),
        Identifier("device_id", "55")]


def test_alias_previous_id_takes_the_type_it_is_known_as_else_anonymous_id():
    msg = message(type="alias", userId="u2", previousId="p1")
    known_as_user = identity.alias_identifier(msg, lambda i: i.type == "user_id")
    unknown = identity.alias_identifier(msg, lambda i: False)
    assert known_as_user == Identifier("user_id", "p1")
    assert unknown == Identifier("anonymous_id", "p1")


# ---------------------------------------------------------------- merge protection
def facts(profile_id: str, *user_ids: str, merges: int = 0) -> ProfileFacts:
    return ProfileFacts(profile_id, frozenset(user_ids), merges)


U1, U2, EMAIL, ANON = (Identifier("user_id", "u1"), Identifier("user_id", "u2"),
                       Identifier("email", "e@x.test"), Identifier("anonymous_id", "a1"))


def test_no_known_id_means_a_new_profile_with_every_id():
    resolution = identity.resolve([U1, ANON], {})
    assert (resolution.accepted, resolution.dropped, resolution.profiles) == ([U1, ANON], [], [])


def test_anonymous_profile_joins_the_known_user():
    # Given anonymous activity on P1 and the user's profile P2
    owners = {ANON: facts("P1"), U1: facts("P2", "u1")}
    # When an event carries both ids
    resolution = identity.resolve([U1, ANON], owners)
    # Then both profiles are to be merged and both ids kept
    assert resolution.profiles == ["P2", "P1"] and resolution.dropped == []


def test_two_user_ids_never_merge_the_lowest_priority_id_is_dropped():
    # Given a shared device: a1 already belongs to u1's profile
    owners = {ANON: facts("P1", "u1")}
    # When u2 logs in on it
    resolution = identity.resolve([U2, ANON], owners)
    # Then a1 is dropped from the event and u2 gets a profile of its own
    assert resolution.accepted == [U2] and resolution.dropped == [ANON] and resolution.profiles == []


def test_demotion_goes_lowest_priority_first_until_the_conflict_is_gone():
    # Given the email belongs to u1's profile and a1 to an anonymous profile
    owners = {EMAIL: facts("P1", "u1"), ANON: facts("P3")}
    # When u2 arrives with both
    resolution = identity.resolve([U2, EMAIL, ANON], owners)
    # Then (as Segment does) a1 goes first, then the email; u2 keeps only itself
    assert resolution.accepted == [U2] and resolution.dropped == [EMAIL, ANON]


def test_merge_limit_blocks_merging_into_a_profile_with_too_many_merges():
    owners = {U1: facts("P1", "u1", merges=100), ANON: facts("P2")}
    resolution = identity.resolve([U1, ANON], owners)
    assert resolution.profiles == ["P1"] and resolution.dropped == [ANON]


def test_profile_ids_are_deterministic_per_space_message_and_id():
    first = identity.profile_id_for("acme", "m1", U1)
    assert first == identity.profile_id_for("acme", "m1", U1)
    assert first.startswith("usr_")
    assert len({first, identity.profile_id_for("other", "m1", U1), identity.profile_id_for("acme", "m2", U1),
                identity.profile_id_for("acme", "m1", U2)}) == 4
    assert identity.profile_id_for("acme", "m1", Identifier("group_id", "g", "accounts")).startswith("acc_")


@pytest.mark.parametrize("payload, where", [
    ("{not json", "payload: not valid JSON"),
    ('{"type": "launch", "messageId": "m", "userId": "u", "timestamp": "2026-01-01T00:00:00Z"}', "payload.type"),
    ('{"type": "track", "userId": "u", "timestamp": "2026-01-01T00:00:00Z", "event": "E"}', "payload.messageId"),
    ('{"type": "track", "messageId": "m", "userId": "u", "timestamp": "soon", "event": "E"}', "payload.timestamp"),
    ('{"type": "track", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z", "event": "E"}', "userId or"),
    ('{"type": "group", "messageId": "m", "userId": "u", "timestamp": "2026-01-01T00:00:00Z"}', "payload.groupId"),
])
def test_unusable_payloads_name_what_is_wrong_and_where(payload, where):
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        Message.from_payload(payload)


def test_a_group_id_in_external_ids_never_identifies_a_user():
    # Given a track that lists the account's group id among its externalIds
    msg = message(userId="u1", context={"externalIds": [{"id": "g1", "type": "group_id", "collection": "users"}]})
    # Then it is not a user id (every user of the account would merge into one)
    assert refs(identity.user_identifiers(msg)) == ["user_id:u1"]
