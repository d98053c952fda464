"""The members index (MembershipsTable GSI by_audience_keys, KEYS_ONLY): written when a profile first
enters an audience, not on its later flips; read back page by page in index order, leavers dropped;
and, on a stack upgrading from the older ALL index, read through that index until the new one is built
(docs/audiences.md, "The members index")."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from bench.meter import measure
from engage.audiences import backfill, membership
from engage.errors import ValidationFailed
from engage.memberships_store import LEGACY_MEMBER_INDEX, MEMBER_INDEX, MembershipRecord
from localcloud import template
from tests.conftest import REGION

SPACE = "acme"


def _enter(profile_id: str, audience_key: str, member: bool) -> None:
    existing = membership.current_one(SPACE, profile_id, audience_key)
    assert membership.set_member(SPACE, profile_id, audience_key, member, existing) is not None


def _ids(records) -> list[str]:
    return [r.profile_id for r in records]


def _all_pages(audience_key: str, limit: int) -> list[str]:
    found, cursor = [], None
    while True:
        page, cursor = membership.members(SPACE, audience_key, limit, cursor)
        assert len(page) <= limit
        found += _ids(page)
        if not cursor:
            return found


def test_only_the_first_entry_writes_the_members_index(aws):
    # the membership item is small (< 1 KB): 1 write unit for the table, 1 for an index entry
    with measure() as first:
        _enter("p1", "vip", True)
    with measure() as leave:
        _enter("p1", "vip", False)
    with measure() as back:
        _enter("p1", "vip", True)
    assert (first.write_units, leave.write_units, back.write_units) == (2, 1, 1)
    assert _ids(membership.members(SPACE, "vip")[0]) == ["p1"]


def test_pages_hold_current_members_only_in_index_order_whatever_the_page_size(aws):
    # Given 12 profiles that entered, every third of whom left again
    for n in range(12):
        _enter(f"p{n:02d}", "vip", True)
    for n in range(0, 12, 3):
        _enter(f"p{n:02d}", "vip", False)
    _enter("other", "not-vip", True)
    expected = [f"p{n:02d}" for n in range(12) if n % 3]
    # Then every page size walks the same members, in the index's order, each once
    for limit in (1, 2, 5, 8, 100):
        assert _all_pages("vip", limit) == expected, limit
    assert [r.profile_id for r in membership.all_members(SPACE, "vip")] == expected


def test_a_page_of_an_audience_most_have_left_reads_a_bounded_number_of_keys(aws, monkeypatch):
    # Given 30 profiles that entered and 27 of them left again (an audience of recent activity)
    for n in range(30):
        _enter(f"p{n:02d}", "recent", True)
        if n not in (3, 17, 28):
            _enter(f"p{n:02d}", "recent", False)
    monkeypatch.setattr(membership, "MAX_KEYS_PER_PAGE", 8)
    # Then a page reads at most max(limit, 8) keys: partial pages carry a cursor, and following the
    # cursors to the end gives every member once, in index order
    pages, cursor = [], None
    while True:
        page = membership.member_page(SPACE, "recent", 2, cursor)
        assert page.keys_read <= 8 and len(page.members) <= 2
        pages.append(page)
        cursor = page.cursor
        if not cursor:
            break
    assert [r.profile_id for page in pages for r in page.members] == ["p03", "p17", "p28"]
    assert sum(page.keys_read for page in pages) == 30
    assert any(page.cursor and len(page.members) < 2 for page in pages)  # a partial page, not the last
    # a larger limit reads up to the limit's keys
    assert membership.member_page(SPACE, "recent", 20).keys_read == 20


def test_a_cursor_of_another_audience_is_refused_before_it_reads_anything(aws):
    for n in range(3):
        _enter(f"p{n}", "vip", True)
        _enter(f"p{n}", "club", True)
    _, cursor = membership.members(SPACE, "vip", 1)
    with pytest.raises(ValidationFailed):
        membership.members(SPACE, "club", 1, cursor)
    # the cursor's shape with an empty key value: DynamoDB would refuse it, so it is a 400 here too
    forged = {"audience_pk": {"S": "acme|vip"}, "pk": {"S": ""}, "sk": {"S": "vip"}}
    with pytest.raises(ValidationFailed):
        membership.members(SPACE, "vip", 1, membership._encode_cursor(forged))


def _only_the_legacy_index() -> None:
    """MembershipsTable as a stack created before by_audience_keys has it: the ALL index alone."""
    client = boto3.client("dynamodb", region_name=REGION)
    name = MembershipRecord.Meta.table_name
    client.delete_table(TableName=name)
    kwargs = template.table_create_kwargs("MembershipsTable", name, parameters={"MemberIndexUpgrade": "keep-old-index"})
    kwargs["GlobalSecondaryIndexes"] = [g for g in kwargs["GlobalSecondaryIndexes"] if g["IndexName"] != MEMBER_INDEX]
    assert [g["IndexName"] for g in kwargs["GlobalSecondaryIndexes"]] == [LEGACY_MEMBER_INDEX]
    client.create_table(**kwargs)


def test_a_stack_without_the_keys_index_reads_members_and_purges_through_the_old_one(aws):
    _only_the_legacy_index()
    for n in range(5):
        _enter(f"p{n}", "gone", True)
    _enter("p1", "gone", False)
    assert _all_pages("gone", 2) == ["p0", "p2", "p3", "p4"]
    # a deleted audience's items are purged through the same fallback (the audience is not live)
    result = backfill.purge_page({"space_id": SPACE, "audience_key": "gone"})
    assert result["done"] and result["removed"] == 5
    assert not list(MembershipRecord.scan())


def test_while_the_keys_index_backfills_the_old_index_answers(aws, monkeypatch):
    # Both indexes exist (the upgrade's first deploy); DynamoDB refuses reads of an index still building.
    client = boto3.client("dynamodb", region_name=REGION)
    name = MembershipRecord.Meta.table_name
    client.delete_table(TableName=name)
    client.create_table(**template.table_create_kwargs("MembershipsTable", name,
                                                       parameters={"MemberIndexUpgrade": "keep-old-index"}))
    for n in range(4):
        _enter(f"p{n}", "vip", True)
    shared = MembershipRecord.client()
    real_query = shared.query
    asked: list[str] = []

    def query(**request):
        asked.append(request["IndexName"])
        if request["IndexName"] == MEMBER_INDEX:
            raise ClientError({"Error": {"Code": "ValidationException", "Message":
                               f"Cannot read from backfilling global secondary index: {MEMBER_INDEX}"}}, "Query")
        return real_query(**request)

    monkeypatch.setattr(shared, "query", query)
    assert _all_pages("vip", 3) == ["p0", "p1", "p2", "p3"]
    assert set(asked) == {MEMBER_INDEX, LEGACY_MEMBER_INDEX}


def test_other_query_errors_are_not_mistaken_for_an_unbuilt_index(aws, monkeypatch):
    _enter("p0", "vip", True)
    shared = MembershipRecord.client()
    asked: list[str] = []

    def query(**request):
        asked.append(request["IndexName"])
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                          "Query")

    monkeypatch.setattr(shared, "query", query)
    with pytest.raises(ClientError) as raised:
        membership.members(SPACE, "vip")
    # raised as it came, and the older index was never asked
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert asked == [MEMBER_INDEX]


def test_the_template_makes_the_keys_index_and_keeps_the_old_one_only_while_upgrading():
    def indexes(parameters=None):
        kwargs = template.table_create_kwargs("MembershipsTable", "m", parameters=parameters)
        return {g["IndexName"]: g["Projection"]["ProjectionType"] for g in kwargs["GlobalSecondaryIndexes"]}

    assert indexes() == {MEMBER_INDEX: "KEYS_ONLY"}
    assert indexes({"MemberIndexUpgrade": "keep-old-index"}) == {MEMBER_INDEX: "KEYS_ONLY",
                                                                  LEGACY_MEMBER_INDEX: "ALL"}
